//! `diffseg features IMAGE --out F.safetensors`: DiffCut's features of an image
//! (the hooked self-attention's output, `features` f32 `[h, w, c]`), the input of
//! `diffseg cut`.

use std::path::PathBuf;

use anyhow::Context;
use diffseg::{FeatureOptions, DEFAULT_FEATURE_SEED, DIFFCUT_INPUT_SIZE, DIFFCUT_TIMESTEP};

use crate::exit::{self, Exit};
use crate::options::ModelArgs;

/// Write an image's DiffCut features as safetensors.
///
/// The image is fitted and resized to INPUT_SIZE, encoded by the VAE, noised to
/// timestep 50 with noise from SEED, and run through the UNet up to the
/// self-attention DiffCut reads (the last one of the second-to-last down block,
/// before its residual add): the tensor `features` f32 `[h, w, c]` (32×32×1280 for
/// SD 1.x at 1024 pixels), with where the image was placed in the model's input.
/// `diffseg cut` then segments it without the model, labels at the image's size.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  diffseg features photo.jpg --out photo.features.safetensors
  diffseg cut photo.features.safetensors --tau 0.5 --out labels.png
  diffseg features photo.jpg --out photo.features.safetensors --input-size 512 --seed 7")]
pub struct Args {
    /// The image.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// The safetensors file to write (a file there that diffseg did not write is
    /// never replaced).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    /// Side of the model's square input in pixels: a multiple of 8 up to 2048
    /// (DiffCut's SD 1.4 setting is 1024; the features are 1/32 of it on SD 1.x).
    #[arg(long, default_value_t = DIFFCUT_INPUT_SIZE, value_name = "N")]
    pub input_size: usize,
    /// Seed of the noise added to the latent (the same seed gives the same features).
    #[arg(long, default_value_t = DEFAULT_FEATURE_SEED, value_name = "S")]
    pub seed: u64,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    let options =
        FeatureOptions::new(args.input_size, DIFFCUT_TIMESTEP, args.seed).map_err(exit::usage)?;
    // Before any work: never over the image, never over a file not diffseg's.
    let mut inputs = std::collections::HashMap::new();
    if let Some(real) = diffseg::resolved_path(&args.image) {
        inputs.insert(real, args.image.clone());
    }
    diffseg::refuse_input_as_output(&args.out, &inputs)?;
    // Every safetensors file diffseg writes carries its mark, features included.
    diffseg::refuse_foreign(&args.out, "a features file", diffseg::is_diffseg_attention)?;
    let image = args.model.image_limits().open(&args.image)?;
    // The method does not affect the features: the default only satisfies the builder.
    let segmenter = args
        .model
        .builder(&diffseg::Method::default())
        .build()
        .context("cannot load the model")?;
    let features = segmenter.features(&image, &options)?;
    features.save_safetensors(&args.out)?;
    let map = &features.map;
    eprintln!(
        "wrote {}: features [{}, {}, {}]",
        args.out.display(),
        map.height(),
        map.width(),
        map.channels()
    );
    Ok(Exit::Done)
}
