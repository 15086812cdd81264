//! `diffseg merge`: saved self-attention in, label PNG (and JSON) out: a thin
//! caller of [`SelfAttention::load_safetensors`] and [`SelfAttention::merge_on`].

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use diffseg::{BackendKind, BackendTask, MergeOptions, Segmentation, SelfAttention};

use crate::exit::{self, Exit};
use crate::label_outputs::{self, LabelOutputs};
use crate::options::MergeArgs;

/// The label map's side when neither `--size` nor the file says where the
/// attention came from: SD 1.x's input.
const DEFAULT_SIDE: usize = 512;

/// Merge self-attention maps (from `diffseg attention` or elsewhere) into segments.
///
/// Runs only the merging of DiffSeg (no model, no weights): the KL-divergence
/// merging of anchor proposals at threshold τ, then the label map at the image's
/// size. Cheap enough to sweep τ over one saved attention file.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  diffseg attention photo.jpg --out photo.safetensors
  diffseg merge photo.safetensors --out labels.png --json segments.json
  for tau in 0.6 0.8 1.1; do diffseg merge photo.safetensors --out labels-$tau.png --tau $tau; done
  diffseg merge maps.safetensors --out labels.png --size 256")]
pub struct Args {
    /// Safetensors file of `self_attn.{side}` (or `self_attn.{h}x{w}`) maps, as
    /// `diffseg attention` writes (f32, f16 or bf16; `[cells, cells]`, or
    /// `[heads, cells, cells]` with heads averaged). Any grid sizes.
    pub attention: PathBuf,
    /// Label PNG to write (pixel value = segment index; an 8-bit palette PNG in the overlay's
    /// colours up to 256 segments, else 16-bit grey).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write the segments (areas, bounding boxes, COCO RLE masks) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Indent the `--json` file for reading by eye (by default it is compact, one line).
    #[arg(long, requires = "json")]
    pub pretty: bool,
    #[command(flatten)]
    pub merge: MergeArgs,
    /// Label a SIZE×SIZE square instead. Without it the labels cover the image
    /// `diffseg attention` read, at its own size, exactly as `diffseg segment`
    /// gives them; a file without that record gives a 512×512 square.
    #[arg(long, value_name = "SIZE")]
    pub size: Option<usize>,
    /// Backend: cpu, wgpu, wgpu:N (adapter N of `diffseg info`), wgpu:NAME (the first adapter
    /// whose description contains NAME), cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_name = "BACKEND")]
    pub backend: BackendKind,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    let options = args.merge.merge_options(None)?;
    if args.size == Some(0) {
        return Err(exit::usage("--size must be at least 1"));
    }
    let outputs = LabelOutputs {
        png: &args.out,
        json: args.json.as_deref(),
        json_style: label_outputs::json_style(args.pretty),
    };
    outputs.refuse_unsafe([&args.attention])?;
    let mut attention = SelfAttention::load_safetensors(&args.attention)?;
    if args.size.is_some() {
        attention.placement = None;
    }
    let segmentation = args.backend.run(Merge {
        attention,
        options,
        side: args.size.unwrap_or(DEFAULT_SIDE),
    })??;
    outputs.write(&segmentation)?;
    Ok(Exit::Done)
}

/// The merge on the chosen backend.
struct Merge {
    attention: SelfAttention,
    options: MergeOptions,
    side: usize,
}

impl BackendTask for Merge {
    type Output = Result<Segmentation, diffseg::Error>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        self.attention
            .merge_on::<B>(&self.options, &device, self.side)
    }
}
