//! What the CLI's integration tests share: the fixture weights and running the
//! `diffseg` binary. Each test module uses only part of this.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The tiny random-weight SD fixture (diffusers layout), as a `--weights` argument.
pub fn tiny_weights() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../diffseg-sd/tests/fixtures/tiny"
    )
    .to_string()
}

/// `diffseg args`, offline and blind to the user's `DIFFSEG_WEIGHTS`, not yet run.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_diffseg"));
    command
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("DIFFSEG_WEIGHTS");
    command
}

/// Runs `diffseg args` (see [`command`]).
pub fn diffseg(args: &[&str]) -> Output {
    command(args).output().expect("diffseg runs")
}

/// Runs `diffseg subcommand args` (see [`command`]).
pub fn diffseg_subcommand(subcommand: &str, args: &[&str]) -> Output {
    command(&[subcommand])
        .args(args)
        .output()
        .expect("diffseg runs")
}

/// Status, stdout and stderr of a run, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A run's standard output.
pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A run's standard error.
pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A path as a command-line argument.
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// A label PNG (palette or greyscale) as an image of its labels, read the way
/// diffseg reads it back: pixel value = label, whatever the palette's colours.
pub fn read_labels(path: &Path) -> image::ImageBuffer<image::Luma<u16>, Vec<u16>> {
    let (labels, width, height) =
        diffseg::read_label_png(path).unwrap_or_else(|error| panic!("{error}"));
    let labels = labels
        .into_iter()
        .map(|label| u16::try_from(label).expect("a 16-bit label"))
        .collect();
    image::ImageBuffer::from_raw(width, height, labels).expect("one label per pixel")
}
