//! The `rasputin._rasputin` extension module: a thin pyo3 layer over
//! `rasputin::Client`. Every network call releases the GIL.

use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use rasputin::client::{
    RetryToken, STATUS_CLOSED, STATUS_INVALID_ARGUMENT, STATUS_KEY_TOO_LARGE, STATUS_REFUSED, STATUS_TIMEOUT,
    STATUS_UNAVAILABLE, STATUS_VALUE_TOO_LARGE,
};
use rasputin::{Client as CoreClient, ClientError, Response, ScanIter};

create_exception!(
    _rasputin,
    RasputinError,
    PyException,
    "Base of every Rasputin error; `.code` is the stable status number."
);
create_exception!(
    _rasputin,
    ConnectionError,
    RasputinError,
    "No server could be reached: the cluster is down or the addresses are wrong."
);
create_exception!(
    _rasputin,
    ClusterUnavailable,
    ConnectionError,
    "No server could be reached in time; nothing was sent, so nothing took effect."
);
create_exception!(
    _rasputin,
    TimeoutError,
    RasputinError,
    "The operation did not finish in time and may or may not have taken effect. `client.retry(error)` sends the same request again under the same identity: it applies at most once, and its result says what happened. Calling the operation again instead sends a new request."
);
create_exception!(
    _rasputin,
    InvalidArgument,
    RasputinError,
    "An argument was malformed (for example an empty peer list)."
);
create_exception!(_rasputin, ValueTooLarge, RasputinError, "A key or value exceeds the cluster's size limits.");
create_exception!(_rasputin, Refused, RasputinError, "The server refused the request; `.server_code` says why.");
create_exception!(_rasputin, ClientClosed, RasputinError, "The client was closed.");

fn to_python_error(error: ClientError) -> PyErr {
    let message = error.to_string();
    let status = error.status();
    let server_code = if status == STATUS_REFUSED { error.code() as i32 } else { 0 };
    let retry_token = error.retry_token().map(RetryToken::to_bytes);
    let exception = match status {
        STATUS_UNAVAILABLE => ClusterUnavailable::new_err(message),
        STATUS_TIMEOUT => TimeoutError::new_err(message),
        STATUS_KEY_TOO_LARGE | STATUS_VALUE_TOO_LARGE => ValueTooLarge::new_err(message),
        STATUS_INVALID_ARGUMENT => InvalidArgument::new_err(message),
        _ => Refused::new_err(message),
    };
    Python::with_gil(|py| {
        let value = exception.value(py);
        let _ = value.setattr("code", status);
        let _ = value.setattr("server_code", server_code);
        if let Some(token) = retry_token {
            let _ = value.setattr("retry_token", PyBytes::new(py, &token));
        }
    });
    exception
}

fn closed_error() -> PyErr {
    let exception = ClientClosed::new_err("the client is closed; create a new one");
    Python::with_gil(|py| {
        let _ = exception.value(py).setattr("code", STATUS_CLOSED);
        let _ = exception.value(py).setattr("server_code", 0);
    });
    exception
}

/// Accepts bytes (and other read-only buffers such as memoryview is not
/// needed); refuses str with a clear TypeError.
fn bytes_argument<'a>(value: &'a Bound<'_, PyAny>, name: &str) -> PyResult<&'a [u8]> {
    value.downcast::<PyBytes>().map(|bytes| bytes.as_bytes()).map_err(|_| {
        let kind = value.get_type().name().map(|name| name.to_string()).unwrap_or_default();
        PyTypeError::new_err(format!("{name} must be bytes, not {kind}; encode strings first, e.g. {name}.encode()"))
    })
}

/// The outcome of `cas`: whether the swap happened, and the current value
/// (None exactly when the key is missing).
#[pyclass(frozen, module = "rasputin")]
struct CasResult {
    #[pyo3(get)]
    success: bool,
    #[pyo3(get)]
    value: Option<Py<PyBytes>>,
}

/// The outcome of `retry`: the retried operation's own answer. `value` is
/// None exactly when the key is missing (`found` is false).
#[pyclass(frozen, module = "rasputin")]
struct RetryResult {
    #[pyo3(get)]
    success: bool,
    #[pyo3(get)]
    found: bool,
    #[pyo3(get)]
    value: Option<Py<PyBytes>>,
}

