//! `diffseg segment` (being written: placeholder until its issue lands).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`diffseg segment` is not implemented yet")
}
