//! The exit status of `diffseg`: one meaning per code, so that a script or a
//! scheduler can tell images to look at (1) from a command to fix (2) from a
//! run to retry elsewhere (3).

use std::process::ExitCode;

/// What a run's exit status says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked for was done (or found already done).
    Done = 0,
    /// Some inputs failed (unreadable, corrupt, a file in the way of their
    /// results); the others were done.
    InputsFailed = 1,
    /// The command line is wrong: an unknown flag or a malformed value (clap
    /// exits with 2 itself), or a value refused once parsed (merge options out
    /// of range, f16 on the CPU, an output that is an input).
    Usage = 2,
    /// Nothing could run: the model, its weights or the device could not be
    /// loaded, or the run stopped on an error that is not one input's.
    CannotRun = 3,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// The section of the top-level `--help` that lists the codes.
pub const HELP: &str = "\
Exit status:
  0  everything asked for was done (or found already done)
  1  some inputs failed (see the messages, or --summary); the others were done
  2  usage error: an unknown flag, or a value that cannot be used
  3  nothing could run: the model, its weights or the device could not be loaded,
     or the run stopped on an error that is not one input's";

/// A flag value refused after parsing: the run exits with [`Exit::Usage`].
#[derive(Debug)]
pub struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error saying `message`.
pub fn usage(message: impl std::fmt::Display) -> anyhow::Error {
    UsageError(message.to_string()).into()
}

/// The one input of a command (`cut FEATURES`) that cannot be used: the run
/// exits with [`Exit::InputsFailed`], as a failed image of `attention` does.
#[derive(Debug)]
pub struct InputError(anyhow::Error);

impl std::fmt::Display for InputError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{:#}", self.0)
    }
}

impl std::error::Error for InputError {}

/// Marks `error` as its input's: see [`InputError`].
pub fn input_failed(error: anyhow::Error) -> anyhow::Error {
    InputError(error).into()
}

/// The exit status of a command that stopped with `error`.
pub fn for_error(error: &anyhow::Error) -> Exit {
    if error.chain().any(|cause| cause.is::<UsageError>()) {
        return Exit::Usage;
    }
    if error.chain().any(|cause| cause.is::<InputError>()) {
        return Exit::InputsFailed;
    }
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<diffseg::Error>())
        .map_or(Exit::CannotRun, for_library_error)
}

fn for_library_error(error: &diffseg::Error) -> Exit {
    use diffseg::Error;
    match error {
        Error::PrecisionUnavailable { .. }
        | Error::UnknownName { .. }
        | Error::FeatureOptions(_)
        | Error::OutputIsInput { .. }
        | Error::Vocabulary(_)
        | Error::IncompatibleOptions(_)
        | Error::NotOurs { .. } => Exit::Usage,
        // A command on one input (`attention IMAGE`, `merge FILE`, `cut FILE`) whose input fails.
        Error::ImageRead { .. }
        | Error::ImageDecode { .. }
        | Error::ImageDamaged { .. }
        | Error::ImageTooLarge { .. }
        | Error::TooManyPixels { .. }
        | Error::EmptyImage
        | Error::Features { .. }
        | Error::Attention { .. } => Exit::InputsFailed,
        _ => Exit::CannotRun,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_codes() {
        let usage_error = usage("--size must be at least 1").context("merge");
        assert_eq!(for_error(&usage_error), Exit::Usage);
        let in_the_way = anyhow::Error::from(diffseg::Error::NotOurs {
            path: "x.json".into(),
            reason: "not ours".into(),
        });
        assert_eq!(for_error(&in_the_way), Exit::Usage);
        let weights = anyhow::Error::from(diffseg::Error::Load {
            path: "w".into(),
            error: "bad".into(),
        })
        .context("cannot load the model");
        assert_eq!(for_error(&weights), Exit::CannotRun);
        assert_eq!(
            for_error(&anyhow::anyhow!("anything else")),
            Exit::CannotRun
        );
        let features = input_failed(anyhow::anyhow!("f.safetensors: not a safetensors file"));
        assert_eq!(for_error(&features), Exit::InputsFailed);
        assert_eq!(ExitCode::from(Exit::Usage), ExitCode::from(2));
    }
}
