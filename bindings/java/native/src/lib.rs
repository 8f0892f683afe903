//! JNI glue for `io.rasputin.RasputinClient`. Each native method catches
//! panics and turns every failure into a Java `RasputinException` subclass,
//! so nothing native ever crashes the JVM.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use jni::objects::{JByteArray, JClass, JObject, JString, JValue};
use jni::sys::{jboolean, jbyteArray, jint, jlong, jobject};
use jni::JNIEnv;
use rasputin::client::{
    RetryToken, STATUS_INTERNAL, STATUS_INVALID_ARGUMENT, STATUS_KEY_TOO_LARGE, STATUS_REFUSED, STATUS_TIMEOUT,
    STATUS_UNAVAILABLE, STATUS_VALUE_TOO_LARGE,
};
use rasputin::{Client, ClientError, Response};

struct Failure {
    status: i32,
    server_code: i32,
    message: String,
    /// For a timeout: the request, to retry under its identity.
    retry_token: Vec<u8>,
}

impl Failure {
    fn new(status: i32, message: String) -> Failure {
        Failure { status, server_code: 0, message, retry_token: Vec::new() }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        let status = error.status();
        let server_code = if status == STATUS_REFUSED { error.code() as i32 } else { 0 };
        let retry_token = error.retry_token().map(RetryToken::to_bytes).unwrap_or_default();
        Failure { status, server_code, message: error.to_string(), retry_token }
    }
}

impl From<jni::errors::Error> for Failure {
    fn from(error: jni::errors::Error) -> Failure {
        Failure::new(STATUS_INTERNAL, format!("JNI call failed: {error}"))
    }
}

fn exception_class(status: i32) -> &'static str {
    match status {
        STATUS_UNAVAILABLE => "io/rasputin/ClusterUnavailableException",
        STATUS_TIMEOUT => "io/rasputin/RasputinTimeoutException",
        STATUS_KEY_TOO_LARGE | STATUS_VALUE_TOO_LARGE => "io/rasputin/ValueTooLargeException",
        STATUS_INVALID_ARGUMENT => "io/rasputin/InvalidArgumentException",
        STATUS_REFUSED => "io/rasputin/RefusedException",
        _ => "io/rasputin/RasputinException",
    }
}

fn throw(env: &mut JNIEnv, failure: Failure) {
    if env.exception_check().unwrap_or(false) {
        return;
    }
    let thrown = (|| -> jni::errors::Result<()> {
        let message = env.new_string(&failure.message)?;
        let (status, server_code) = (JValue::Int(failure.status), JValue::Int(failure.server_code));
        let class = exception_class(failure.status);
        let exception = if failure.status == STATUS_TIMEOUT {
            let token = JObject::from(env.byte_array_from_slice(&failure.retry_token)?);
            let arguments = [JValue::Object(&message), status, server_code, JValue::Object(&token)];
            env.new_object(class, "(Ljava/lang/String;II[B)V", &arguments)?
        } else {
            env.new_object(class, "(Ljava/lang/String;II)V", &[JValue::Object(&message), status, server_code])?
        };
        env.throw(jni::objects::JThrowable::from(exception))
    })();
    if thrown.is_err() && !env.exception_check().unwrap_or(false) {
        let _ = env.throw_new("java/lang/IllegalStateException", failure.message);
    }
}

/// Runs `body`; a failure or a panic becomes a pending Java exception and `fallback` is returned.
fn guard<T>(env: &mut JNIEnv, fallback: T, body: impl FnOnce(&mut JNIEnv) -> Result<T, Failure>) -> T {
    match catch_unwind(AssertUnwindSafe(|| body(env))) {
        Ok(Ok(value)) => value,
        Ok(Err(failure)) => {
            throw(env, failure);
            fallback
        }
        Err(_) => {
            let message = "internal error in the Rasputin native library (a bug; please report it)".to_string();
            throw(env, Failure::new(STATUS_INTERNAL, message));
            fallback
        }
    }
}

fn client<'a>(handle: jlong) -> Result<&'a Client, Failure> {
    if handle == 0 {
        return Err(Failure::new(STATUS_INVALID_ARGUMENT, "the client is closed".into()));
    }
    // SAFETY: the Java side passes a handle from nativeNew and frees it only
    // under its write lock, after every call holding the read lock returned.
    Ok(unsafe { &*(handle as *const Client) })
}

fn bytes(env: &mut JNIEnv, array: &JByteArray, name: &str) -> Result<Vec<u8>, Failure> {
    if array.is_null() {
        return Err(Failure::new(STATUS_INVALID_ARGUMENT, format!("{name} must not be null")));
    }
    Ok(env.convert_byte_array(array)?)
}

/// The value, or null exactly when the key is missing.
fn value_or_null<'local>(env: &mut JNIEnv<'local>, response: &Response) -> Result<JObject<'local>, Failure> {
    if !response.get_found() {
        return Ok(JObject::null());
    }
    Ok(JObject::from(env.byte_array_from_slice(response.get_value())?))
}