#[pymethods]
impl RetryResult {
    fn __repr__(&self, py: Python<'_>) -> String {
        let value = self.value.as_ref().map(|value| format!("{:?}", value.bind(py).as_bytes()));
        format!(
            "RetryResult(success={}, found={}, value={})",
            if self.success { "True" } else { "False" },
            if self.found { "True" } else { "False" },
            value.unwrap_or("None".into())
        )
    }
}

#[pymethods]
impl CasResult {
    fn __repr__(&self, py: Python<'_>) -> String {
        let value = self.value.as_ref().map(|value| format!("{:?}", value.bind(py).as_bytes()));
        format!(
            "CasResult(success={}, value={})",
            if self.success { "True" } else { "False" },
            value.unwrap_or("None".into())
        )
    }
}

/// The pairs of a scan as `(key, value)` tuples of bytes, in key order,
/// fetched a page at a time without the GIL. Each page is linearizable; a
/// key written while the scan runs may or may not appear. It keeps its own
/// handle on the client's connections, so it runs to its end even if the
/// client is closed.
#[pyclass(module = "rasputin")]
struct Scan {
    /// None once the client was found closed: its connections go with it.
    pairs: Option<ScanIter>,
    /// Checked on every step, so that a scan ends with its client's close().
    client: Py<Client>,
}

#[pymethods]
impl Scan {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<(Py<PyBytes>, Py<PyBytes>)>> {
        let closed = self.client.borrow(py).inner.read().unwrap_or_else(|poisoned| poisoned.into_inner()).is_none();
        if closed {
            self.pairs = None;
        }
        let pairs = self.pairs.as_mut().ok_or_else(closed_error)?;
        match py.allow_threads(|| pairs.next()) {
            None => Ok(None),
            Some(Err(error)) => Err(to_python_error(error)),
            Some(Ok(pair)) => Ok(Some((PyBytes::new(py, &pair.key).unbind(), PyBytes::new(py, &pair.value).unbind()))),
        }
    }
}

/// A client of a Rasputin cluster. Thread-safe: share one between threads.
#[pyclass(module = "rasputin")]
struct Client {
    inner: std::sync::RwLock<Option<CoreClient>>,
}

impl Client {
    /// Runs `operation` on the client without the GIL.
    fn call(
        &self,
        py: Python<'_>,
        operation: impl FnOnce(&CoreClient) -> Result<Response, ClientError> + Send,
    ) -> PyResult<Response> {
        let guard = self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let client = guard.as_ref().ok_or_else(closed_error)?.clone();
        drop(guard);
        py.allow_threads(|| operation(&client)).map_err(to_python_error)
    }
}

