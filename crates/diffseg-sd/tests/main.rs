//! diffseg-sd's integration tests, one module per file, built as one test binary (`sd`):
//! one link and one copy of the generic code they instantiate, instead of one per file.
//! Cargo's `autotests` is off, so a new test file is declared here; the CLI's
//! `layout` test fails on a file that is not.

mod bounds;
mod common;
mod diffcut;
mod parity;
mod readers_prop;
mod shapes;
mod tokenizer;
mod weights;
