//! librasputin: the C ABI of the Rasputin client.
//!
//! Every export catches panics, checks its pointers and lengths before it
//! touches them, and reports failure through a status code and an optional
//! `rasputin_error` the caller owns. There is no thread-local "last error":
//! Go and the JVM move work between threads.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use rasputin_core::client::RetryToken;
use rasputin_core::{Client, ClientError, Response};
use rasputin_core::{CLIENT_FRAME_BYTES_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};

/// The library's major version: incompatible ABI changes bump it (and the soname).
pub const RASPUTIN_VERSION_MAJOR: u32 = 0;
/// The library's minor version: compatible additions bump it.
pub const RASPUTIN_VERSION_MINOR: u32 = 3;
/// The library's patch version.
pub const RASPUTIN_VERSION_PATCH: u32 = 0;
/// The largest key, in bytes, the cluster accepts.
pub const RASPUTIN_KEY_BYTES_MAX: usize = 4096;
/// The largest value, in bytes, the cluster accepts.
pub const RASPUTIN_VALUE_BYTES_MAX: usize = 1048576;
// Literals above so that cbindgen can print them; these keep them honest.
const _: () = assert!(RASPUTIN_KEY_BYTES_MAX == KEY_BYTES_MAX);
const _: () = assert!(RASPUTIN_VALUE_BYTES_MAX == VALUE_BYTES_MAX);

/// What a call did. The numbers are stable: they never change meaning.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum rasputin_status {
    /// Success. Out-parameters are set.
    RASPUTIN_OK = 0,
    /// A required pointer argument was NULL, or a NULL buffer came with a non-zero length.
    RASPUTIN_ERROR_NULL_ARGUMENT = 1,
    /// An argument was malformed: an unparsable peer list, zero threads, a zero timeout.
    RASPUTIN_ERROR_INVALID_ARGUMENT = 2,
    /// The key is longer than RASPUTIN_KEY_BYTES_MAX.
    RASPUTIN_ERROR_KEY_TOO_LARGE = 3,
    /// A value is longer than RASPUTIN_VALUE_BYTES_MAX.
    RASPUTIN_ERROR_VALUE_TOO_LARGE = 4,
    /// The operation did not finish in time: servers answered, but none could
    /// complete it (no leader, say). It may or may not have taken effect. To
    /// find out, pass rasputin_error_retry_token's token to rasputin_retry:
    /// the retry keeps the request's identity, so it applies at most once,
    /// and its result is the operation's own. Calling the operation again
    /// instead sends a new request, which may apply a second time.
    RASPUTIN_ERROR_TIMEOUT = 5,
    /// The server refused the request; rasputin_error_server_code tells why.
    RASPUTIN_ERROR_REFUSED = 6,
    /// A bug inside the library was caught before it could reach the caller.
    RASPUTIN_ERROR_INTERNAL = 7,
    /// No server could be reached in time: the cluster is down, or the
    /// addresses are wrong. Nothing was sent, so nothing took effect.
    RASPUTIN_ERROR_UNAVAILABLE = 8,
}

use rasputin_status::*;

/// A connection pool to one cluster. Create with rasputin_client_new, free
/// with rasputin_client_free. Safe to use from many threads at once.
pub struct rasputin_client {
    client: Client,
}

/// Why a call failed. Owned by the caller; free with rasputin_error_free.
pub struct rasputin_error {
    status: rasputin_status,
    server_code: i32,
    message: CString,
    /// For RASPUTIN_ERROR_TIMEOUT: the request, to retry under its identity.
    retry_token: Vec<u8>,
}

/// The outcome of an operation. Owned by the caller; free with rasputin_result_free.
///
/// - set: success is true; value is the value written.
/// - get: success is false if the key is missing; value is its value.
/// - cas: success says whether the swap happened; value is the current value after the call.
/// - del: success is false if the key was missing; value is the value it had.
///
/// found says whether the key exists (for del: existed), so that an empty
/// value and a missing key never look alike: a failed cas on a key holding
/// the empty value has found true and value_len 0.
#[repr(C)]
pub struct rasputin_result {
    pub success: bool,
    /// The value's bytes, not NUL-terminated; NULL when value_len is 0.
    pub value: *mut u8,
    pub value_len: usize,
    /// The log position (term, index) that produced this state.
    pub term: u64,
    pub index: u64,
    /// Whether the key exists (since 0.2).
    pub found: bool,
}

