//! `diffseg attention IMAGE --out attn.safetensors`: the image's self-attention
//! averaged over heads and layers per resolution (`self_attn.64` … `self_attn.8`,
//! f32 `[r*r, r*r]`), the input of `diffseg merge`.

use std::path::PathBuf;

use anyhow::Context;

use crate::exit::Exit;
use crate::options::ModelArgs;

/// Write an image's aggregated self-attention maps as safetensors.
///
/// The self-attention of one UNet pass over the image, averaged over heads and
/// layers per resolution (`self_attn.64` … `self_attn.8`, f32 `[r*r, r*r]`),
/// with where the image was placed in the model's input: the input of
/// `diffseg merge`, which can then try merging options without running the
/// model again.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  diffseg attention photo.jpg --out photo.safetensors
  diffseg merge photo.safetensors --out labels.png --tau 0.8
  diffseg attention photo.jpg --out photo.safetensors --backend wgpu --precision f16")]
pub struct Args {
    /// The image.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// The safetensors file to write (a file there that diffseg did not write is
    /// never replaced).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    // Before any work: never over the image, never over a file not diffseg's.
    let mut inputs = std::collections::HashMap::new();
    if let Some(real) = diffseg::resolved_path(&args.image) {
        inputs.insert(real, args.image.clone());
    }
    diffseg::refuse_input_as_output(&args.out, &inputs)?;
    diffseg::refuse_foreign(
        &args.out,
        "a self-attention file",
        diffseg::is_diffseg_attention,
    )?;
    let image = args.model.image_limits().open(&args.image)?;
    // The method does not affect the attention: the default only satisfies the builder.
    let segmenter = args
        .model
        .builder(&diffseg::Method::default())
        .build()
        .context("cannot load the model")?;
    let attention = segmenter.attention(&image)?;
    attention.save_safetensors(&args.out)?;
    let shapes: Vec<String> = attention
        .maps
        .iter()
        .map(|map| {
            format!(
                "{} [{cells}, {cells}]",
                map.tensor_name(),
                cells = map.height * map.width
            )
        })
        .collect();
    eprintln!("wrote {}: {}", args.out.display(), shapes.join(", "));
    Ok(Exit::Done)
}
