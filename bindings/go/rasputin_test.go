package rasputin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// peers are the client addresses of the cluster TestMain starts.
var peers []string

// processes are its rasputind processes.
var processes []*exec.Cmd

// Daemon ports come from below Linux's ephemeral range (32768-60999): a port
// that listening on port 0 picked and the test released could be taken as the
// source port of a client connection before the daemon binds it.
const (
	testPortLow  = 20000
	testPortHigh = 32000
)

var nextTestPort = os.Getpid() * 7919

func freePort() int {
	span := testPortHigh - testPortLow
	for attempt := 0; attempt < span; attempt++ {
		port := testPortLow + nextTestPort%span
		nextTestPort++
		listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			listener.Close()
			return port
		}
	}
	panic(fmt.Sprintf("no port in [%d, %d) is free on 127.0.0.1", testPortLow, testPortHigh))
}

// TestMain starts three real rasputind processes on free ports and stops them after the tests.
func TestMain(m *testing.M) {
	binary := os.Getenv("RASPUTIND")
	if binary == "" {
		binary = filepath.Join("..", "..", "target", "release", "rasputind")
	}
	directory, err := os.MkdirTemp("", "rasputin-go-test-")
	if err != nil {
		panic(err)
	}
	var seeds []string
	for n := 0; n < 3; n++ {
		seeds = append(seeds, fmt.Sprintf("127.0.0.1:%d", freePort()))
		peers = append(peers, fmt.Sprintf("127.0.0.1:%d", freePort()))
	}
	for n := 0; n < 3; n++ {
		command := exec.Command(binary,
			"--peer-port="+strings.Split(seeds[n], ":")[1],
			"--cli-port="+strings.Split(peers[n], ":")[1],
			"--seed-peers="+strings.Join(seeds, ","),
			fmt.Sprintf("--storage-dir=%s/node%d", directory, n),
			fmt.Sprintf("--logfile=%s/node%d.log", directory, n))
		if err := command.Start(); err != nil {
			panic(fmt.Sprintf("start %s (run `cargo build --release` first): %v", binary, err))
		}
		processes = append(processes, command)
	}
	code := waitAndRun(m)
	for _, process := range processes {
		_ = process.Process.Kill()
		_ = process.Wait()
	}
	_ = os.RemoveAll(directory)
	os.Exit(code)
}

