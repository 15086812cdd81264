//! `diffseg cut`: saved features in, label PNG (and JSON) out, with DiffCut's recursive
//! normalized cut (`diffseg_core::cut_features`). Runs on the CPU: the cut is small dense
//! linear algebra on one `pixels x pixels` matrix.

use std::path::PathBuf;

use anyhow::Context;
use diffseg::Features;
use diffseg_core::{CutOptions, DEFAULT_CUT_ALPHA, DEFAULT_CUT_TAU, DEFAULT_MASK_SIZE};

use crate::exit::{self, Exit};
use crate::label_outputs::{self, LabelOutputs};
use crate::options::Tau;

/// Segment saved features (`[h, w, c]`) with DiffCut's recursive normalized cut.
///
/// Runs only DiffCut's cut (no model, no weights): the affinity of the features'
/// cosine similarities raised to α, two-way normalized cuts applied recursively
/// while a region's best cut is below τ, then each pixel of the MASK_SIZE square
/// assigned to the closest segment (docs/method.md §9). With the placement metadata
/// `diffseg features` writes, the labels are mapped onto the image's own pixels, as
/// `diffseg segment` maps its labels; without it (features from elsewhere, e.g.
/// DiffCut's own code) the label map is the MASK_SIZE square.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  diffseg features photo.jpg --out features.safetensors
  diffseg cut features.safetensors --out labels.png
  diffseg cut features.safetensors --tau 0.5 --alpha 10 --out labels.png --json labels.json
  diffseg cut features.safetensors --tau auto --out labels.png
  diffseg cut features.safetensors --pamr --image photo.jpg --median --out labels.png")]
pub struct Args {
    /// Safetensors file holding `features`: one self-attention layer's output, `[h, w, c]`
    /// f32 (or f16/bf16), row-major.
    pub features: PathBuf,
    /// Label PNG to write, at the image's size when the features say where the image
    /// lies, else MASK_SIZE×MASK_SIZE (pixel value = segment index; an 8-bit
    /// palette PNG in the overlay's colours up to 256 segments, else 16-bit grey).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write segment count, areas and bounding boxes as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Indent the `--json` file for reading by eye (by default it is compact, one line).
    #[arg(long, requires = "json")]
    pub pretty: bool,
    /// Split a region while its best normalized cut is below this (0 < τ ≤ 1), or `auto`:
    /// DiffCut's eigengap variant chooses the number of segments itself (no τ; α is then
    /// its own: it tries 1, 5, 10 and 15).
    #[arg(long, default_value_t = Tau::Value(DEFAULT_CUT_TAU), value_name = "TAU|auto")]
    pub tau: Tau,
    /// Exponent sharpening the affinities (> 0).
    #[arg(long, default_value_t = DEFAULT_CUT_ALPHA)]
    pub alpha: f32,
    /// Side of the square label map.
    #[arg(long, default_value_t = DEFAULT_MASK_SIZE)]
    pub mask_size: usize,
    /// Refine the labels with PAMR on the image (needs --image), as DiffCut's evaluation
    /// does when asked to refine.
    #[arg(long, requires = "image")]
    pub pamr: bool,
    /// Smooth the labels last with a 3×3 median filter (DiffCut's evaluation applies it
    /// after PAMR).
    #[arg(long)]
    pub median: bool,
    /// The image the features came from, for --pamr (its model-input square, or the
    /// whole image when the features have no placement, resized to the label map).
    #[arg(long)]
    pub image: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    // With `auto` τ is unused; the default stands in so that the other options are checked.
    let (tau, auto) = match args.tau {
        Tau::Value(tau) => (tau, false),
        Tau::Auto => (DEFAULT_CUT_TAU, true),
    };
    let options = CutOptions::new(tau, args.alpha, args.mask_size, args.pamr, args.median)
        .map_err(exit::usage)?
        .with_auto_tau(auto);
    let outputs = LabelOutputs {
        png: &args.out,
        json: args.json.as_deref(),
        json_style: label_outputs::json_style(args.pretty),
    };
    outputs.refuse_unsafe(std::iter::once(&args.features).chain(&args.image))?;
    let features = Features::load_safetensors(&args.features)
        .map_err(|error| exit::input_failed(error.into()))?;
    let image = match (&args.image, args.pamr) {
        (Some(path), true) => Some(diffseg::open_image(path)?),
        _ => None,
    };
    let segmentation = features
        .cut(&options, image.as_ref())
        .with_context(|| format!("cutting {}", args.features.display()))?;
    outputs.write(&segmentation)?;
    Ok(Exit::Done)
}