/// One key and its value in a scan page. Both belong to the page.
#[repr(C)]
pub struct rasputin_pair {
    /// The key's bytes; NULL when key_len is 0.
    pub key: *mut u8,
    pub key_len: usize,
    /// The value's bytes; NULL when value_len is 0.
    pub value: *mut u8,
    pub value_len: usize,
}

/// One page of a scan, in key order (since 0.3). Owned by the caller; free
/// with rasputin_scan_page_free, which frees every pair with it.
#[repr(C)]
pub struct rasputin_scan_page {
    /// `count` pairs; NULL when count is 0.
    pub pairs: *mut rasputin_pair,
    pub count: usize,
    /// Whether the scan goes on: pass `resume` as the next call's start (with
    /// the same end) for the next page. False: the scan reached its end.
    pub has_resume: bool,
    /// NULL when resume_len is 0 (the empty key, or has_resume is false).
    pub resume: *mut u8,
    pub resume_len: usize,
    /// The log position (term, index) the page was read at.
    pub term: u64,
    pub index: u64,
}

struct Failure {
    status: rasputin_status,
    server_code: i32,
    message: String,
    retry_token: Vec<u8>,
}

impl Failure {
    fn new(status: rasputin_status, message: impl Into<String>) -> Failure {
        Failure { status, server_code: 0, message: message.into(), retry_token: Vec::new() }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        let status = match error.status() {
            rasputin_core::client::STATUS_INVALID_ARGUMENT => RASPUTIN_ERROR_INVALID_ARGUMENT,
            rasputin_core::client::STATUS_KEY_TOO_LARGE => RASPUTIN_ERROR_KEY_TOO_LARGE,
            rasputin_core::client::STATUS_VALUE_TOO_LARGE => RASPUTIN_ERROR_VALUE_TOO_LARGE,
            rasputin_core::client::STATUS_TIMEOUT => RASPUTIN_ERROR_TIMEOUT,
            rasputin_core::client::STATUS_REFUSED => RASPUTIN_ERROR_REFUSED,
            rasputin_core::client::STATUS_UNAVAILABLE => RASPUTIN_ERROR_UNAVAILABLE,
            _ => RASPUTIN_ERROR_INTERNAL,
        };
        let server_code = if status == RASPUTIN_ERROR_REFUSED { error.code() as i32 } else { 0 };
        let retry_token = error.retry_token().map(RetryToken::to_bytes).unwrap_or_default();
        Failure { status, server_code, message: error.to_string(), retry_token }
    }
}

/// Runs `body`, turning a failure or a panic into a status and an error.
fn guard(error_out: *mut *mut rasputin_error, body: impl FnOnce() -> Result<(), Failure>) -> rasputin_status {
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return RASPUTIN_OK,
        Ok(Err(failure)) => failure,
        Err(_) => Failure::new(RASPUTIN_ERROR_INTERNAL, "internal error in librasputin (a bug; please report it)"),
    };
    if !error_out.is_null() {
        let message = CString::new(failure.message.replace('\0', " ")).unwrap_or_default();
        let error = rasputin_error {
            status: failure.status,
            server_code: failure.server_code,
            message,
            retry_token: failure.retry_token,
        };
        // SAFETY: error_out is non-NULL and, per the header, points to writable storage for a pointer.
        unsafe { *error_out = Box::into_raw(Box::new(error)) };
    }
    failure.status
}

/// Borrows a caller's buffer after checking pointer and length.
///
/// # Safety
/// If `pointer` is non-NULL it must point to `length` readable bytes.
unsafe fn borrow<'a>(pointer: *const u8, length: usize, name: &str, max: usize) -> Result<&'a [u8], Failure> {
    if length > max {
        let status = if max == KEY_BYTES_MAX { RASPUTIN_ERROR_KEY_TOO_LARGE } else { RASPUTIN_ERROR_VALUE_TOO_LARGE };
        return Err(Failure::new(status, format!("{name} of {length} bytes exceeds the limit of {max} bytes")));
    }
    if pointer.is_null() {
        if length == 0 {
            return Ok(&[]);
        }
        return Err(Failure::new(RASPUTIN_ERROR_NULL_ARGUMENT, format!("{name} is NULL but its length is {length}")));
    }
    // SAFETY: non-NULL, and the caller promises `length` readable bytes; length ≤ max rules out overflow.
    Ok(unsafe { std::slice::from_raw_parts(pointer, length) })
}

