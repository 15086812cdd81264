//! The `diffseg` command's integration tests, one module per file, built as one test binary (`cli`):
//! one link and one copy of the generic code they instantiate, instead of one per file.
//! Cargo's `autotests` is off, so a new test file is declared here; the CLI's
//! `layout` test fails on a file that is not.

mod common;
#[path = "../../diffseg/tests/eval_support/mod.rs"]
mod eval_support;
mod bad_inputs;
mod cut;
mod eval_cli;
mod eval_model;
mod fetch;
mod large_runs;
mod layout;
mod merge;
mod outputs;
mod segment;
mod view;
