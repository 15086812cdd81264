//! `diffseg fetch [--model ID]`: download the weights segmentation needs into
//! the Hugging Face cache (fp16 variants where the repository has them).

use std::process::ExitCode;

use diffseg::weights::{cached_snapshot, fetch_weights, needed_files, DEFAULT_MODEL};

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model id (`CompVis/stable-diffusion-v1-4` is the paper's).
    #[arg(long, default_value = DEFAULT_MODEL, value_name = "ID")]
    pub model: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(snapshot) = cached_snapshot(&args.model) {
        println!(
            "{} is already in the Hugging Face cache: {}",
            args.model,
            snapshot.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("downloading {} ({})", args.model, needed_files().join(", "));
    let snapshot = fetch_weights(&args.model, true)?;
    println!("{} is in {}", args.model, snapshot.display());
    Ok(ExitCode::SUCCESS)
}
