//! The `diffseg` command's integration tests, one module per file, built as one test binary (`cli`):
//! one link and one copy of the generic code they instantiate, instead of one per file.
//! Cargo's `autotests` is off, so a new test file is declared here; the CLI's
//! `layout` test fails on a file that is not.

mod bad_inputs;
mod common;
mod cut;
mod eval_cli;
mod eval_model;
// The library's evaluation fixture reader; these tests use part of it.
#[allow(dead_code)]
#[path = "../../diffseg/tests/eval_support/mod.rs"]
mod eval_support;
mod fetch;
mod large_runs;
mod layout;
mod merge;
mod names;
mod outputs;
mod segment;
#[path = "../../diffseg-sd/tests/tokenizer_fixture/mod.rs"]
mod tokenizer_fixture;
mod view;