func waitAndRun(m *testing.M) int {
	client, err := Connect(peers, WithTimeout(2*time.Second))
	if err != nil {
		panic(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := client.Get([]byte("readiness-probe"))
		if err == nil || errors.Is(err, ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			panic(fmt.Sprintf("the cluster did not start serving: %v", err))
		}
	}
	client.Close()
	return m.Run()
}

func connect(t *testing.T) *Client {
	t.Helper()
	client, err := Connect(peers, WithThreads(4))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func TestReadmeSequence(t *testing.T) {
	client := connect(t)
	if err := client.Set([]byte("k1"), []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if value, err := client.Get([]byte("k1")); err != nil || string(value) != "v1" {
		t.Fatalf("get: %q %v", value, err)
	}
	if current, swapped, err := client.CAS([]byte("k1"), []byte("v1"), []byte("v12")); err != nil || !swapped || string(current) != "v12" {
		t.Fatalf("cas: %q %v %v", current, swapped, err)
	}
	if current, swapped, err := client.CAS([]byte("k1"), []byte("vNever"), []byte("vNever2")); err != nil || swapped || string(current) != "v12" {
		t.Fatalf("failed cas: %q %v %v", current, swapped, err)
	}
	if current, _, err := client.CAS([]byte("k1"), []byte("v12"), []byte("v13")); err != nil || string(current) != "v13" {
		t.Fatalf("cas: %q %v", current, err)
	}
	if previous, err := client.Delete([]byte("k1")); err != nil || string(previous) != "v13" {
		t.Fatalf("delete: %q %v", previous, err)
	}
	if _, err := client.Get([]byte("k1")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
}

func TestMissingKeys(t *testing.T) {
	client := connect(t)
	if previous, err := client.Delete([]byte("never-written")); err != nil || previous != nil {
		t.Fatalf("delete of a missing key: %q %v", previous, err)
	}
	if current, swapped, err := client.CAS([]byte("never-written"), []byte("a"), []byte("b")); err != nil || swapped || current != nil {
		t.Fatalf("cas of a missing key: %q %v %v", current, swapped, err)
	}
}

func TestBinaryAndEmptyData(t *testing.T) {
	client := connect(t)
	key, value := []byte{0, 255, 0}, []byte{0, 1, 0}
	if err := client.Set(key, value); err != nil {
		t.Fatal(err)
	}
	if got, err := client.Get(key); err != nil || !bytes.Equal(got, value) {
		t.Fatalf("%q %v", got, err)
	}
	if err := client.Set(nil, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := client.Get([]byte{}); err != nil || len(got) != 0 {
		t.Fatalf("empty key: %q %v", got, err)
	}
}

func TestSizeLimits(t *testing.T) {
	client := connect(t)
	err := client.Set([]byte("k"), make([]byte, 1<<20+1))
	var failure *Error
	if !errors.Is(err, ErrValueTooLarge) || !errors.As(err, &failure) || failure.Code != StatusValueTooLarge {
		t.Fatalf("oversized value: %v", err)
	}
	if _, err := client.Get(make([]byte, 4097)); !errors.Is(err, ErrKeyTooLarge) {
		t.Fatalf("oversized key: %v", err)
	}
	if err := client.Set([]byte("largest"), make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
}

func TestBadArguments(t *testing.T) {
	if _, err := Connect([]string{"not an address"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad address: %v", err)
	}
	if _, err := Connect(nil); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("no peers: %v", err)
	}
	if _, err := Connect(peers, WithThreads(0)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("zero threads: %v", err)
	}
}

func TestUnreachableCluster(t *testing.T) {
	client, err := Connect([]string{"127.0.0.1:1"}, WithTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.Get([]byte("k")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("unreachable: %v", err)
	}
}

func TestContextDeadlineBecomesTheTimeout(t *testing.T) {
	unreachable, err := Connect([]string{"127.0.0.1:1"}, WithTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer unreachable.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	started := time.Now()
	if _, err := unreachable.GetContext(ctx, []byte("k")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("deadline: %v", err)
	}
	if elapsed := time.Since(started); elapsed > 20*time.Second {
		t.Fatalf("the context deadline was ignored: the call took %v", elapsed)
	}
	expired, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	if err := unreachable.SetContext(expired, []byte("k"), []byte("v")); !errors.Is(err, ErrTimeout) {
		t.Fatalf("cancelled context: %v", err)
	}
	client := connect(t)
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := client.SetContext(ctx, []byte("ctx"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	if value, err := client.GetContext(ctx, []byte("ctx")); err != nil || string(value) != "v" {
		t.Fatalf("%q %v", value, err)
	}
	if _, _, err := client.CASContext(ctx, []byte("ctx"), []byte("v"), []byte("w")); err != nil {
		t.Fatal(err)
	}
	if previous, err := client.DeleteContext(ctx, []byte("ctx")); err != nil || string(previous) != "w" {
		t.Fatalf("%q %v", previous, err)
	}
}

// Issue 14: a cancelled context ends the call at once, however long the
// client's own timeout, and the error wraps context.Canceled.
func TestCancellationReturnsAtOnceAndWrapsTheContextError(t *testing.T) {
	unreachable, err := Connect([]string{"127.0.0.1:1"}, WithTimeout(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer unreachable.Close()
	ctx, cancel := context.WithCancel(context.Background())
	timer := time.AfterFunc(100*time.Millisecond, cancel)
	defer timer.Stop()
	key := []byte("cancelled")
	started := time.Now()
	_, err = unreachable.GetContext(ctx, key)
	elapsed := time.Since(started)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("want an error wrapping context.Canceled with StatusTimeout, got %v", err)
	}
	if elapsed >= 3*time.Second {
		t.Fatalf("the call waited out the client's timeout (%v) instead of returning on cancellation", elapsed)
	}
	copy(key, "overwrite") // the background call owns a copy, not the caller's buffer
	deadline, stop := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer stop()
	if _, err := unreachable.GetContext(deadline, key); !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrUnavailable) {
		t.Fatalf("deadline: want context.DeadlineExceeded or ErrUnavailable, got %v", err)
	}
}

func TestUseAfterClose(t *testing.T) {
	client, err := Connect(peers)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	if err := client.Close(); err != nil {
		t.Fatal("Close is idempotent")
	}
	if err := client.Set([]byte("k"), []byte("v")); !errors.Is(err, ErrClosed) {
		t.Fatalf("set after close: %v", err)
	}
	if _, err := client.Get([]byte("k")); !errors.Is(err, ErrClosed) {
		t.Fatalf("get after close: %v", err)
	}
	if _, _, err := client.CAS([]byte("k"), nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("cas after close: %v", err)
	}
	if _, err := client.Delete([]byte("k")); !errors.Is(err, ErrClosed) {
		t.Fatalf("delete after close: %v", err)
	}
}

func TestSixteenGoroutinesShareOneClient(t *testing.T) {
	client := connect(t)
	var wait sync.WaitGroup
	failures := make(chan error, 16*50)
	for goroutine := 0; goroutine < 16; goroutine++ {
		wait.Add(1)
		go func(number int) {
			defer wait.Done()
			for n := 0; n < 50; n++ {
				key := []byte(fmt.Sprintf("goroutine-%d-%d", number, n))
				if err := client.Set(key, key); err != nil {
					failures <- err
					continue
				}
				if value, err := client.Get(key); err != nil || !bytes.Equal(value, key) {
					failures <- fmt.Errorf("%s: %q %v", key, value, err)
				}
			}
		}(goroutine)
	}
	wait.Wait()
	close(failures)
	for failure := range failures {
		t.Error(failure)
	}
}

// signalAll sends signal to every node of the cluster.
func signalAll(t *testing.T, signal syscall.Signal) {
	for _, process := range processes {
		if err := process.Process.Signal(signal); err != nil {
			t.Fatalf("signal %v to %d: %v", signal, process.Process.Pid, err)
		}
	}
}

// Issue 13, item 12: nil means missing, and an empty value is not missing.
func TestAFailedCASOnAnEmptyValueSaysTheKeyExists(t *testing.T) {
	client := connect(t)
	if err := client.Set([]byte("empty"), nil); err != nil {
		t.Fatal(err)
	}
	current, swapped, err := client.CAS([]byte("empty"), []byte("wrong"), []byte("new"))
	if err != nil || swapped || current == nil || len(current) != 0 {
		t.Fatalf("CAS on an empty value: current %v (nil: %v), swapped %v, err %v", current, current == nil, swapped, err)
	}
}

// Issue 13, item 4: with the whole cluster stopped a set times out, and
// retrying it with its token applies that same request once.
func TestATimedOutWriteIsRetriedUnderItsIdentity(t *testing.T) {
	impatient, err := Connect(peers, WithTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer impatient.Close()
	if err := impatient.Set([]byte("retried"), []byte("before")); err != nil {
		t.Fatal(err)
	}
	signalAll(t, syscall.SIGSTOP)
	err = impatient.Set([]byte("retried"), []byte("after"))
	signalAll(t, syscall.SIGCONT)
	var timedOut *Error
	if !errors.As(err, &timedOut) || timedOut.Code != StatusTimeout || len(timedOut.RetryToken) == 0 {
		t.Fatalf("want a timeout with a retry token, got %v", err)
	}
	client := connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	result, err := client.Retry(ctx, timedOut.RetryToken)
	if err != nil || !result.Success || !result.Found || string(result.Value) != "after" {
		t.Fatalf("retry: %+v, %v", result, err)
	}
	if value, err := client.Get([]byte("retried")); err != nil || string(value) != "after" {
		t.Fatalf("after the retry: %q, %v", value, err)
	}
	if _, err := client.Retry(ctx, []byte("not a token")); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a bad token: %v", err)
	}
}

func TestScanWalksPagesInKeyOrder(t *testing.T) {
	client := connect(t)
	const count = 10_050
	keys := make([]string, count)
	for index := range keys {
		keys[index] = fmt.Sprintf("scan-go/%05d", index)
	}
	var writers sync.WaitGroup
	failures := make(chan error, 8)
	for part := 0; part < 8; part++ {
		writers.Add(1)
		go func(part int) {
			defer writers.Done()
			for index := part; index < count; index += 8 {
				if err := client.Set([]byte(keys[index]), []byte(keys[index])); err != nil {
					failures <- err
					return
				}
			}
		}(part)
	}
	writers.Wait()
	close(failures)
	for err := range failures {
		t.Fatal(err)
	}
	var scanned []string
	err := client.ScanPrefix([]byte("scan-go/"), func(key, value []byte) bool {
		if !bytes.Equal(key, value) {
			t.Errorf("%q holds %q", key, value)
		}
		scanned = append(scanned, string(key))
		return true
	})
	if err != nil || strings.Join(scanned, ",") != strings.Join(keys, ",") {
		t.Fatalf("scanned %d keys (want %d, each once, in order): %v", len(scanned), count, err)
	}
	var window []string
	collect := func(key, _ []byte) bool { window = append(window, string(key)); return true }
	if err := client.Scan([]byte("scan-go/00003"), []byte("scan-go/00006"), 0, collect); err != nil || len(window) != 3 {
		t.Fatalf("a window: %q %v", window, err)
	}
	window = nil
	if err := client.Scan([]byte("scan-go/"), nil, 4, collect); err != nil || len(window) != 4 {
		t.Fatalf("a limit of 4: %q %v", window, err)
	}
	seen := 0
	stop := func(_, _ []byte) bool { seen++; return seen < 2 }
	if err := client.ScanPrefix([]byte("scan-go/"), stop); err != nil || seen != 2 {
		t.Fatalf("fn returned false after 2 pairs, the scan saw %d: %v", seen, err)
	}
	err = client.Scan(bytes.Repeat([]byte("k"), 70_000), nil, 0, collect)
	if !errors.Is(err, ErrKeyTooLarge) {
		t.Fatalf("an oversized start: %v", err)
	}
	if end := PrefixEnd([]byte{'a', 0xff}); !bytes.Equal(end, []byte("b")) || PrefixEnd([]byte{0xff}) != nil {
		t.Fatalf("PrefixEnd: %q", end)
	}
}
