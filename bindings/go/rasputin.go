// Package rasputin is the Go client of Rasputin DB, a linearizable,
// replicated key-value store. It calls librasputin's C ABI through cgo.
//
// Build against a local checkout:
//
//	cargo build --release -p rasputin-ffi            # librasputin.so, rasputin.pc
//	export PKG_CONFIG_PATH=$PWD/target/release       # from the checkout's root
//	go build ./...                                   # in bindings/go
//
// Without pkg-config, build with -tags rasputin_manual and set
// CGO_CFLAGS=-I<checkout>/include and
// CGO_LDFLAGS="-L<checkout>/target/release -Wl,-rpath,<checkout>/target/release -lrasputin".
//
// A *Client is safe for concurrent use by many goroutines. Close it when done;
// a finalizer closes a forgotten client only as a backstop.
package rasputin

/*
#include <stdlib.h>
#include "rasputin.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// Status is the stable status number of an error, the same as librasputin's rasputin_status.
type Status int

const (
	StatusNullArgument    Status = C.RASPUTIN_ERROR_NULL_ARGUMENT
	StatusInvalidArgument Status = C.RASPUTIN_ERROR_INVALID_ARGUMENT
	StatusKeyTooLarge     Status = C.RASPUTIN_ERROR_KEY_TOO_LARGE
	StatusValueTooLarge   Status = C.RASPUTIN_ERROR_VALUE_TOO_LARGE
	StatusTimeout         Status = C.RASPUTIN_ERROR_TIMEOUT
	StatusRefused         Status = C.RASPUTIN_ERROR_REFUSED
	StatusInternal        Status = C.RASPUTIN_ERROR_INTERNAL
	StatusUnavailable     Status = C.RASPUTIN_ERROR_UNAVAILABLE
	// StatusClosed is Go-only: the client was closed.
	StatusClosed Status = 9
	// StatusNotFound is Go-only: Get found no such key.
	StatusNotFound Status = 10
)

// Error is every error this package returns. Use errors.Is with the Err
// values below, or read Code.
//
// A StatusTimeout error's operation may or may not have taken effect. Pass
// its RetryToken to Client.Retry to send the same request again under the
// same identity: it applies at most once, and its Result says what
// happened. Calling the operation again instead sends a new request.
//
// A call whose context is done fails with StatusTimeout and wraps the
// context's error, so errors.Is(err, context.Canceled) and
// errors.Is(err, context.DeadlineExceeded) hold. A cancelled call returns
// at once, without a RetryToken: the request may still be sent, and its
// outcome is unknown.
type Error struct {
	Code       Status
	ServerCode int // the server's wire error code behind StatusRefused, else 0
	Message    string
	RetryToken []byte // for StatusTimeout: the request, for Client.Retry
	cause      error  // the context's error, when the context ended the call
}

func (e *Error) Error() string { return "rasputin: " + e.Message }

// Unwrap gives the context's error behind a call its context ended, else nil.
func (e *Error) Unwrap() error { return e.cause }

// Is matches errors by code, so errors.Is(err, rasputin.ErrTimeout) works.
func (e *Error) Is(target error) bool {
	other, ok := target.(*Error)
	return ok && other.Code == e.Code
}

var (
	ErrNotFound        = &Error{Code: StatusNotFound, Message: "key not found"}
	ErrClosed          = &Error{Code: StatusClosed, Message: "client is closed"}
	ErrUnavailable     = &Error{Code: StatusUnavailable, Message: "no server could be reached"}
	ErrTimeout         = &Error{Code: StatusTimeout, Message: "operation timed out"}
	ErrKeyTooLarge     = &Error{Code: StatusKeyTooLarge, Message: "key too large"}
	ErrValueTooLarge   = &Error{Code: StatusValueTooLarge, Message: "value too large"}
	ErrInvalidArgument = &Error{Code: StatusInvalidArgument, Message: "invalid argument"}
	ErrRefused         = &Error{Code: StatusRefused, Message: "refused by the server"}
)

// takeError converts a librasputin error to an *Error and frees it.
func takeError(status Status, failure *C.rasputin_error) error {
	defer C.rasputin_error_free(failure)
	var token *C.uint8_t
	var tokenLength C.size_t
	C.rasputin_error_retry_token(failure, &token, &tokenLength)
	var retryToken []byte
	if tokenLength > 0 {
		retryToken = C.GoBytes(unsafe.Pointer(token), C.int(tokenLength))
	}
	return &Error{
		Code:       status,
		ServerCode: int(C.rasputin_error_server_code(failure)),
		Message:    C.GoString(C.rasputin_error_message(failure)),
		RetryToken: retryToken,
	}
}

type options struct {
	threads int
	timeout time.Duration
}

// Option configures Connect.
type Option func(*options)

// WithThreads sets the number of pipelined connections per server (default 1).
func WithThreads(threads int) Option { return func(o *options) { o.threads = threads } }

// WithTimeout sets the longest a call may take, retries included (default 10 s).
// A context deadline, when earlier, wins.
func WithTimeout(timeout time.Duration) Option { return func(o *options) { o.timeout = timeout } }

// Client is a connection pool to one cluster. Safe for concurrent use.
type Client struct {
	mu     sync.RWMutex
	handle *C.rasputin_client
}

// Connect creates a client for the servers at peers ("host:port"; any one is
// enough). Connections open lazily, so an unreachable cluster shows up on the first call.
func Connect(peers []string, opts ...Option) (*Client, error) {
	settings := options{threads: 1, timeout: 10 * time.Second}
	for _, option := range opts {
		option(&settings)
	}
	if settings.threads < 1 || settings.timeout < time.Millisecond {
		return nil, &Error{Code: StatusInvalidArgument, Message: "threads must be at least 1 and the timeout at least 1 ms"}
	}
	list := C.CString(strings.Join(peers, ","))
	defer C.free(unsafe.Pointer(list))
	var handle *C.rasputin_client
	var failure *C.rasputin_error
	if status := C.rasputin_client_new(list, C.size_t(settings.threads), &handle, &failure); status != C.RASPUTIN_OK {
		return nil, takeError(Status(status), failure)
	}
	milliseconds := C.uint64_t(settings.timeout / time.Millisecond)
	attempt := milliseconds
	if attempt > 2000 {
		attempt = 2000
	}
	if status := C.rasputin_client_set_timeouts(handle, attempt, milliseconds, &failure); status != C.RASPUTIN_OK {
		C.rasputin_client_free(handle)
		return nil, takeError(Status(status), failure)
	}
	client := &Client{handle: handle}
	runtime.SetFinalizer(client, (*Client).Close)
	return client, nil
}

// Close closes the connections. It waits for calls in progress (those
// whose context was cancelled included: they finish in the background), is
// idempotent, and later calls return ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.handle != nil {
		C.rasputin_client_free(c.handle)
		c.handle = nil
		runtime.SetFinalizer(c, nil)
	}
	return nil
}

// cBytes passes a Go slice to C for the duration of one call only (the cgo rules).
func cBytes(data []byte) (*C.uint8_t, C.size_t) {
	if len(data) == 0 {
		return nil, 0
	}
	return (*C.uint8_t)(unsafe.Pointer(&data[0])), C.size_t(len(data))
}

// Result is the answer of Retry: the retried operation's own.
type Result struct {
	Success bool   // get: found; set: always; cas: swapped; delete: the key existed
	Found   bool   // whether the key exists (for delete: existed)
	Value   []byte // the operation's value; nil exactly when the key is missing
}

type result struct {
	success bool
	found   bool
	value   []byte
}

type operation func(*C.rasputin_client, **C.rasputin_result, **C.rasputin_error) uint32

type outcome[T any] struct {
	value T
	err   error
}

// call runs one librasputin call that answers a rasputin_result.
func (c *Client) call(ctx context.Context, run operation) (result, error) {
	return callWith(c, ctx, func(handle *C.rasputin_client, failure **C.rasputin_error) (result, uint32) {
		var answer *C.rasputin_result
		status := run(handle, &answer, failure)
		if status != C.RASPUTIN_OK {
			return result{}, status
		}
		defer C.rasputin_result_free(answer)
		value := C.GoBytes(unsafe.Pointer(answer.value), C.int(answer.value_len))
		return result{success: bool(answer.success), found: bool(answer.found), value: value}, status
	})
}

// callWith runs one librasputin call with ctx's deadline as its timeout. A
// context that can be cancelled is watched: cancellation returns at once,
// while the C call finishes in the background (Close waits for it).
func callWith[T any](c *Client, ctx context.Context, run func(*C.rasputin_client, **C.rasputin_error) (T, uint32)) (T, error) {
	var nothing T
	if err := ctx.Err(); err != nil {
		return nothing, contextError(err, "the context was done before the call")
	}
	c.mu.RLock()
	if c.handle == nil {
		c.mu.RUnlock()
		return nothing, ErrClosed
	}
	if ctx.Done() == nil {
		defer c.mu.RUnlock()
		return callLocked(c, ctx, run)
	}
	finished := make(chan outcome[T], 1)
	go func() {
		defer c.mu.RUnlock()
		got, err := callLocked(c, ctx, run)
		finished <- outcome[T]{got, err}
	}()
	select {
	case done := <-finished:
		return done.value, done.err
	case <-ctx.Done():
	}
	if ctx.Err() == context.Canceled {
		return nothing, contextError(ctx.Err(), "the call was cancelled; the operation may or may not take effect")
	}
	// The deadline is also the C call's timeout, so its answer (with a
	// RetryToken for a write) is due now: wait for it.
	done := <-finished
	var failure *Error
	if errors.As(done.err, &failure) && failure.Code == StatusTimeout {
		failure.cause = ctx.Err()
	}
	return done.value, done.err
}

func contextError(err error, message string) *Error {
	return &Error{Code: StatusTimeout, Message: message + ": " + err.Error(), cause: err}
}

// callLocked runs one librasputin call; the caller holds the read lock.
func callLocked[T any](c *Client, ctx context.Context, run func(*C.rasputin_client, **C.rasputin_error) (T, uint32)) (T, error) {
	var nothing T
	handle := c.handle
	var failure *C.rasputin_error
	if deadline, ok := ctx.Deadline(); ok {
		remaining := time.Until(deadline)
		if remaining < time.Millisecond {
			return nothing, contextError(context.DeadlineExceeded, "the context deadline has passed")
		}
		var view *C.rasputin_client
		if status := C.rasputin_client_with_timeout(handle, C.uint64_t(remaining/time.Millisecond), &view, &failure); status != C.RASPUTIN_OK {
			return nothing, takeError(Status(status), failure)
		}
		defer C.rasputin_client_free(view)
		handle = view
	}
	got, status := run(handle, &failure)
	if status != C.RASPUTIN_OK {
		return nothing, takeError(Status(status), failure)
	}
	return got, nil
}

// owned is data itself, or a copy when ctx can be cancelled: a cancelled
// call returns while C may still read its arguments, and the caller may
// then reuse its buffers.
func owned(ctx context.Context, data []byte) []byte {
	if ctx.Done() == nil || data == nil {
		return data
	}
	return append(make([]byte, 0, len(data)), data...)
}

// Set sets key to value.
func (c *Client) Set(key, value []byte) error { return c.SetContext(context.Background(), key, value) }

// SetContext is Set with ctx's deadline as the call's timeout.
func (c *Client) SetContext(ctx context.Context, key, value []byte) error {
	key, value = owned(ctx, key), owned(ctx, value)
	keyPointer, keyLength := cBytes(key)
	valuePointer, valueLength := cBytes(value)
	_, err := c.call(ctx, func(h *C.rasputin_client, out **C.rasputin_result, failure **C.rasputin_error) uint32 {
		return C.rasputin_set(h, keyPointer, keyLength, valuePointer, valueLength, out, failure)
	})
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	return err
}

// Get returns key's value, or ErrNotFound.
func (c *Client) Get(key []byte) ([]byte, error) { return c.GetContext(context.Background(), key) }

// GetContext is Get with ctx's deadline as the call's timeout.
func (c *Client) GetContext(ctx context.Context, key []byte) ([]byte, error) {
	key = owned(ctx, key)
	keyPointer, keyLength := cBytes(key)
	got, err := c.call(ctx, func(h *C.rasputin_client, out **C.rasputin_result, failure **C.rasputin_error) uint32 {
		return C.rasputin_get(h, keyPointer, keyLength, out, failure)
	})
	runtime.KeepAlive(key)
	if err != nil {
		return nil, err
	}
	if !got.found {
		return nil, fmt.Errorf("%q: %w", key, ErrNotFound)
	}
	return got.value, nil
}

// CAS sets key to newValue if it holds expected. It returns the key's value
// after the call (nil exactly when the key is missing; a key holding the
// empty value gives an empty, non-nil slice) and whether the swap happened.
func (c *Client) CAS(key, expected, newValue []byte) (current []byte, swapped bool, err error) {
	return c.CASContext(context.Background(), key, expected, newValue)
}

// CASContext is CAS with ctx's deadline as the call's timeout.
func (c *Client) CASContext(ctx context.Context, key, expected, newValue []byte) ([]byte, bool, error) {
	key, expected, newValue = owned(ctx, key), owned(ctx, expected), owned(ctx, newValue)
	keyPointer, keyLength := cBytes(key)
	expectedPointer, expectedLength := cBytes(expected)
	newPointer, newLength := cBytes(newValue)
	got, err := c.call(ctx, func(h *C.rasputin_client, out **C.rasputin_result, failure **C.rasputin_error) uint32 {
		return C.rasputin_cas(h, keyPointer, keyLength, expectedPointer, expectedLength, newPointer, newLength, out, failure)
	})
	runtime.KeepAlive(key)
	runtime.KeepAlive(expected)
	runtime.KeepAlive(newValue)
	if err != nil {
		return nil, false, err
	}
	if !got.found {
		return nil, false, nil
	}
	return got.value, got.success, nil
}

// Delete deletes key and returns its previous value (nil if it was missing).
func (c *Client) Delete(key []byte) ([]byte, error) {
	return c.DeleteContext(context.Background(), key)
}

// DeleteContext is Delete with ctx's deadline as the call's timeout.
func (c *Client) DeleteContext(ctx context.Context, key []byte) ([]byte, error) {
	key = owned(ctx, key)
	keyPointer, keyLength := cBytes(key)
	got, err := c.call(ctx, func(h *C.rasputin_client, out **C.rasputin_result, failure **C.rasputin_error) uint32 {
		return C.rasputin_del(h, keyPointer, keyLength, out, failure)
	})
	runtime.KeepAlive(key)
	if err != nil || !got.found {
		return nil, err
	}
	return got.value, nil
}

// Retry sends an operation that failed with StatusTimeout again under its
// original identity, given the error's RetryToken, so that it applies at
// most once; it returns the operation's own answer. It may time out again
// (with a token of its own), or fail with StatusRefused and server code 11
// (SESSION_EXPIRED) once the cluster has expired the session: then the
// outcome stays unknown.
func (c *Client) Retry(ctx context.Context, token []byte) (Result, error) {
	token = owned(ctx, token)
	tokenPointer, tokenLength := cBytes(token)
	got, err := c.call(ctx, func(h *C.rasputin_client, out **C.rasputin_result, failure **C.rasputin_error) uint32 {
		return C.rasputin_retry(h, tokenPointer, tokenLength, out, failure)
	})
	runtime.KeepAlive(token)
	if err != nil {
		return Result{}, err
	}
	if !got.found {
		return Result{Success: got.success}, nil
	}
	return Result{Success: got.success, Found: true, Value: got.value}, nil
}

// KeyValue is one key and its value, as a scan returns them.
type KeyValue struct {
	Key   []byte
	Value []byte
}

// scanPage is one page of a scan; resume is nil once the scan reached its end.
type scanPage struct {
	pairs  []KeyValue
	resume []byte
}

// Scan calls fn with each key from start (inclusive) to end (exclusive; nil
// or empty: no end) and its value, in key order, at most limit of them
// (0 or less: all), until fn returns false. The pairs come a page at a time
// (up to 10,000 pairs or about 1 MiB); each page is linearizable, but a key
// written while the scan runs may or may not appear. fn may keep the slices.
func (c *Client) Scan(start, end []byte, limit int, fn func(key, value []byte) bool) error {
	return c.ScanContext(context.Background(), start, end, limit, fn)
}

// ScanContext is Scan with ctx's deadline as the deadline of each page.
func (c *Client) ScanContext(ctx context.Context, start, end []byte, limit int, fn func(key, value []byte) bool) error {
	next := append([]byte{}, start...)
	for remaining := limit; next != nil; {
		wanted := 0
		if limit > 0 {
			wanted = remaining
		}
		page, err := c.scanPage(ctx, next, end, wanted)
		if err != nil {
			return err
		}
		for _, pair := range page.pairs {
			if !fn(pair.Key, pair.Value) {
				return nil
			}
			if remaining--; limit > 0 && remaining == 0 {
				return nil
			}
		}
		next = page.resume
	}
	return nil
}

// ScanPrefix is Scan of the keys that start with prefix.
func (c *Client) ScanPrefix(prefix []byte, fn func(key, value []byte) bool) error {
	return c.Scan(prefix, PrefixEnd(prefix), 0, fn)
}

// PrefixEnd is the first key after every key that starts with prefix, or
// nil when there is none (an empty prefix, or one of only 0xff bytes).
func PrefixEnd(prefix []byte) []byte {
	for last := len(prefix) - 1; last >= 0; last-- {
		if prefix[last] != 0xff {
			end := append([]byte{}, prefix[:last+1]...)
			end[last]++
			return end
		}
	}
	return nil
}

func (c *Client) scanPage(ctx context.Context, start, end []byte, limit int) (scanPage, error) {
	start, end = owned(ctx, start), owned(ctx, end)
	startPointer, startLength := cBytes(start)
	endPointer, endLength := cBytes(end)
	page, err := callWith(c, ctx, func(h *C.rasputin_client, failure **C.rasputin_error) (scanPage, uint32) {
		var answer *C.rasputin_scan_page
		status := C.rasputin_scan(h, startPointer, startLength, endPointer, endLength, C.size_t(limit), &answer, failure)
		if status != C.RASPUTIN_OK {
			return scanPage{}, status
		}
		defer C.rasputin_scan_page_free(answer)
		return copyPage(answer), status
	})
	runtime.KeepAlive(start)
	runtime.KeepAlive(end)
	return page, err
}

// copyPage copies a C page into Go memory before it is freed.
func copyPage(answer *C.rasputin_scan_page) scanPage {
	var page scanPage
	if answer.count > 0 {
		pairs := unsafe.Slice(answer.pairs, answer.count)
		page.pairs = make([]KeyValue, len(pairs))
		for index, pair := range pairs {
			page.pairs[index] = KeyValue{
				Key:   C.GoBytes(unsafe.Pointer(pair.key), C.int(pair.key_len)),
				Value: C.GoBytes(unsafe.Pointer(pair.value), C.int(pair.value_len)),
			}
		}
	}
	if answer.has_resume {
		page.resume = C.GoBytes(unsafe.Pointer(answer.resume), C.int(answer.resume_len))
	}
	return page
}
