//! `diffseg cut`: saved features in, label PNG (and JSON) out, with DiffCut's recursive
//! normalized cut (`diffseg_core::cut_features`). Runs on the CPU: the cut is small dense
//! linear algebra on one `pixels x pixels` matrix.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use diffseg::Segmentation;
use diffseg_core::{
    cut_features, CutOptions, FeatureMap, PlanarImage, DEFAULT_CUT_ALPHA, DEFAULT_CUT_TAU,
    DEFAULT_MASK_SIZE,
};
use safetensors::{Dtype, SafeTensors};

use crate::exit::{self, Exit};
use crate::label_outputs::{self, LabelOutputs};

/// The tensor the features file must hold.
const FEATURES_TENSOR: &str = "features";

/// Segment saved features (`[h, w, c]`) with DiffCut's recursive normalized cut.
///
/// Runs only DiffCut's cut (no model, no weights): the affinity of the features'
/// cosine similarities raised to α, two-way normalized cuts applied recursively
/// while a region's best cut is below τ, then each pixel of the MASK_SIZE square
/// assigned to the closest segment (docs/method.md §9). Writing the features from an
/// image is not in diffseg yet: they come from elsewhere (e.g. DiffCut's own code).
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  diffseg cut features.safetensors --out labels.png
  diffseg cut features.safetensors --tau 0.5 --alpha 10 --out labels.png --json labels.json
  diffseg cut features.safetensors --tau auto --out labels.png
  diffseg cut features.safetensors --pamr --image photo.jpg --median --out labels.png")]
pub struct Args {
    /// Safetensors file holding `features`: one self-attention layer's output, `[h, w, c]`
    /// f32 (or f16/bf16), row-major.
    pub features: PathBuf,
    /// Label PNG to write, MASK_SIZE×MASK_SIZE (pixel value = segment index; an 8-bit
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
    /// The image the features came from, for --pamr (resized to the label map).
    #[arg(long)]
    pub image: Option<PathBuf>,
}

/// `--tau`: a threshold, or `auto` for the eigengap variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tau {
    Value(f32),
    Auto,
}

impl std::str::FromStr for Tau {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Tau::Auto);
        }
        text.parse()
            .map(Tau::Value)
            .map_err(|_| format!("`{text}` is neither a number nor `auto`"))
    }
}

impl std::fmt::Display for Tau {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tau::Value(tau) => write!(f, "{tau}"),
            Tau::Auto => f.write_str("auto"),
        }
    }
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
    let features = load_features(&args.features).map_err(exit::input_failed)?;
    let pixels = match (&args.image, args.pamr) {
        (Some(path), true) => Some(load_planar_rgb(path)?),
        _ => None,
    };
    let image = pixels
        .as_ref()
        .map(|(values, height, width)| PlanarImage::new(values, 3, *height, *width))
        .transpose()?;
    let segmentation: Segmentation = cut_features(&features, &options, image.as_ref())
        .with_context(|| format!("cutting {}", args.features.display()))?
        .into();
    outputs.write(&segmentation)?;
    Ok(Exit::Done)
}

/// Reads the `features` tensor `[h, w, c]` of a safetensors file.
fn load_features(path: &Path) -> anyhow::Result<FeatureMap> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let tensors = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let view = tensors.tensor(FEATURES_TENSOR).with_context(|| {
        format!(
            "{}: no tensor `{FEATURES_TENSOR}` [h, w, c]",
            path.display()
        )
    })?;
    let shape = view.shape().to_vec();
    let [height, width, channels] = shape[..] else {
        bail!(
            "{}: `{FEATURES_TENSOR}` has shape {shape:?}, expected [h, w, c]",
            path.display()
        );
    };
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => bail!(
            "{}: `{FEATURES_TENSOR}` is {other:?}, expected f32, f16 or bf16",
            path.display()
        ),
    };
    FeatureMap::new(values, height, width, channels)
        .with_context(|| format!("{}: `{FEATURES_TENSOR}`", path.display()))
}

/// The image as planar RGB in [0, 1] (as DiffCut reads it), with its height and width.
fn load_planar_rgb(path: &Path) -> anyhow::Result<(Vec<f32>, usize, usize)> {
    let rgb = diffseg::open_image(path)?.to_rgb8();
    Ok((
        diffseg::planar_rgb(&rgb),
        rgb.height() as usize,
        rgb.width() as usize,
    ))
}
