//! Python bindings of DiffSeg: the `diffseg._diffseg` extension module that
//! the `diffseg` Python package re-exports (see docs/python.md).
//!
//! Everything here converts between Python and the facade (`diffseg`); the
//! pipeline itself is the facade's. Compute runs with the GIL released.

// Every dependency a target lists must be used (checked at each build; test builds,
// which also see the dev-dependencies, are exempt).
#![cfg_attr(not(test), deny(unused_crate_dependencies))]

mod attention;
mod cut;
mod errors;
mod image_input;
mod progress;
mod segmentation;
mod segmenter;

use pyo3::prelude::*;

/// The extension module.
#[pymodule]
fn _diffseg(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add_class::<segmenter::PySegmenter>()?;
    module.add_class::<segmentation::PySegmentation>()?;
    module.add_function(wrap_pyfunction!(attention::merge, module)?)?;
    module.add_function(wrap_pyfunction!(cut::cut, module)?)?;
    module.add(
        "WeightsNotFoundError",
        py.get_type::<errors::WeightsNotFoundError>(),
    )?;
    module.add(
        "BackendUnavailableError",
        py.get_type::<errors::BackendUnavailableError>(),
    )?;
    module.add("ModelError", py.get_type::<errors::ModelError>())?;
    module.add("DEFAULT_MODEL", diffseg::weights::DEFAULT_MODEL)?;
    module.add("PAPER_MODEL", diffseg::weights::PAPER_MODEL)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