/// The value, or None exactly when the key is missing.
fn value_or_none(py: Python<'_>, response: &Response) -> Option<Py<PyBytes>> {
    response.get_found().then(|| PyBytes::new(py, response.get_value()).unbind())
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (peers, *, threads = 1, timeout = 10.0))]
    fn new(peers: &Bound<'_, PyAny>, threads: usize, timeout: f64) -> PyResult<Client> {
        let list = peers
            .downcast::<PyList>()
            .map_err(|_| PyTypeError::new_err("peers must be a list of \"host:port\" strings"))?;
        let mut addresses: Vec<String> = Vec::new();
        for item in list.iter() {
            addresses
                .push(item.extract().map_err(|_| PyTypeError::new_err("each peer must be a \"host:port\" string"))?);
        }
        if addresses.is_empty() {
            return Err(PyValueError::new_err("peers is empty; list at least one \"host:port\""));
        }
        if threads == 0 {
            return Err(PyValueError::new_err("threads must be at least 1"));
        }
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(PyValueError::new_err("timeout must be a positive number of seconds"));
        }
        let operation = Duration::from_secs_f64(timeout);
        let client = CoreClient::builder()
            .peers(addresses)
            .connections_per_server(threads)
            .timeouts(operation.min(Duration::from_secs(2)), operation)
            .build()
            .map_err(to_python_error)?;
        Ok(Client { inner: std::sync::RwLock::new(Some(client)) })
    }

    /// Sets `key` to `value`.
    fn set(&self, py: Python<'_>, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let (key, value) = (bytes_argument(key, "key")?.to_vec(), bytes_argument(value, "value")?.to_vec());
        self.call(py, move |client| client.set(&key, &value)).map(|_| ())
    }

    /// Returns the value of `key`, or None if it is missing.
    fn get(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyBytes>>> {
        let key = bytes_argument(key, "key")?.to_vec();
        let response = self.call(py, move |client| client.get(&key))?;
        Ok(value_or_none(py, &response))
    }

    /// Sets `key` to `new` if it holds `expected`; returns whether it did and the current value.
    fn cas(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        expected: &Bound<'_, PyAny>,
        new: &Bound<'_, PyAny>,
    ) -> PyResult<CasResult> {
        let key = bytes_argument(key, "key")?.to_vec();
        let expected = bytes_argument(expected, "expected")?.to_vec();
        let new = bytes_argument(new, "new")?.to_vec();
        let response = self.call(py, move |client| client.cas(&key, &expected, &new))?;
        Ok(CasResult { success: response.success, value: value_or_none(py, &response) })
    }

    /// Sends an operation that raised TimeoutError again under its original
    /// identity, so that it applies at most once; returns its own answer.
    /// Takes the TimeoutError (or its `retry_token` bytes).
    fn retry(&self, py: Python<'_>, error: &Bound<'_, PyAny>) -> PyResult<RetryResult> {
        let token = match error.getattr("retry_token") {
            Ok(token) => token,
            Err(_) => error.clone(),
        };
        let bytes = bytes_argument(&token, "retry_token")?.to_vec();
        let token = RetryToken::from_bytes(&bytes).map_err(to_python_error)?;
        let response = self.call(py, move |client| client.retry(&token))?;
        let value = value_or_none(py, &response);
        Ok(RetryResult { success: response.success, found: response.get_found(), value })
    }

    /// Deletes `key`; returns its previous value, or None if it was missing.
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyBytes>>> {
        let key = bytes_argument(key, "key")?.to_vec();
        let response = self.call(py, move |client| client.del(&key))?;
        Ok(value_or_none(py, &response))
    }

    /// Iterates over the keys from `start` (inclusive) to `end` (exclusive;
    /// None or b"": no end), in key order, as `(key, value)` tuples; at
    /// most `limit` of them (None: all). `prefix=True` scans the keys that
    /// start with `start` instead, and takes no `end`.
    #[pyo3(signature = (start = None, end = None, *, limit = None, prefix = false))]
    fn scan(
        slf: &Bound<'_, Self>,
        start: Option<&Bound<'_, PyAny>>,
        end: Option<&Bound<'_, PyAny>>,
        limit: Option<usize>,
        prefix: bool,
    ) -> PyResult<Scan> {
        let start = start.map(|start| bytes_argument(start, "start")).transpose()?.unwrap_or_default();
        let end = end.map(|end| bytes_argument(end, "end")).transpose()?.filter(|end| !end.is_empty());
        if prefix && end.is_some() {
            return Err(PyValueError::new_err("a prefix scan takes no end; pass either prefix=True or end"));
        }
        let end = if prefix { rasputin::prefix_end(start) } else { end.map(<[u8]>::to_vec) };
        let this = slf.borrow();
        let guard = this.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let client = guard.as_ref().ok_or_else(closed_error)?;
        Ok(Scan { pairs: Some(client.scan_iter(start, end.as_deref(), limit)), client: slf.clone().unbind() })
    }

    /// Closes the client's connections. Further calls raise ClientClosed. Idempotent.
    fn close(&self, py: Python<'_>) {
        let client = self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        py.allow_threads(move || drop(client));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_arguments))]
    fn __exit__(&self, py: Python<'_>, _arguments: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }
}

#[pymodule]
fn _rasputin(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add_class::<Client>()?;
    module.add_class::<CasResult>()?;
    module.add_class::<RetryResult>()?;
    module.add_class::<Scan>()?;
    module.add("RasputinError", py.get_type::<RasputinError>())?;
    module.add("ConnectionError", py.get_type::<ConnectionError>())?;
    module.add("ClusterUnavailable", py.get_type::<ClusterUnavailable>())?;
    module.add("TimeoutError", py.get_type::<TimeoutError>())?;
    module.add("InvalidArgument", py.get_type::<InvalidArgument>())?;
    module.add("ValueTooLarge", py.get_type::<ValueTooLarge>())?;
    module.add("Refused", py.get_type::<Refused>())?;
    module.add("ClientClosed", py.get_type::<ClientClosed>())?;
    module.add("KEY_BYTES_MAX", rasputin::KEY_BYTES_MAX)?;
    module.add("VALUE_BYTES_MAX", rasputin::VALUE_BYTES_MAX)?;
    Ok(())
}
