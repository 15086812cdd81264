//! The library's integration tests, one module per file, built as one test binary (`facade`):
//! one link and one copy of the generic code they instantiate, instead of one per file.
//! Cargo's `autotests` is off, so a new test file is declared here; the CLI's
//! `layout` test fails on a file that is not.

mod bad_inputs;
mod diffcut;
mod eval_support;
mod eval_synthetic;
mod f16_pipeline;
mod hub;
mod model_files;
mod naming;
mod pipeline;
mod segment_names;
#[path = "../../diffseg-sd/tests/tokenizer_fixture/mod.rs"]
mod tokenizer_fixture;
mod vocabulary;