fn check_out<T>(out: *mut *mut T, name: &str) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::new(RASPUTIN_ERROR_NULL_ARGUMENT, format!("{name} is NULL")));
    }
    Ok(())
}

fn client_ref<'a>(client: *const rasputin_client) -> Result<&'a rasputin_client, Failure> {
    // SAFETY: a non-NULL client came from rasputin_client_new and has not been freed (the header's contract).
    unsafe { client.as_ref() }.ok_or_else(|| Failure::new(RASPUTIN_ERROR_NULL_ARGUMENT, "client is NULL"))
}

/// Creates a client for the cluster whose servers' client addresses are
/// listed in `peers` ("host:port,host:port"; any one server is enough, the
/// client finds the leader). `nthreads` (at least 1) is the number of
/// connections per server over which concurrent calls are pipelined.
/// Connections open lazily: an unreachable cluster shows up on the first call.
///
/// Ownership: on success *client_out receives a client the caller frees with
/// rasputin_client_free. `peers` is only read during the call.
/// Thread safety: may be called from any thread.
/// Returns: RASPUTIN_OK; RASPUTIN_ERROR_NULL_ARGUMENT (peers or client_out is NULL);
/// RASPUTIN_ERROR_INVALID_ARGUMENT (peers is not UTF-8 or not a list of host:port, or nthreads is 0);
/// RASPUTIN_ERROR_INTERNAL.
///
/// # Safety
/// `peers` must be NULL or a NUL-terminated string; `client_out` and `error_out`
/// must be NULL or point to writable pointers.
#[no_mangle]
pub unsafe extern "C" fn rasputin_client_new(
    peers: *const c_char,
    nthreads: usize,
    client_out: *mut *mut rasputin_client,
    error_out: *mut *mut rasputin_error,
) -> rasputin_status {
    guard(error_out, || {
        check_out(client_out, "client_out")?;
        if peers.is_null() {
            return Err(Failure::new(RASPUTIN_ERROR_NULL_ARGUMENT, "peers is NULL"));
        }
        // SAFETY: non-NULL and NUL-terminated per the contract above.
        let text = unsafe { CStr::from_ptr(peers) }
            .to_str()
            .map_err(|_| Failure::new(RASPUTIN_ERROR_INVALID_ARGUMENT, "peers is not valid UTF-8"))?;
        let peers = text.split(',').map(str::trim).filter(|part| !part.is_empty());
        let client = Client::builder().peers(peers).connections_per_server(nthreads).build()?;
        // SAFETY: checked non-NULL above.
        unsafe { *client_out = Box::into_raw(Box::new(rasputin_client { client })) };
        Ok(())
    })
}

/// Closes the client's connections and frees it. NULL is ignored.
///
/// Ownership: takes back a client from rasputin_client_new; the pointer is invalid afterwards.
/// Thread safety: no other thread may be using the client during or after this call.
///
/// # Safety
/// `client` must be NULL or a client from rasputin_client_new, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rasputin_client_free(client: *mut rasputin_client) {
    if client.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the contract, a live client from rasputin_client_new.
        drop(unsafe { Box::from_raw(client) });
    }));
}

/// Sets how long one attempt may wait for a server (`attempt_ms`) and how
/// long a whole call may take with its retries (`operation_ms`). Both must be
/// at least 1. The defaults are 2000 and 10000.
///
/// Thread safety: may be called while other threads use the client; calls
/// that already started keep their old timeouts.
/// Returns: RASPUTIN_OK; RASPUTIN_ERROR_NULL_ARGUMENT; RASPUTIN_ERROR_INVALID_ARGUMENT (a zero timeout);
/// RASPUTIN_ERROR_INTERNAL.
///
/// # Safety
/// `client` must be NULL or a live client; `error_out` NULL or a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn rasputin_client_set_timeouts(
    client: *const rasputin_client,
    attempt_ms: u64,
    operation_ms: u64,
    error_out: *mut *mut rasputin_error,
) -> rasputin_status {
    guard(error_out, || {
        let client = client_ref(client)?;
        if attempt_ms == 0 || operation_ms == 0 {
            return Err(Failure::new(RASPUTIN_ERROR_INVALID_ARGUMENT, "timeouts must be at least 1 ms"));
        }
        client.client.set_timeouts(Duration::from_millis(attempt_ms), Duration::from_millis(operation_ms));
        Ok(())
    })
}

