//! `diffseg`: unsupervised zero-shot segmentation with Stable Diffusion.

// Every dependency a target lists must be used (checked at each build; test builds,
// which also see the dev-dependencies, are exempt).
#![cfg_attr(not(test), deny(unused_crate_dependencies))]

mod attention;
mod coco;
mod cut;
mod eval;
mod exit;
mod features;
mod fetch;
mod info;
mod jobs;
mod label_outputs;
mod merge;
mod options;
mod progress;
mod segment;
mod view;

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "diffseg",
    version,
    about,
    long_about = None,
    after_help = after_help()
)]
struct Cli {
    /// Log what happens to stderr: -v for the main steps (weights resolved, model loaded,
    /// what the run will do), -vv also for details (each batch's and image's timings).
    /// RUST_LOG, when set, chooses instead (e.g. RUST_LOG=diffseg=debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// The commands; each one's help (about, details, options, examples) is the
/// doc comment and attributes of its `Args`.
#[derive(Subcommand)]
enum Command {
    Segment(segment::Args),
    Attention(attention::Args),
    Merge(merge::Args),
    Features(features::Args),
    Cut(cut::Args),
    Eval(eval::Args),
    Fetch(fetch::Args),
    Info(info::Args),
    View(view::Args),
}

/// The top-level help's epilogue: examples, then the exit statuses.
fn after_help() -> String {
    format!(
        "\
Examples:
  diffseg segment photos/ --out results/      # label PNGs, overlays and JSON
  diffseg view results/                       # results/index.html, a gallery
  diffseg fetch                               # download the weights ahead of time
  diffseg info                                # backends, devices, weights found

`diffseg <COMMAND> --help` explains a command's options.

{}",
        exit::HELP
    )
}

/// Sends `tracing`'s events to stderr (past any progress bar), filtered by
/// RUST_LOG when set, else by `-v`: warnings only, then diffseg's steps, then
/// its details. Other crates' events stay at warnings unless RUST_LOG says.
fn start_logging(verbose: u8) {
    let levels = match verbose {
        0 => "warn",
        1 => "warn,diffseg=info",
        _ => "warn,diffseg=debug",
    };
    let filter = match std::env::var(tracing_subscriber::EnvFilter::DEFAULT_ENV) {
        Ok(directives) if !directives.trim().is_empty() => {
            tracing_subscriber::EnvFilter::builder().parse_lossy(directives)
        }
        _ => tracing_subscriber::EnvFilter::new(levels),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogLine::default)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    start_logging(cli.verbose);
    let result = match cli.command {
        Command::Segment(args) => segment::run(args),
        Command::Attention(args) => attention::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Features(args) => features::run(args),
        Command::Cut(args) => cut::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Fetch(args) => fetch::run(args),
        Command::Info(args) => info::run(args),
        Command::View(args) => view::run(args),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(error) => {
            // One line per cause: "error: <what> : <why>".
            eprintln!("error: {error:#}");
            exit::for_error(&error).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// The subcommands, built (so their generated arguments are there), but `help`.
    fn subcommands() -> Vec<clap::Command> {
        let mut cli = Cli::command();
        cli.build();
        cli.get_subcommands()
            .filter(|command| command.get_name() != "help")
            .cloned()
            .collect()
    }

    #[test]
    fn every_argument_of_every_command_is_explained() {
        let mut cli = Cli::command();
        cli.build();
        let mut unexplained = Vec::new();
        for command in std::iter::once(&cli).chain(cli.get_subcommands()) {
            for argument in command.get_arguments() {
                if argument.get_help().is_none() && argument.get_long_help().is_none() {
                    unexplained.push(format!("{} {}", command.get_name(), argument.get_id()));
                }
            }
        }
        assert!(unexplained.is_empty(), "no help text: {unexplained:?}");
    }

    #[test]
    fn every_command_is_explained_with_examples() {
        for mut command in subcommands() {
            let name = command.get_name().to_string();
            assert!(command.get_about().is_some(), "{name}: no about");
            let help = command.render_long_help().to_string();
            assert!(
                help.contains("Examples:") && help.contains(&format!("diffseg {name} ")),
                "{name}: no examples in its help:\n{help}"
            );
        }
    }

    /// A flag a command's help names must be one of its own, or one of the
    /// command it names on the same line (`the --out of diffseg segment`).
    #[test]
    fn help_names_only_flags_that_exist() {
        let commands = subcommands();
        let flags_of = |command: &clap::Command| -> Vec<String> {
            command
                .get_arguments()
                .filter_map(|argument| argument.get_long())
                .map(|long| format!("--{long}"))
                .collect()
        };
        for command in &commands {
            let help = command.clone().render_long_help().to_string();
            for line in help.lines() {
                let mut known = flags_of(command);
                for other in &commands {
                    if line.contains(&format!("diffseg {}", other.get_name())) {
                        known.extend(flags_of(other));
                    }
                }
                for flag in flags_in(line) {
                    assert!(
                        known.contains(&flag),
                        "`diffseg {} --help` names {flag}, which it does not have: {line}",
                        command.get_name()
                    );
                }
            }
        }
    }

    /// The `--long-flag` words of a line.
    fn flags_in(line: &str) -> Vec<String> {
        line.match_indices("--")
            .filter(|(start, _)| *start == 0 || !line.as_bytes()[start - 1].is_ascii_alphanumeric())
            .map(|(start, _)| {
                let rest = &line[start + 2..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .unwrap_or(rest.len());
                format!("--{}", &rest[..end])
            })
            .filter(|flag| flag.len() > 2 && flag.as_bytes()[2].is_ascii_lowercase())
            .collect()
    }
}
