//! Progress reported to Python, and Ctrl-C noticed while Rust works.
//!
//! A notebook never sees what Rust prints on the process's standard error, so
//! progress goes to a Python callable (by default `diffseg._progress`'s
//! reporter, which writes to Python's `sys.stderr`: the cell shows it). Long
//! loops run with the GIL released, where Python cannot act on a Ctrl-C:
//! they take the GIL between steps (download chunks, images) to run the
//! signal handlers, and stop with the `KeyboardInterrupt` they raise.

use std::time::{Duration, Instant};

use diffseg::weights::DownloadProgress;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::IntoPyObjectExt;

use crate::errors::type_error;

/// How often a download reports its bytes (it reports each file's start and
/// end too).
const REPORT_EVERY: Duration = Duration::from_millis(500);
/// How often a download runs Python's signal handlers: Ctrl-C stops it
/// within this, plus the chunk being received.
const SIGNALS_EVERY: Duration = Duration::from_millis(100);

/// The `progress=` argument: `None` for the default reporter, `False` for
/// none, or a callable given one dict per event.
pub fn callback(
    py: Python<'_>,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Py<PyAny>>> {
    match progress {
        None => Ok(Some(
            py.import("diffseg._progress")?
                .getattr("StderrReporter")?
                .call0()?
                .unbind(),
        )),
        Some(value) if value.is_callable() => Ok(Some(value.clone().unbind())),
        Some(value) if value.extract::<bool>().ok() == Some(false) => Ok(None),
        Some(value) => Err(type_error(format!(
            "progress must be a callable taking one dict, None or False; got {}",
            value.get_type().name()?
        ))),
    }
}

/// Calls `callback` with a dict of these items.
pub fn report<'py>(
    callback: &Bound<'py, PyAny>,
    items: &[(&str, Bound<'py, PyAny>)],
) -> PyResult<()> {
    let event = PyDict::new(callback.py());
    for (key, value) in items {
        event.set_item(key, value)?;
    }
    callback.call1((event,))?;
    Ok(())
}

/// An event's items.
type Event<'py> = Vec<(&'static str, Bound<'py, PyAny>)>;

/// A download's progress for Python: events to the callback, and Python's
/// signal handlers run between chunks; the first exception (a
/// `KeyboardInterrupt`, or the callback's own) stops the download.
pub struct PythonDownloadProgress<'a> {
    callback: Option<&'a Py<PyAny>>,
    file: String,
    size: u64,
    done: u64,
    reported: Instant,
    checked: Instant,
    error: Option<PyErr>,
}

impl<'a> PythonDownloadProgress<'a> {
    pub fn new(callback: Option<&'a Py<PyAny>>) -> Self {
        Self {
            callback,
            file: String::new(),
            size: 0,
            done: 0,
            reported: Instant::now(),
            checked: Instant::now(),
            error: None,
        }
    }

    /// The exception that stopped the download, if one did.
    pub fn into_error(self) -> Option<PyErr> {
        self.error
    }

    /// Sends an event (with the GIL), unless an exception already stopped things.
    fn send(&mut self, event: impl FnOnce(Python<'_>) -> PyResult<Event<'_>>) {
        let Some(callback) = self.callback else {
            return;
        };
        if self.error.is_some() {
            return;
        }
        self.error = Python::attach(|py| {
            event(py)
                .and_then(|items| report(callback.bind(py), &items))
                .err()
        });
    }

    fn send_bytes(&mut self) {
        self.reported = Instant::now();
        let (file, done, size) = (self.file.clone(), self.done, self.size);
        self.send(move |py| {
            Ok(vec![
                ("stage", "download".into_bound_py_any(py)?),
                ("file", file.into_bound_py_any(py)?),
                ("done", done.into_bound_py_any(py)?),
                ("total", size.into_bound_py_any(py)?),
            ])
        });
    }
}

impl DownloadProgress for PythonDownloadProgress<'_> {
    fn start(&mut self, file: &str, size: u64) {
        self.file = file.to_string();
        self.size = size;
        self.done = 0;
        self.send_bytes();
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if self.reported.elapsed() >= REPORT_EVERY {
            self.send_bytes();
        }
    }

    fn finish(&mut self, _file: &str) {
        self.done = self.size;
        self.send_bytes();
    }

    fn retry(&mut self, file: &str, reason: &str, delay: Duration) {
        let (file, reason) = (file.to_string(), reason.to_string());
        self.send(move |py| {
            Ok(vec![
                ("stage", "retry".into_bound_py_any(py)?),
                ("file", file.into_bound_py_any(py)?),
                ("reason", reason.into_bound_py_any(py)?),
                ("delay", delay.as_secs_f64().into_bound_py_any(py)?),
            ])
        });
    }

    fn interrupted(&mut self) -> bool {
        if self.error.is_none() && self.checked.elapsed() >= SIGNALS_EVERY {
            self.checked = Instant::now();
            self.error = Python::attach(|py| py.check_signals().err());
        }
        self.error.is_some()
    }
}