/// Makes a second handle on `client`'s connections whose calls each take at
/// most `operation_ms` (at least 1): for a per-call deadline, make one, call
/// through it, and free it. Freeing either handle leaves the other working.
///
/// Ownership: on success *client_out receives a handle the caller frees with rasputin_client_free.
/// Thread safety: may be called from any thread, concurrently with calls on `client`.
/// Returns: RASPUTIN_OK; RASPUTIN_ERROR_NULL_ARGUMENT; RASPUTIN_ERROR_INVALID_ARGUMENT (a zero timeout);
/// RASPUTIN_ERROR_INTERNAL.
///
/// # Safety
/// `client` must be NULL or a live client; out-pointers must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rasputin_client_with_timeout(
    client: *const rasputin_client,
    operation_ms: u64,
    client_out: *mut *mut rasputin_client,
    error_out: *mut *mut rasputin_error,
) -> rasputin_status {
    guard(error_out, || {
        let client = client_ref(client)?;
        check_out(client_out, "client_out")?;
        if operation_ms == 0 {
            return Err(Failure::new(RASPUTIN_ERROR_INVALID_ARGUMENT, "the timeout must be at least 1 ms"));
        }
        let operation = Duration::from_millis(operation_ms);
        let view = client.client.with_timeouts(operation.min(Duration::from_secs(2)), operation);
        // SAFETY: checked non-NULL above.
        unsafe { *client_out = Box::into_raw(Box::new(rasputin_client { client: view })) };
        Ok(())
    })
}

fn finish(result_out: *mut *mut rasputin_result, response: Response) {
    let (value, value_len) = hand_over(response.value);
    let result = rasputin_result {
        success: response.success,
        value,
        value_len,
        term: response.term,
        index: response.index,
        found: response.found,
    };
    // SAFETY: the callers checked result_out is non-NULL.
    unsafe { *result_out = Box::into_raw(Box::new(result)) };
}

/// Moves `bytes` to the heap for a C caller; NULL for none. Freed by `give_back`.
fn hand_over(bytes: Vec<u8>) -> (*mut u8, usize) {
    let length = bytes.len();
    if length == 0 {
        return (std::ptr::null_mut(), 0);
    }
    (Box::into_raw(bytes.into_boxed_slice()) as *mut u8, length)
}

/// Frees what `hand_over` made.
///
/// # Safety
/// `pointer` must be NULL or come from `hand_over` with this `length`, not yet freed.
unsafe fn give_back(pointer: *mut u8, length: usize) {
    if !pointer.is_null() {
        // SAFETY: per the contract, a boxed slice of exactly `length` bytes.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(pointer, length)) });
    }
}

