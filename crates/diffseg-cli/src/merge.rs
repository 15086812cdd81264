//! `diffseg merge`: self-attention maps (safetensors) in, label PNG (and JSON) out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use diffseg::{BackendKind, BackendTask};
use diffseg_core::{segment_attention, AttentionMaps, MergeOptions, Segmentation};
use safetensors::{Dtype, SafeTensors};

/// Latent sides of SD 1.x at 512 px, checked smallest first so small files fail fast.
const SIDES: [usize; 4] = [8, 16, 32, 64];

/// How far a row's sum may stray from 1: fp16 attention summed over 4096 keys is off by ~1e-3.
const ROW_SUM_TOLERANCE: f32 = 1e-2;

#[derive(clap::Args)]
pub struct Args {
    /// Safetensors file with `self_attn.64`, `self_attn.32`, `self_attn.16` and `self_attn.8`
    /// (f32 or f16; `[r*r, r*r]`, or `[heads, r*r, r*r]` with heads averaged).
    pub attention: PathBuf,
    /// Label PNG to write (pixel value = segment index; 8-bit up to 256 segments, else 16-bit).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write segment count, areas and bounding boxes as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// KL threshold: one value, or one per iteration separated by commas.
    #[arg(long, value_delimiter = ',', default_values_t = [1.1f32])]
    pub tau: Vec<f32>,
    /// Merge iterations.
    #[arg(long, default_value_t = 3)]
    pub iterations: usize,
    /// Anchors per side of the anchor grid.
    #[arg(long, default_value_t = 16)]
    pub anchors: usize,
    /// Refine the segments with k-means.
    #[arg(long)]
    pub refine: bool,
    /// Side of the (square) label map.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Backend: cpu, wgpu, wgpu:N (adapter N of `diffseg info`), cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub backend: BackendKind,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = MergeOptions {
        tau: args.tau.clone(),
        anchors: args.anchors,
        iterations: args.iterations,
        refine: args.refine,
    };
    options.validate()?;
    if args.size == 0 {
        bail!("--size must be at least 1");
    }
    let maps = read_attention(&args.attention)?;
    let segmentation = args.backend.run(Merge {
        maps,
        options,
        size: args.size,
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

/// Writes the label PNG and the JSON; if the second fails, the first is removed again.
fn write_outputs(
    segmentation: &Segmentation,
    out: &Path,
    json: Option<&Path>,
) -> anyhow::Result<()> {
    segmentation.save_label_png(out)?;
    if let Some(json) = json {
        if let Err(error) = segmentation.save_json(json) {
            let _ = std::fs::remove_file(out);
            return Err(error.into());
        }
    }
    Ok(())
}

/// One resolution's head-averaged map `[r², r²]`, checked on the host.
struct HostMap {
    side: usize,
    probs: Vec<f32>,
}

/// Reads and checks `self_attn.{8,16,32,64}`: present, shaped `[r², r²]` or `[heads, r², r²]`,
/// f32 or f16, finite, non-negative, rows summing to 1.
fn read_attention(path: &Path) -> anyhow::Result<Vec<HostMap>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    // SAFETY: the mapping is read-only and dropped before this returns. Like
    // every memory-mapped reader (safetensors, candle, burn-store), it assumes
    // nobody truncates or rewrites the file meanwhile.
    let bytes = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let tensors = SafeTensors::deserialize(&bytes)
        .map_err(|error| anyhow!("{}: not a safetensors file ({error})", path.display()))?;
    SIDES
        .iter()
        .map(|&side| {
            let name = format!("self_attn.{side}");
            read_map(&tensors, &name, side)
                .with_context(|| format!("{}: tensor {name}", path.display()))
        })
        .collect()
}

fn read_map(tensors: &SafeTensors, name: &str, side: usize) -> anyhow::Result<HostMap> {
    let view = tensors.tensor(name).map_err(|_| anyhow!("missing"))?;
    let cells = side * side;
    let heads = match view.shape() {
        [rows, columns] if *rows == cells && *columns == cells => 1,
        [heads, rows, columns] if *heads > 0 && *rows == cells && *columns == cells => *heads,
        shape => bail!("shape {shape:?}, expected [{cells}, {cells}] or [heads, {cells}, {cells}]"),
    };
    let data = view.data();
    let probs = match view.dtype() {
        Dtype::F32 => head_mean(data, cells, heads, |b: &[u8; 4]| f32::from_le_bytes(*b)),
        Dtype::F16 => head_mean(data, cells, heads, |b: &[u8; 2]| {
            half::f16::from_le_bytes(*b).to_f32()
        }),
        dtype => bail!("dtype {dtype:?}, expected F32 or F16"),
    }?;
    for (row, values) in probs.chunks_exact(cells).enumerate() {
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        if (sum as f32 - 1.0).abs() > ROW_SUM_TOLERANCE {
            bail!("row {row} is not a distribution: it sums to {sum:.6}");
        }
    }
    Ok(HostMap { side, probs })
}

/// The mean over the heads of `[heads, cells, cells]` stored values, decoded
/// by `decode` from `WIDTH`-byte chunks, in one pass; an error names
/// the first non-finite value, else the first negative one.
fn head_mean<const WIDTH: usize>(
    data: &[u8],
    cells: usize,
    heads: usize,
    decode: impl Fn(&[u8; WIDTH]) -> f32 + Copy,
) -> anyhow::Result<Vec<f32>> {
    let values = || {
        data.chunks_exact(WIDTH)
            .map(move |b| decode(b.try_into().expect("chunks of WIDTH")))
    };
    let mut probs = vec![0f32; cells * cells];
    let mut valid = true;
    for head in data.chunks_exact(cells * cells * WIDTH) {
        for (mean, b) in probs.iter_mut().zip(head.chunks_exact(WIDTH)) {
            let value = decode(b.try_into().expect("chunks of WIDTH"));
            valid &= value.is_finite() && value >= 0.0;
            *mean += value / heads as f32;
        }
    }
    if !valid {
        if let Some((index, value)) = values().enumerate().find(|(_, v)| !v.is_finite()) {
            bail!("holds a non-finite value ({value}) at flat index {index}");
        }
        if let Some((index, value)) = values().enumerate().find(|&(_, v)| v < 0.0) {
            bail!("holds a negative value ({value}) at flat index {index}");
        }
    }
    Ok(probs)
}

/// The merge stage on the chosen backend.
struct Merge {
    maps: Vec<HostMap>,
    options: MergeOptions,
    size: usize,
}

impl BackendTask for Merge {
    type Output = Result<Segmentation, diffseg_core::Error>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let maps = self
            .maps
            .into_iter()
            .map(|map| {
                let cells = map.side * map.side;
                let data = TensorData::new(map.probs, [cells, cells]).convert::<B::FloatElem>();
                (Tensor::<B, 2>::from_data(data, &device), map.side, map.side)
            })
            .collect();
        let maps = AttentionMaps::from_maps(maps)?;
        segment_attention(&maps, &self.options, self.size, self.size)
    }
}
