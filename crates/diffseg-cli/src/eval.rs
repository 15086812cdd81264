//! `diffseg eval`: score segmentations on COCO-Stuff-27 or Cityscapes with the
//! paper's protocol (method §7), from a folder of predicted label PNGs or by
//! running the model.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use diffseg::eval::{self, Dataset, EvalReport, Sample, Scores};
use indicatif::{ProgressBar, ProgressStyle};

/// Score segmentations with the paper's protocol.
///
/// Predictions are label PNGs (8- or 16-bit greyscale, pixel = segment index)
/// named `<image stem>.png`: `000000000139.png` for COCO,
/// `frankfurt_000000_000294_leftImg8bit.png` for Cityscapes (directly in the
/// folder, or in `<city>/`), as `diffseg segment` names them. Exact protocol:
/// 512×512, the centre square crop resized to 512. A label map at its image's own
/// size (what `diffseg segment` writes) is centre-cropped and resized like the
/// labels: close to the protocol, not exact, and the report says so.
#[derive(clap::Args)]
pub struct Args {
    /// The benchmark: `cocostuff27` or `cityscapes`.
    #[arg(long)]
    dataset: Dataset,
    /// The dataset root in its official layout. COCO: `val2017/*.jpg` and
    /// `stuffthingmaps_trainval2017/val2017/*.png` (or `annotation_val2017/`).
    /// Cityscapes: `leftImg8bit/val/<city>/*.png` and `gtFine/val/<city>/*_gtFine_labelIds.png`.
    #[arg(long)]
    root: PathBuf,
    /// Score the label PNGs in this folder instead of running the model.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Merging threshold τ when running the model (default: 1.1 for COCO-Stuff-27,
    /// 0.9 for Cityscapes, as in the paper).
    #[arg(long)]
    tau: Option<f32>,
    /// Write the report as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the report as a Markdown table here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Score only the first N images.
    #[arg(long)]
    limit: Option<usize>,
    /// Score only the image ids listed in this file (one image file stem per line),
    /// instead of the curated COCO-Stuff-27 list or every Cityscapes val image.
    #[arg(long)]
    list: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut samples = match &args.list {
        Some(list) => args.dataset.samples_from_list(&args.root, list)?,
        None => args.dataset.samples(&args.root)?,
    };
    let available = samples.len();
    if let Some(limit) = args.limit {
        samples.truncate(limit);
    }
    if samples.is_empty() {
        anyhow::bail!("nothing to score: --limit 0");
    }
    eval::check_labels(&samples)?;

    let Some(folder) = &args.predictions else {
        anyhow::bail!(
            "running the model from `diffseg eval` is not available in this build yet: \
             segment the images with `diffseg segment` and pass --predictions DIR"
        );
    };
    let folder_scores = score_folder(args.dataset, &samples, folder)?;
    let mut report = EvalReport::new(
        args.dataset,
        &folder_scores.scores,
        samples.len(),
        format!("label PNGs in {}", folder.display()),
    );
    report.resized_predictions = folder_scores.resized;
    finish(&args, &report, available)
}

/// Scores a folder of predictions with a progress bar showing running ACC and mIoU.
fn score_folder(
    dataset: Dataset,
    samples: &[Sample],
    folder: &Path,
) -> anyhow::Result<eval::FolderScores> {
    let progress = progress_bar(samples.len());
    let scores = eval::score_predictions(dataset, samples, folder, |_, running| {
        progress.set_message(running_metrics(running));
        progress.inc(1);
    });
    progress.finish_and_clear();
    Ok(scores?)
}

/// A progress bar on standard error (hidden when it is not a terminal).
fn progress_bar(length: usize) -> ProgressBar {
    let progress = ProgressBar::new(length as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} images  {msg}  [{elapsed_precise} < {eta}]",
        )
        .expect("a valid progress template"),
    );
    progress
}

/// "ACC 72.50  mIoU 43.60" for the running sums.
fn running_metrics(scores: &Scores) -> String {
    let percent = |value: Option<f64>| value.map_or("n/a".into(), |v| format!("{:.2}", v * 100.0));
    format!(
        "ACC {}  mIoU {}",
        percent(scores.accuracy()),
        percent(scores.mean_iou())
    )
}

/// Writes the requested report files and prints the Markdown report.
fn finish(args: &Args, report: &EvalReport, available: usize) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.out {
        report
            .write_json(path)
            .with_context(|| format!("writing the JSON report {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        report
            .write_markdown(path)
            .with_context(|| format!("writing the Markdown report {}", path.display()))?;
    }
    print!("{}", report.to_markdown());
    if report.resized_predictions > 0 {
        eprintln!(
            "note: {} predictions were at their image's size and were cropped and resized \
             like the labels (close to the protocol, not exact: exact predictions are 512×512)",
            report.resized_predictions
        );
    }
    eprintln!(
        "scored {} of {} images of {} ({} listed)",
        report.images_scored,
        report.images_requested,
        args.dataset.title(),
        available
    );
    Ok(ExitCode::SUCCESS)
}