/// Reads one page of the keys from `start` (inclusive) to `end` (exclusive)
/// in key order, linearizably: at most `limit` pairs, and at most what a
/// page holds (10,000 pairs, about 1 MiB; `limit` 0: that much). A NULL or
/// empty `end` means no end. When page->has_resume is true the scan goes on:
/// call again with page->resume as `start` and the same `end`. Pages read
/// one after another are each linearizable, not one snapshot: a key written
/// between two calls may or may not appear.
///
/// Ownership: on RASPUTIN_OK *page_out receives a page the caller frees with
/// rasputin_scan_page_free. `start` and `end` are only read during the call.
/// Thread safety: may be called from many threads on one client at once.
/// Returns: RASPUTIN_OK; RASPUTIN_ERROR_NULL_ARGUMENT; RASPUTIN_ERROR_KEY_TOO_LARGE
/// (start or end); RASPUTIN_ERROR_UNAVAILABLE; RASPUTIN_ERROR_TIMEOUT;
/// RASPUTIN_ERROR_REFUSED; RASPUTIN_ERROR_INTERNAL.
///
/// # Safety
/// Buffers must hold their stated lengths; out-pointers must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rasputin_scan(
    client: *const rasputin_client,
    start: *const u8,
    start_len: usize,
    end: *const u8,
    end_len: usize,
    limit: usize,
    page_out: *mut *mut rasputin_scan_page,
    error_out: *mut *mut rasputin_error,
) -> rasputin_status {
    guard(error_out, || {
        let client = client_ref(client)?;
        check_out(page_out, "page_out")?;
        // SAFETY: the caller's buffers hold their stated lengths.
        let (start, end) =
            unsafe { (borrow(start, start_len, "start", KEY_BYTES_MAX)?, borrow(end, end_len, "end", KEY_BYTES_MAX)?) };
        let end = (!end.is_empty()).then_some(end);
        let page = client.client.scan_page(start, end, limit)?;
        let pairs: Vec<rasputin_pair> = page
            .pairs
            .into_iter()
            .map(|pair| {
                let ((key, key_len), (value, value_len)) = (hand_over(pair.key), hand_over(pair.value));
                rasputin_pair { key, key_len, value, value_len }
            })
            .collect();
        let count = pairs.len();
        let pairs = if count == 0 { std::ptr::null_mut() } else { Box::into_raw(pairs.into_boxed_slice()) as *mut _ };
        let has_resume = page.resume.is_some();
        let (resume, resume_len) = hand_over(page.resume.unwrap_or_default());
        let page =
            rasputin_scan_page { pairs, count, has_resume, resume, resume_len, term: page.term, index: page.index };
        // SAFETY: checked non-NULL above.
        unsafe { *page_out = Box::into_raw(Box::new(page)) };
        Ok(())
    })
}

/// Frees a scan page and every pair in it. NULL is ignored.
///
/// # Safety
/// `page` must be NULL or a page from rasputin_scan, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rasputin_scan_page_free(page: *mut rasputin_scan_page) {
    if page.is_null() {
        return;
    }
    // SAFETY: per the contract, a live page made by rasputin_scan.
    let page = unsafe { Box::from_raw(page) };
    if !page.pairs.is_null() {
        // SAFETY: rasputin_scan made `pairs` from a boxed slice of exactly `count` pairs.
        let pairs = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(page.pairs, page.count)) };
        for pair in pairs.iter() {
            // SAFETY: each buffer came from hand_over with its length.
            unsafe {
                give_back(pair.key, pair.key_len);
                give_back(pair.value, pair.value_len);
            }
        }
    }
    // SAFETY: as above.
    unsafe { give_back(page.resume, page.resume_len) };
}

/// Sets `key` to `value`.
///
/// Ownership: on RASPUTIN_OK *result_out receives a result the caller frees
/// with rasputin_result_free. `key` and `value` are only read during the call.
/// Thread safety: may be called from many threads on one client at once.
/// Returns: RASPUTIN_OK; RASPUTIN_ERROR_NULL_ARGUMENT; RASPUTIN_ERROR_KEY_TOO_LARGE;
/// RASPUTIN_ERROR_VALUE_TOO_LARGE; RASPUTIN_ERROR_UNAVAILABLE; RASPUTIN_ERROR_TIMEOUT;
/// RASPUTIN_ERROR_REFUSED; RASPUTIN_ERROR_INTERNAL.
///
/// # Safety
/// Buffers must hold their stated lengths; out-pointers must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rasputin_set(
    client: *const rasputin_client,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    result_out: *mut *mut rasputin_result,
    error_out: *mut *mut rasputin_error,
) -> rasputin_status {
    guard(error_out, || {
        let client = client_ref(client)?;
        check_out(result_out, "result_out")?;
        // SAFETY: the caller's buffers hold their stated lengths.
        let (key, value) = unsafe {
            (borrow(key, key_len, "key", KEY_BYTES_MAX)?, borrow(value, value_len, "value", VALUE_BYTES_MAX)?)
        };
        finish(result_out, client.client.set(key, value)?);
        Ok(())
    })
}

