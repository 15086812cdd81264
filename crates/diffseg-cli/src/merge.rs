//! `diffseg merge`: saved self-attention in, label PNG (and JSON) out: a thin
//! caller of [`SelfAttention::load_safetensors`] and [`SelfAttention::merge_on`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use burn::tensor::backend::Backend;
use diffseg::{BackendKind, BackendTask, MergeOptions, Segmentation, SegmentsFile, SelfAttention};

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
    /// Label PNG to write (pixel value = segment index; 8-bit up to 256 segments, else 16-bit).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write the segments (areas, bounding boxes, COCO RLE masks) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
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

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = args.merge.to_options();
    options.validate()?;
    if args.size == Some(0) {
        bail!("--size must be at least 1");
    }
    refuse_unsafe_outputs(&args)?;
    let mut attention = SelfAttention::load_safetensors(&args.attention)?;
    if args.size.is_some() {
        attention.placement = None;
    }
    let segmentation = args.backend.run(Merge {
        attention,
        options,
        side: args.size.unwrap_or(DEFAULT_SIDE),
    })??;
    write_outputs(&segmentation, &args.out, args.json.as_deref())?;
    println!(
        "{}: {} segments, {}x{} labels",
        args.out.display(),
        segmentation.segment_count(),
        segmentation.width(),
        segmentation.height()
    );
    Ok(ExitCode::SUCCESS)
}

/// Refuses, before any work, outputs that are the input or each other, and
/// files in their place that diffseg did not write.
fn refuse_unsafe_outputs(args: &Args) -> anyhow::Result<()> {
    let mut inputs = HashMap::new();
    if let Some(real) = diffseg::resolved_path(&args.attention) {
        inputs.insert(real, args.attention.clone());
    }
    diffseg::refuse_input_as_output(&args.out, &inputs)?;
    diffseg::refuse_foreign(&args.out, "a label PNG", diffseg::is_diffseg_png)?;
    if let Some(json) = &args.json {
        diffseg::refuse_input_as_output(json, &inputs)?;
        if diffseg::resolved_path(json)
            .is_some_and(|json| Some(json) == diffseg::resolved_path(&args.out))
        {
            bail!("--out and --json are the same file {}", json.display());
        }
        diffseg::refuse_foreign(json, "a segments JSON", diffseg::is_json_of::<SegmentsFile>)?;
    }
    Ok(())
}

/// Writes the label PNG and the JSON as one: both are written whole before
/// either is renamed into place, so a failure leaves the previous ones.
fn write_outputs(
    segmentation: &Segmentation,
    out: &Path,
    json: Option<&Path>,
) -> anyhow::Result<()> {
    let mut staged = vec![diffseg::stage_file(
        out,
        &segmentation.encode_label_png(out)?,
    )?];
    if let Some(json) = json {
        let description = serde_json::to_vec_pretty(&segmentation.describe(None))?;
        staged.push(diffseg::stage_file(json, &description)?);
    }
    Ok(diffseg::commit_in_order(staged)?)
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
