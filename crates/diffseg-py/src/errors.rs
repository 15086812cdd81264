//! The facade's errors as Python exceptions: the type says what kind of
//! problem it is, the message is the project's own (it names the file or option).

use std::io::ErrorKind;

use pyo3::create_exception;
use pyo3::exceptions::{
    PyConnectionError, PyFileNotFoundError, PyOSError, PyPermissionError, PyRuntimeError,
    PyTypeError, PyValueError,
};
use pyo3::PyErr;

create_exception!(
    diffseg,
    WeightsNotFoundError,
    PyFileNotFoundError,
    "No Stable Diffusion weights where they were looked for (the message lists where, and the files needed)."
);
create_exception!(
    diffseg,
    BackendUnavailableError,
    PyRuntimeError,
    "The backend or precision asked for is not compiled into this build, or its device cannot start here."
);
create_exception!(
    diffseg,
    ModelError,
    PyRuntimeError,
    "The weights exist but cannot be loaded, or the model's output is unusable."
);

/// The Python exception for a facade error.
pub fn to_py_err(error: diffseg::Error) -> PyErr {
    use diffseg::Error;
    let message = error.to_string();
    match error {
        Error::ImageRead { error: source, .. } if source.kind() == ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(message)
        }
        Error::ImageRead { .. } | Error::Write { .. } => PyOSError::new_err(message),
        Error::ImageDecode { .. }
        | Error::ImageTooLarge { .. }
        | Error::TooManyPixels { .. }
        | Error::ImageDamaged { .. }
        | Error::EmptyImage
        | Error::InvalidInputSize(_)
        | Error::FeatureOptions(_)
        | Error::ImageSize { .. }
        | Error::IncompatibleOptions(_)
        | Error::Features { .. }
        | Error::Attention { .. } => PyValueError::new_err(message),
        Error::Segment(error) => core_to_py_err(error),
        // Refused entries, or no tokenizer to read them with (the message names the folder).
        Error::Vocabulary(_) => PyValueError::new_err(message),
        Error::WeightsPathMissing { .. }
        | Error::WeightsNotFound { .. }
        | Error::HubNotFound { .. } => WeightsNotFoundError::new_err(message),
        Error::HubAccessDenied { .. } => PyPermissionError::new_err(message),
        Error::Download { .. } => PyConnectionError::new_err(message),
        Error::Backend(_) | Error::NoDevice(_) | Error::PrecisionUnavailable { .. } => {
            BackendUnavailableError::new_err(message)
        }
        Error::Load { .. } | Error::Model(_) => ModelError::new_err(message),
        // A kind of error newer than this binding.
        _ => PyRuntimeError::new_err(message),
    }
}

/// The Python exception for an error of the algorithm (options, shapes, sizes).
pub fn core_to_py_err(error: diffseg_core::Error) -> PyErr {
    PyValueError::new_err(error.to_string())
}

/// A `ValueError` with this message.
pub fn value_error(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

/// A `TypeError` with this message.
pub fn type_error(message: impl Into<String>) -> PyErr {
    PyTypeError::new_err(message.into())
}