/// The body of the calls that take just a key.
///
/// # Safety
/// As rasputin_get.
unsafe fn key_operation(
    client: *const rasputin_client,
    key: *const u8,
    key_len: usize,
    result_out: *mut *mut rasputin_result,
    error_out: *mut *mut rasputin_error,
    operation: fn(&Client, &[u8]) -> Result<Response, ClientError>,
) -> rasputin_status {
    guard(error_out, || {
        let client = client_ref(client)?;
        check_out(result_out, "result_out")?;
        // SAFETY: the caller's buffer holds its stated length.
        let key = unsafe { borrow(key, key_len, "key", KEY_BYTES_MAX)? };
        finish(result_out, operation(&client.client, key)?);
        Ok(())
    })
}

/// Reads `key`. A missing key is RASPUTIN_OK with result->success false.
///
/// Ownership, thread safety and statuses: as rasputin_set, without RASPUTIN_ERROR_VALUE_TOO_LARGE.
///
/// # Safety
/// As rasputin_set.
#[no_mangle]
pub unsafe extern "C" fn rasputin_get(
    client: *const rasputin_client,
    key: *const u8,
    key_len: usize,
    result_out: *mut *mut rasputin_result,
    error_out: *mut *mut rasputin_error,
) -> rasputin_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { key_operation(client, key, key_len, result_out, error_out, Client::get) }
}

/// Compare-and-swap: if `key` holds `expected`, sets it to `new_value`.
/// A failed comparison is RASPUTIN_OK with result->success false; either
/// way result->value is the key's value after the call.
///
/// Ownership, thread safety and statuses: as rasputin_set.
///
/// # Safety
/// As rasputin_set.
#[no_mangle]
pub unsafe extern "C" fn rasputin_cas(
    client: *const rasputin_client,
    key: *const u8,
    key_len: usize,
    expected: *const u8,
    expected_len: usize,
    new_value: *const u8,
    new_value_len: usize,
    result_out: *mut *mut rasputin_result,
    error_out: *mut *mut rasputin_error,
) -> rasputin_status {
    guard(error_out, || {
        let client = client_ref(client)?;
        check_out(result_out, "result_out")?;
        // SAFETY: the caller's buffers hold their stated lengths.
        let (key, expected, new_value) = unsafe {
            (
                borrow(key, key_len, "key", KEY_BYTES_MAX)?,
                borrow(expected, expected_len, "expected", VALUE_BYTES_MAX)?,
                borrow(new_value, new_value_len, "new_value", VALUE_BYTES_MAX)?,
            )
        };
        finish(result_out, client.client.cas(key, expected, new_value)?);
        Ok(())
    })
}

/// Deletes `key`. result->value is the value it had; a missing key is
/// RASPUTIN_OK with result->success false.
///
/// Ownership, thread safety and statuses: as rasputin_get.
///
/// # Safety
/// As rasputin_set.
#[no_mangle]
pub unsafe extern "C" fn rasputin_del(
    client: *const rasputin_client,
    key: *const u8,
    key_len: usize,
    result_out: *mut *mut rasputin_result,
    error_out: *mut *mut rasputin_error,
) -> rasputin_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { key_operation(client, key, key_len, result_out, error_out, Client::del) }
}

/// Sends again, under its original identity, an operation that failed with
/// RASPUTIN_ERROR_TIMEOUT, given the token rasputin_error_retry_token gave
/// for it. The operation applies at most once whatever happened to the
/// first call, and the result is the operation's own: if the first call took
/// effect, the result it got. It may time out again (with a token of its
/// own, the same request) or, once the cluster has expired the session, fail
/// with RASPUTIN_ERROR_REFUSED and server code 11 (SESSION_EXPIRED): then the
/// outcome stays unknown.
///
/// Ownership, thread safety and statuses: as rasputin_set, plus
/// RASPUTIN_ERROR_INVALID_ARGUMENT for bytes that are not a retry token.
///
/// # Safety
/// `token` must be NULL or point to `token_len` readable bytes; out-pointers must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rasputin_retry(
    client: *const rasputin_client,
    token: *const u8,
    token_len: usize,
    result_out: *mut *mut rasputin_result,
    error_out: *mut *mut rasputin_error,
) -> rasputin_status {
    guard(error_out, || {
        let client = client_ref(client)?;
        check_out(result_out, "result_out")?;
        if token_len > CLIENT_FRAME_BYTES_MAX {
            return Err(Failure::new(RASPUTIN_ERROR_INVALID_ARGUMENT, "the token is longer than any request"));
        }
        // SAFETY: the caller's buffer holds its stated length.
        let token = unsafe { borrow(token, token_len, "token", CLIENT_FRAME_BYTES_MAX)? };
        let token = RetryToken::from_bytes(token)?;
        finish(result_out, client.client.retry(&token)?);
        Ok(())
    })
}

