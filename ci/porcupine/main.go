// porcupine-check judges a Rasputin client history (JSON lines, see
// docs/history.md) with Porcupine, a linearizability checker written
// outside this project, as a second opinion beside rasputin's own checker.
//
//	go run . [-timeout 60s] [-html out.html] history.jsonl...
//
// Exit status: 0 linearizable, 1 not linearizable (the visualisation is
// written to -html, or beside the history), 2 bad input, 3 undecided in time.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// event is one line of a history file.
type event struct {
	Client int64           `json:"client"`
	Type   string          `json:"type"`
	F      string          `json:"f"`
	Key    int64           `json:"key"`
	Value  json.RawMessage `json:"value"`
	TimeNs int64           `json:"time_ns"`
}

// absent is the register's value for a missing key (written values are positive ids).
const absent int64 = -1

type input struct {
	key      int64
	function string
	first    int64 // written value, or cas's expected value
	second   int64 // cas's new value
}

type output struct {
	unknown bool // the operation timed out: any outcome, or none
	success bool // cas only
	value   int64
}

// parseValue reads null or an integer.
func parseValue(raw json.RawMessage) (int64, error) {
	var value *int64
	if err := json.Unmarshal(raw, &value); err != nil {
		return 0, err
	}
	if value == nil {
		return absent, nil
	}
	return *value, nil
}

func parseInput(e event) (input, error) {
	in := input{key: e.Key, function: e.F}
	switch e.F {
	case "read", "delete":
		return in, nil
	case "write":
		value, err := parseValue(e.Value)
		in.first = value
		return in, err
	case "cas":
		var pair [2]int64
		if err := json.Unmarshal(e.Value, &pair); err != nil {
			return in, err
		}
		in.first, in.second = pair[0], pair[1]
		return in, nil
	}
	return in, fmt.Errorf("unknown operation %q", e.F)
}

func parseOutput(e event) (output, error) {
	switch e.Type {
	case "info":
		return output{unknown: true}, nil
	case "ok":
	default:
		return output{}, fmt.Errorf("unexpected completion type %q", e.Type)
	}
	if e.F == "cas" {
		var pair [2]json.RawMessage
		if err := json.Unmarshal(e.Value, &pair); err != nil {
			return output{}, err
		}
		var success bool
		if err := json.Unmarshal(pair[0], &success); err != nil {
			return output{}, err
		}
		value, err := parseValue(pair[1])
		return output{success: success, value: value}, err
	}
	value, err := parseValue(e.Value)
	return output{value: value}, err
}

// readHistory turns invoke/ok/info/fail events into Porcupine operations.
// A failed operation took no effect and is dropped; an unknown one may
// take effect at any time after its invocation.
func readHistory(path string) ([]porcupine.Operation, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	pending := map[int64]porcupine.Operation{}
	var operations []porcupine.Operation
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; scanner.Scan(); line++ {
		var e event
		if err := json.Unmarshal(scanner.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, line, err)
		}
		if e.Type == "invoke" {
			in, err := parseInput(e)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %v", path, line, err)
			}
			pending[e.Client] = porcupine.Operation{ClientId: int(e.Client), Input: in, Call: e.TimeNs}
			continue
		}
		operation, ok := pending[e.Client]
		if !ok {
			return nil, fmt.Errorf("%s:%d: client %d completes nothing it invoked", path, line, e.Client)
		}
		delete(pending, e.Client)
		if e.Type == "fail" {
			continue
		}
		out, err := parseOutput(e)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, line, err)
		}
		operation.Output = out
		operation.Return = e.TimeNs
		if out.unknown {
			operation.Return = math.MaxInt64
		}
		operations = append(operations, operation)
	}
	for client, operation := range pending {
		// Still in flight when the history ended: an unknown outcome.
		operation.Output = output{unknown: true}
		operation.Return = math.MaxInt64
		pending[client] = operation
		operations = append(operations, operation)
	}
	return operations, scanner.Err()
}

// registerModel is a set of registers, one per key, with Rasputin's semantics.
var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[int64][]porcupine.Operation{}
		var keys []int64
		for _, operation := range history {
			key := operation.Input.(input).key
			if _, seen := byKey[key]; !seen {
				keys = append(keys, key)
			}
			byKey[key] = append(byKey[key], operation)
		}
		partitions := make([][]porcupine.Operation, 0, len(keys))
		for _, key := range keys {
			partitions = append(partitions, byKey[key])
		}
		return partitions
	},
	Init: func() interface{} { return absent },
	Step: func(state, in, out interface{}) (bool, interface{}) {
		current, i, o := state.(int64), in.(input), out.(output)
		switch i.function {
		case "read":
			return o.unknown || o.value == current, current
		case "write":
			return true, i.first
		case "cas":
			matched := current == i.first
			next := current
			if matched {
				next = i.second
			}
			return o.unknown || (o.success == matched && o.value == next), next
		default: // delete
			return o.unknown || o.value == current, absent
		}
	},
	Equal: func(a, b interface{}) bool { return a.(int64) == b.(int64) },
	DescribeOperation: func(in, out interface{}) string {
		i, o := in.(input), out.(output)
		result := fmt.Sprint(o.value)
		if o.unknown {
			result = "unknown"
		}
		switch i.function {
		case "write":
			return fmt.Sprintf("k%d write %d", i.key, i.first)
		case "cas":
			return fmt.Sprintf("k%d cas %d→%d: %v, %s", i.key, i.first, i.second, o.success, result)
		default:
			return fmt.Sprintf("k%d %s → %s", i.key, i.function, result)
		}
	},
	DescribeState: func(state interface{}) string {
		if state.(int64) == absent {
			return "absent"
		}
		return fmt.Sprint(state.(int64))
	},
}

func main() {
	timeout := flag.Duration("timeout", time.Minute, "give up (exit 3) after this long per history")
	html := flag.String("html", "", "where to write the visualisation of a violation (default: beside the history)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: porcupine-check [-timeout D] [-html FILE] history.jsonl...")
		os.Exit(2)
	}
	status := 0
	for _, path := range flag.Args() {
		operations, err := readHistory(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "porcupine-check:", err)
			os.Exit(2)
		}
		result, info := porcupine.CheckOperationsVerbose(registerModel, operations, *timeout)
		switch result {
		case porcupine.Ok:
			fmt.Printf("%s: linearizable (%d operations)\n", path, len(operations))
		case porcupine.Illegal:
			out := *html
			if out == "" {
				out = strings.TrimSuffix(path, ".jsonl") + ".html"
			}
			if err := porcupine.VisualizePath(registerModel, info, out); err != nil {
				fmt.Fprintln(os.Stderr, "porcupine-check: cannot write the visualisation:", err)
			}
			fmt.Printf("%s: NOT linearizable (%d operations); see %s\n", path, len(operations), out)
			status = 1
		default:
			fmt.Printf("%s: undecided within %v\n", path, *timeout)
			if status == 0 {
				status = 3
			}
		}
	}
	os.Exit(status)
}
