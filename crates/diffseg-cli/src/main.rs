//! `diffseg`: unsupervised zero-shot segmentation with Stable Diffusion.

mod attention;
mod eval;
mod fetch;
mod info;
mod jobs;
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
#[command(name = "diffseg", version, about, long_about = None)]
struct Cli {
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
    /// Score segmentations on COCO-Stuff-27 or Cityscapes with the paper's protocol.
    Eval(eval::Args),
    /// Download Stable Diffusion weights.
    Fetch(fetch::Args),
    /// Print the compiled-in backends, the devices found and where weights were found.
    Info(info::Args),
    /// Write DIR/index.html: a gallery of the results in DIR that opens without a server.
    View(view::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Segment(args) => segment::run(args),
        Command::Attention(args) => attention::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Fetch(args) => fetch::run(args),
        Command::Info(args) => info::run(args),
        Command::View(args) => view::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            // One line per cause: "error: <what> : <why>".
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