/// The retry token of an error with status RASPUTIN_ERROR_TIMEOUT: the
/// bytes to pass to rasputin_retry. They belong to the error and live until
/// rasputin_error_free. For any other error, or a NULL one, *token is set to
/// NULL and *token_len to 0.
///
/// Returns: RASPUTIN_OK; RASPUTIN_ERROR_NULL_ARGUMENT if token or token_len is NULL.
///
/// # Safety
/// `error` must be NULL or a live error; `token` and `token_len` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rasputin_error_retry_token(
    error: *const rasputin_error,
    token: *mut *const u8,
    token_len: *mut usize,
) -> rasputin_status {
    if token.is_null() || token_len.is_null() {
        return RASPUTIN_ERROR_NULL_ARGUMENT;
    }
    // SAFETY: per the contract, NULL or a live error.
    let bytes = unsafe { error.as_ref() }.map_or(&[][..], |error| error.retry_token.as_slice());
    let pointer = if bytes.is_empty() { std::ptr::null() } else { bytes.as_ptr() };
    // SAFETY: both checked non-NULL above and writable per the contract.
    unsafe {
        *token = pointer;
        *token_len = bytes.len();
    }
    RASPUTIN_OK
}

/// Frees a result and its value. NULL is ignored.
///
/// # Safety
/// `result` must be NULL or a result from this library, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rasputin_result_free(result: *mut rasputin_result) {
    if result.is_null() {
        return;
    }
    // SAFETY: per the contract, a live result made by `finish`.
    let result = unsafe { Box::from_raw(result) };
    // SAFETY: `finish` made the value with hand_over.
    unsafe { give_back(result.value, result.value_len) };
}

/// The error's status (never RASPUTIN_OK). NULL gives RASPUTIN_ERROR_NULL_ARGUMENT.
///
/// # Safety
/// `error` must be NULL or a live error.
#[no_mangle]
pub unsafe extern "C" fn rasputin_error_status(error: *const rasputin_error) -> rasputin_status {
    // SAFETY: per the contract.
    unsafe { error.as_ref() }.map_or(RASPUTIN_ERROR_NULL_ARGUMENT, |error| error.status)
}

/// The stable wire error code behind RASPUTIN_ERROR_REFUSED (for example
/// 4, value too large; see ErrorCode in rasputin.proto), or 0.
///
/// # Safety
/// `error` must be NULL or a live error.
#[no_mangle]
pub unsafe extern "C" fn rasputin_error_server_code(error: *const rasputin_error) -> i32 {
    // SAFETY: per the contract.
    unsafe { error.as_ref() }.map_or(0, |error| error.server_code)
}

/// A human-readable message that says what happened and what to do. The
/// string belongs to the error and lives until rasputin_error_free. NULL gives "".
///
/// # Safety
/// `error` must be NULL or a live error.
#[no_mangle]
pub unsafe extern "C" fn rasputin_error_message(error: *const rasputin_error) -> *const c_char {
    // SAFETY: per the contract.
    unsafe { error.as_ref() }.map_or(c"".as_ptr(), |error| error.message.as_ptr())
}

/// Frees an error. NULL is ignored.
///
/// # Safety
/// `error` must be NULL or an error from this library, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rasputin_error_free(error: *mut rasputin_error) {
    if !error.is_null() {
        // SAFETY: per the contract.
        drop(unsafe { Box::from_raw(error) });
    }
}

/// The library's version, "MAJOR.MINOR.PATCH". A static string: do not free it.
#[no_mangle]
pub extern "C" fn rasputin_version() -> *const c_char {
    c"0.3.0".as_ptr()
}
