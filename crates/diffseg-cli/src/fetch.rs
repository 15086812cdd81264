//! `diffseg fetch [--model ID] [--revision REV] [--variant fp16|full]`:
//! download the weights segmentation needs into the Hugging Face cache, from
//! the Hub or the mirror `HF_ENDPOINT` names (docs/user-guide.md).

use std::time::Duration;

use diffseg::weights::{ConsoleProgress, DownloadProgress, FileVariant, HubModel, DEFAULT_MODEL};

use crate::exit::Exit;
use crate::options::HubArgs;

/// Download the weights segmentation needs into the Hugging Face cache.
///
/// The files go where `huggingface_hub` keeps them (`HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), from the Hub or the mirror
/// `HF_ENDPOINT` names, with the token of `HF_TOKEN` or `huggingface-cli login`.
/// A download cut off is resumed by the next run; files already there are kept.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  diffseg fetch                     # the default model, full precision
  diffseg fetch --variant fp16      # half the download: for diffseg segment --precision f16
  diffseg fetch --model CompVis/stable-diffusion-v1-4 --revision main
  HF_ENDPOINT=https://hf-mirror.example diffseg fetch")]
pub struct Args {
    /// Hugging Face model id (`CompVis/stable-diffusion-v1-4` is the paper's).
    #[arg(long, default_value = DEFAULT_MODEL, value_name = "ID")]
    pub model: String,
    #[command(flatten)]
    pub hub: HubArgs,
    /// Weight files to download where the model repository has both: full
    /// (what `diffseg segment` reads by default, at f32) or fp16 (half the
    /// download; what it reads with `--precision f16`).
    #[arg(long, default_value = "full", value_name = "fp16|full")]
    pub variant: FileVariant,
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
        .with_variant(args.variant);
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
