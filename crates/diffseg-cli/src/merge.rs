//! `diffseg merge`: saved self-attention in, label PNG (and JSON) out: a thin
//! caller of [`SelfAttention::load_safetensors`] and [`SelfAttention::merge_on`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use diffseg::{
    BackendKind, BackendTask, JsonStyle, MergeOptions, Segmentation, SegmentsFile, SelfAttention,
};

use crate::exit::{self, Exit};
use crate::options::MergeArgs;

/// The label map's side when neither `--size` nor the file says where the
/// attention came from: SD 1.x's input.
const DEFAULT_SIDE: usize = 512;

#[derive(clap::Args)]
pub struct Args {
    /// Safetensors file of `self_attn.{side}` (or `self_attn.{h}x{w}`) maps, as
    /// `diffseg attention` writes (f32, f16 or bf16; `[cells, cells]`, or
    /// `[heads, cells, cells]` with heads averaged). Any grid sizes.
    pub attention: PathBuf,
    /// Label PNG to write (pixel value = segment index; an 8-bit palette PNG in the overlay's
    /// colours up to 256 segments, else 16-bit grey).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write segment count, areas and bounding boxes as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Indent the `--json` file for reading by eye (by default it is compact, one line).
    #[arg(long, requires = "json")]
    pub pretty: bool,
    #[command(flatten)]
    pub merge: MergeArgs,
    /// Label a SIZE×SIZE square instead. Without it the labels cover the image
    /// `diffseg attention` read, at its own size, exactly as `diffseg segment`
    /// gives them; a file without that record gives a 512×512 square.
    #[arg(long)]
    pub size: Option<usize>,
    /// Backend: cpu, wgpu, wgpu:N (adapter N of `diffseg info`), wgpu:NAME (the first adapter
    /// whose description contains NAME), cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub backend: BackendKind,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    let options = args.merge.checked_options()?;
    if args.size == Some(0) {
        return Err(exit::usage("--size must be at least 1"));
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
    let json_style = if args.pretty {
        JsonStyle::Pretty
    } else {
        JsonStyle::Compact
    };
    write_outputs(&segmentation, &args.out, args.json.as_deref(), json_style)?;
    println!(
        "{}: {} segments, {}x{} labels",
        args.out.display(),
        segmentation.segment_count(),
        segmentation.width(),
        segmentation.height()
    );
    Ok(Exit::Done)
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
            return Err(exit::usage(format!(
                "--out and --json are the same file {}",
                json.display()
            )));
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
    json_style: JsonStyle,
) -> anyhow::Result<()> {
    let mut staged = vec![diffseg::stage_file(
        out,
        &segmentation.encode_label_png(out)?,
    )?];
    if let Some(json) = json {
        let description = json_style.encode(&segmentation.describe(None))?;
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
