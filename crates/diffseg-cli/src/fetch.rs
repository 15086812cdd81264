//! `diffseg fetch [--model ID] [--revision REV] [--variant fp16|full]`:
//! download the weights segmentation needs into the Hugging Face cache, from
//! the Hub or the mirror `HF_ENDPOINT` names (docs/user-guide.md).

use std::time::Duration;

use diffseg::weights::{ConsoleProgress, DownloadProgress, HubModel, DEFAULT_MODEL};

use crate::exit::Exit;
use crate::options::HubArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model id (`CompVis/stable-diffusion-v1-4` is the paper's).
    #[arg(long, default_value = DEFAULT_MODEL, value_name = "ID")]
    pub model: String,
    /// Revision and variant; without --variant, the full-precision files
    /// that `--precision f32` (the default) reads.
    #[command(flatten)]
    pub hub: HubArgs,
}

/// Console progress that also counts the files downloaded.
#[derive(Default)]
struct Counted {
    console: ConsoleProgress,
    files: usize,
}

impl DownloadProgress for Counted {
    fn start(&mut self, file: &str, size: u64) {
        self.console.start(file, size);
    }
    fn advance(&mut self, bytes: u64) {
        self.console.advance(bytes);
    }
    fn finish(&mut self, file: &str) {
        self.files += 1;
        self.console.finish(file);
    }
    fn retry(&mut self, file: &str, reason: &str, delay: Duration) {
        self.console.retry(file, reason, delay);
    }
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    let model = HubModel::new(&args.model)
        .with_revision(&args.hub.revision)
        .with_variant(args.hub.variant.unwrap_or_default());
    let mut progress = Counted::default();
    let snapshot = model.fetch(&mut progress)?;
    let model = format!("{} ({}, {} files)", model.id, model.revision, model.variant);
    match progress.files {
        0 => println!(
            "{model} is already in the Hugging Face cache: {}",
            snapshot.display()
        ),
        files => println!(
            "{model}: {files} files downloaded into {}",
            snapshot.display()
        ),
    }
    Ok(Exit::Done)
}
