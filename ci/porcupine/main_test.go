package main

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

func check(t *testing.T, path string) porcupine.CheckResult {
	t.Helper()
	operations, err := readHistory(path)
	if err != nil {
		t.Fatal(err)
	}
	result, _ := porcupine.CheckOperationsVerbose(registerModel, operations, 10*time.Second)
	return result
}

func TestAGoodHistoryPasses(t *testing.T) {
	if result := check(t, "testdata/good.jsonl"); result != porcupine.Ok {
		t.Fatalf("good history judged %v", result)
	}
}

func TestAStaleReadFails(t *testing.T) {
	if result := check(t, "testdata/stale-read.jsonl"); result != porcupine.Illegal {
		t.Fatalf("stale read judged %v", result)
	}
}