#[no_mangle]
pub extern "system" fn Java_io_rasputin_RasputinClient_nativeNew(
    mut env: JNIEnv,
    _class: JClass,
    peers: JString,
    threads: jint,
    attempt_ms: jlong,
    operation_ms: jlong,
) -> jlong {
    guard(&mut env, 0, |env| {
        let invalid = |message: String| Failure::new(STATUS_INVALID_ARGUMENT, message);
        let text: String = env.get_string(&peers)?.into();
        if threads < 1 || attempt_ms < 1 || operation_ms < 1 {
            return Err(invalid("threads and timeouts must be at least 1".into()));
        }
        let client = Client::builder()
            .peers(text.split(',').map(str::trim).filter(|part| !part.is_empty()))
            .connections_per_server(threads as usize)
            .timeouts(Duration::from_millis(attempt_ms as u64), Duration::from_millis(operation_ms as u64))
            .build()?;
        Ok(Box::into_raw(Box::new(client)) as jlong)
    })
}

#[no_mangle]
pub extern "system" fn Java_io_rasputin_RasputinClient_nativeFree(mut env: JNIEnv, _class: JClass, handle: jlong) {
    guard(&mut env, (), |_| {
        if handle != 0 {
            // SAFETY: the Java side calls this once, under its write lock, with a handle from nativeNew.
            drop(unsafe { Box::from_raw(handle as *mut Client) });
        }
        Ok(())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_rasputin_RasputinClient_nativeSet(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
    key: JByteArray,
    value: JByteArray,
) {
    guard(&mut env, (), |env| {
        let (key, value) = (bytes(env, &key, "key")?, bytes(env, &value, "value")?);
        client(handle)?.set(&key, &value)?;
        Ok(())
    })
}

/// The body of the calls that take just a key and return a value or null.
fn key_operation(
    env: &mut JNIEnv,
    handle: jlong,
    key: &JByteArray,
    operation: fn(&Client, &[u8]) -> Result<Response, ClientError>,
) -> jbyteArray {
    guard(env, std::ptr::null_mut(), |env| {
        let key = bytes(env, key, "key")?;
        let response = operation(client(handle)?, &key)?;
        Ok(value_or_null(env, &response)?.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_rasputin_RasputinClient_nativeGet(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
    key: JByteArray,
) -> jbyteArray {
    key_operation(&mut env, handle, &key, Client::get)
}

#[no_mangle]
pub extern "system" fn Java_io_rasputin_RasputinClient_nativeDelete(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
    key: JByteArray,
) -> jbyteArray {
    key_operation(&mut env, handle, &key, Client::del)
}

#[no_mangle]
pub extern "system" fn Java_io_rasputin_RasputinClient_nativeCas(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
    key: JByteArray,
    expected: JByteArray,
    new_value: JByteArray,
) -> jobject {
    guard(&mut env, std::ptr::null_mut(), |env| {
        let key = bytes(env, &key, "key")?;
        let expected = bytes(env, &expected, "expected")?;
        let new_value = bytes(env, &new_value, "newValue")?;
        let response = client(handle)?.cas(&key, &expected, &new_value)?;
        let value = value_or_null(env, &response)?;
        let success = JValue::Bool(response.get_success() as jboolean);
        let result = env.new_object("io/rasputin/CasResult", "(Z[B)V", &[success, JValue::Object(&value)])?;
        Ok(result.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_rasputin_RasputinClient_nativeRetry(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
    token: JByteArray,
) -> jobject {
    guard(&mut env, std::ptr::null_mut(), |env| {
        let token = RetryToken::from_bytes(&bytes(env, &token, "token")?)?;
        let response = client(handle)?.retry(&token)?;
        let value = value_or_null(env, &response)?;
        let success = JValue::Bool(response.get_success() as jboolean);
        let found = JValue::Bool(response.get_found() as jboolean);
        let arguments = [success, found, JValue::Object(&value)];
        let result = env.new_object("io/rasputin/RetryResult", "(ZZ[B)V", &arguments)?;
        Ok(result.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_rasputin_RasputinClient_nativeScanPage(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
    start: JByteArray,
    end: JByteArray,
    limit: jlong,
) -> jobject {
    guard(&mut env, std::ptr::null_mut(), |env| {
        let start = bytes(env, &start, "start")?;
        // Null: no end (the Java side passes null for an empty end too).
        let end = if end.is_null() { None } else { Some(bytes(env, &end, "end")?) };
        let limit = usize::try_from(limit.max(0)).unwrap_or(usize::MAX);
        let page = client(handle)?.scan_page(&start, end.as_deref(), limit)?;
        let keys = env.new_object_array(page.pairs.len() as i32, "[B", JObject::null())?;
        let values = env.new_object_array(page.pairs.len() as i32, "[B", JObject::null())?;
        for (index, pair) in page.pairs.iter().enumerate() {
            let key = env.byte_array_from_slice(&pair.key)?;
            env.set_object_array_element(&keys, index as i32, &key)?;
            env.delete_local_ref(key)?;
            let value = env.byte_array_from_slice(&pair.value)?;
            env.set_object_array_element(&values, index as i32, &value)?;
            env.delete_local_ref(value)?;
        }
        let resume = match &page.resume {
            Some(resume) => JObject::from(env.byte_array_from_slice(resume)?),
            None => JObject::null(),
        };
        let arguments = [JValue::Object(&keys), JValue::Object(&values), JValue::Object(&resume)];
        Ok(env.new_object("io/rasputin/ScanPage", "([[B[[B[B)V", &arguments)?.into_raw())
    })
}
