//! `diffseg`: unsupervised zero-shot segmentation with Stable Diffusion.

mod attention;
mod coco;
mod cut;
mod eval;
mod exit;
mod fetch;
mod info;
mod jobs;
mod label_outputs;
mod merge;
mod options;
mod progress;
mod segment;

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "diffseg", version, about, long_about = None, after_help = exit::HELP)]
struct Cli {
    /// Log what happens to stderr: -v for the main steps (weights resolved, model loaded,
    /// what the run will do), -vv also for details (each batch's and image's timings).
    /// RUST_LOG, when set, chooses instead (e.g. RUST_LOG=diffseg=debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Segment images (files or folders) into label PNGs, overlays and JSON.
    Segment(segment::Args),
    /// Write an image's aggregated self-attention maps as safetensors.
    Attention(attention::Args),
    /// Merge self-attention maps (from `diffseg attention` or elsewhere) into segments.
    Merge(merge::Args),
    /// Segment saved features (`[h, w, c]`) with DiffCut's recursive normalized cut.
    Cut(cut::Args),
    /// Score segmentations on COCO-Stuff-27 or Cityscapes with the paper's protocol.
    Eval(eval::Args),
    /// Download Stable Diffusion weights.
    Fetch(fetch::Args),
    /// Print the compiled-in backends, the devices found and where weights were found.
    Info(info::Args),
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
        Command::Cut(args) => cut::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Fetch(args) => fetch::run(args),
        Command::Info(args) => info::run(args),
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
