//! `diffseg eval`: score segmentations on COCO-Stuff-27 or Cityscapes with the
//! paper's protocol (docs/method.md §7), from a folder of predicted label PNGs or by
//! running the model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use diffseg::eval::{self, Dataset, EvalReport, Matching, Protocol, Sample, Scores};
use diffseg::{
    DiffCutSettings, Fit, MergeOptions, Method, Segmenter, Vocabulary, VocabularyPreset,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::exit::{self, Exit};
use crate::options::{MergeArgs, MethodArgs, ModelArgs};

/// Score segmentations on COCO-Stuff-27 or Cityscapes with the paper's protocol.
///
/// With `--predictions DIR` the label PNGs in DIR are scored. Without it the model
/// segments each image (centre crop, as the protocol says: `--fit` is ignored) with
/// `--method` and its label PNG is kept in the `--cache` folder, so an interrupted
/// evaluation resumes where it stopped. DiffSeg labels the model's 512×512 input.
/// DiffCut labels, with `--protocol diffcut`, the 128×128 mask of the image cropped as
/// eval_diffcut.py crops it (side min(W, H) − 1, resized to --input-size), and with the
/// paper's protocol the image's own pixels, as `diffseg segment` does.
///
/// Predictions are label PNGs (8-bit palette or 8/16-bit greyscale, pixel = segment
/// index) named `<image stem>.png`:
/// `000000000139.png` for COCO, `frankfurt_000000_000294_leftImg8bit.png` for
/// Cityscapes (directly in the folder, or in `<city>/`), as `diffseg segment`
/// names them. Exact protocol: 512×512, the centre square crop resized to 512. A
/// label map at its image's own size (what `diffseg segment` writes) is
/// centre-cropped and resized like the labels: close to the protocol, not exact,
/// and the report says so.
///
/// With `--semantic` segments are not matched: each is named from the dataset's 27 class
/// names with the model's own cross-attention (docs/method.md §10) and counts for that class
/// (the open-vocabulary protocol). Predictions are then class maps (pixel = class index).
///
/// The report (pixel accuracy and mean IoU after each image's segments are
/// matched to classes, Hungarian, as in the paper; IoU per class) is printed as
/// Markdown, and written as JSON (`--out`) and Markdown (`--markdown`) when asked.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  diffseg eval --dataset cocostuff27 --root /data/coco --backend cuda --out coco.json
  diffseg eval --dataset cityscapes --root /data/cityscapes --tau 0.9 --markdown table.md
  diffseg eval --dataset cocostuff27 --root /data/coco --predictions results/
  diffseg eval --dataset cocostuff27 --root /data/coco --method diffcut --protocol diffcut
  diffseg eval --dataset cocostuff27 --root /data/coco --predictions masks128/ --protocol diffcut
  diffseg eval --dataset cocostuff27 --root /data/coco --semantic     # segments named
  diffseg eval --dataset cocostuff27 --root /data/coco --limit 50      # a quick check
  diffseg eval --dataset cocostuff27 --root /data/coco --list ids.txt --cache cache/")]
pub struct Args {
    /// The benchmark: `cocostuff27` (the 2,175 val2017 images of the paper's curated
    /// COCO-Stuff-27 list) or `cityscapes` (its val images).
    #[arg(long, value_name = "cocostuff27|cityscapes")]
    dataset: Dataset,
    /// The dataset root in its official layout. COCO: `val2017/*.jpg` and
    /// `stuffthingmaps_trainval2017/val2017/*.png` (or `annotation_val2017/`).
    /// Cityscapes: `leftImg8bit/val/<city>/*.png` and `gtFine/val/<city>/*_gtFine_labelIds.png`.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Score the label PNGs in DIR (e.g. the `--out` of `diffseg segment`)
    /// instead of running the model: `<image stem>.png` per image, directly in DIR
    /// or in a sub-folder per city; all must be there (checked before scoring).
    #[arg(long, value_name = "DIR")]
    predictions: Option<PathBuf>,
    /// When running the model: keep its label PNGs in DIR (default:
    /// `diffseg-eval-<dataset>` in the current folder) and reuse the ones already
    /// there, so an interrupted evaluation resumes. A cache made with other model
    /// or merging settings is refused (its settings are recorded in it).
    #[arg(long, value_name = "DIR", conflicts_with = "predictions")]
    cache: Option<PathBuf>,
    /// How predictions meet the ground truth: `paper` (DiffSeg's: 512×512, the centre
    /// square resized) or `diffcut` (DiffCut's eval_diffcut.py: 128×128, the labels cropped
    /// to min(width, height) − 1 and resized through the model's input, --input-size,
    /// 1024 by default; predictions are 128×128 label PNGs, in --predictions or made by
    /// --method diffcut). Both match each image's segments to classes (Hungarian).
    #[arg(long, default_value = "paper", value_name = "paper|diffcut", value_parser = ["paper", "diffcut"])]
    protocol: String,
    /// Score by name (the open-vocabulary protocol): the model names each segment from the
    /// dataset's 27 class names (the `coco-stuff-27` or `cityscapes-27` vocabulary) and its
    /// pixels count for that class, with no matching. With --predictions, the PNGs are class
    /// maps: pixel = class index 0–26, anything else no class. DiffSeg and the paper's
    /// protocol only.
    #[arg(long)]
    semantic: bool,
    /// With --semantic: the CLIP tokenizer folder (vocab.json, merges.txt) that reads the
    /// class names (default: the model's tokenizer/; a single-file checkpoint needs this).
    #[arg(long, value_name = "PATH", requires = "semantic")]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// The merging options; `--tau` left out is the paper's for the dataset (1.1 for
    /// COCO-Stuff-27, 0.9 for Cityscapes) with DiffSeg, 0.5 with DiffCut.
    #[command(flatten)]
    merge: MergeArgs,
    #[command(flatten)]
    method: MethodArgs,
    /// Images per model pass when running the model.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Write the report as JSON to FILE: accuracy, mean IoU, per class its IoU,
    /// TP, FP and FN, where the predictions came from, how many images were scored.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write the report as Markdown to FILE (what is printed): accuracy and mean
    /// IoU, then a table of the classes.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Score only the first N images of the list (in its order), for a quick
    /// check; the report says how many of how many were scored.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Score only the images whose ids FILE lists, one image file stem per line
    /// (`000000000139`), instead of the curated COCO-Stuff-27 list or every
    /// Cityscapes val image.
    #[arg(long, value_name = "FILE")]
    list: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    let mut samples = match &args.list {
        Some(list) => args.dataset.samples_from_list(&args.root, list)?,
        None => args.dataset.samples(&args.root)?,
    };
    let available = samples.len();
    if let Some(limit) = args.limit {
        samples.truncate(limit);
    }
    if samples.is_empty() {
        return Err(exit::usage("nothing to score: --limit 0"));
    }
    eval::check_labels(&samples)?;
    let inputs = input_files(&args, &samples);
    refuse_unsafe_reports(&args, &inputs)?;

    let method = match &args.predictions {
        Some(_) => None,
        None => Some(
            args.method
                .method(&args.merge, Some(args.dataset.default_tau()))?,
        ),
    };
    let protocol = match args.protocol.as_str() {
        "diffcut" => Protocol::DiffCut {
            input_size: match &method {
                Some(Method::DiffCut(options)) => options.features.input_size(),
                _ => args.method.input_size.unwrap_or(eval::DIFFCUT_INPUT_SIZE),
            },
        },
        _ => Protocol::Paper,
    };
    if args.semantic {
        check_semantic(method.as_ref(), protocol)?;
    }
    let (scores, resized, source) = match &args.predictions {
        Some(folder) if args.semantic => {
            let folder_scores = score_class_folder(args.dataset, &samples, folder)?;
            let source = format!("class maps in {}", folder.display());
            (folder_scores.scores, folder_scores.resized, source)
        }
        Some(folder) => {
            let folder_scores = score_folder(protocol, args.dataset, &samples, folder)?;
            let source = match protocol {
                Protocol::Paper => format!("label PNGs in {}", folder.display()),
                _ => format!(
                    "label PNGs in {}, scored with DiffCut's protocol ({side}×{side})",
                    folder.display(),
                    side = protocol.side()
                ),
            };
            (folder_scores.scores, folder_scores.resized, source)
        }
        None => {
            let method = method.expect("made when there is no --predictions");
            check_protocol(&method, protocol)?;
            run_model(&args, &samples, &inputs, &method, protocol)?
        }
    };
    let mut report = EvalReport::new(args.dataset, &scores, samples.len(), source);
    report.resized_predictions = resized;
    if args.semantic {
        report.matching = Matching::Names;
    }
    finish(&args, &report, available)
}

/// Every file the evaluation reads (images, labels, the id list), resolved,
/// with the path as given: outputs must be none of them.
fn input_files(args: &Args, samples: &[Sample]) -> HashMap<PathBuf, PathBuf> {
    samples
        .iter()
        .flat_map(|sample| [&sample.image, &sample.label])
        .chain(&args.list)
        .filter_map(|path| Some((diffseg::resolved_path(path)?, path.clone())))
        .collect()
}

/// Refuses, before any work, a report path that is an input, and a file in
/// its place that is not such a report of diffseg's.
fn refuse_unsafe_reports(args: &Args, inputs: &HashMap<PathBuf, PathBuf>) -> anyhow::Result<()> {
    if let Some(path) = &args.out {
        diffseg::refuse_input_as_output(path, inputs)?;
        diffseg::refuse_foreign(path, "a JSON report", diffseg::is_json_of::<EvalReport>)?;
    }
    if let Some(path) = &args.markdown {
        diffseg::refuse_input_as_output(path, inputs)?;
        let is_report = |path: &Path| {
            std::fs::read_to_string(path).is_ok_and(|text| text.starts_with(MARKDOWN_TITLE))
        };
        diffseg::refuse_foreign(path, "a Markdown report", is_report)?;
    }
    Ok(())
}

/// How every Markdown report of diffseg's begins.
const MARKDOWN_TITLE: &str = "# DiffSeg evaluation on ";

/// Refuses, before any work, a protocol the method's labels do not fit: DiffCut's
/// compares the 128×128 labels DiffCut assigns, which DiffSeg does not make.
fn check_protocol(method: &Method, protocol: Protocol) -> anyhow::Result<()> {
    match (method, protocol) {
        (Method::DiffSeg(_), Protocol::DiffCut { .. }) => Err(exit::usage(
            "--protocol diffcut scores DiffCut's 128×128 labels: run it with --method diffcut, \
             or score the label PNGs of --predictions DIR",
        )),
        (Method::DiffCut(options), Protocol::DiffCut { .. })
            if options.cut.mask_size() != eval::DIFFCUT_EVAL_SIDE =>
        {
            Err(exit::usage(format!(
                "--protocol diffcut compares {side}×{side} labels: --mask-size must be {side}",
                side = eval::DIFFCUT_EVAL_SIDE
            )))
        }
        _ => Ok(()),
    }
}

/// Refuses `--semantic` where nothing can be named: DiffCut's pass stops before most
/// cross-attention layers, and DiffCut's protocol compares DiffCut's labels.
fn check_semantic(method: Option<&Method>, protocol: Protocol) -> anyhow::Result<()> {
    if let Some(Method::DiffCut(_)) = method {
        return Err(exit::usage(
            "--semantic names segments from DiffSeg's cross-attention: DiffCut cannot name \
             them (its pass stops before most cross-attention layers); use --method diffseg",
        ));
    }
    if protocol != Protocol::Paper {
        return Err(exit::usage(
            "--semantic scores on the paper's 512×512 grid: leave out --protocol diffcut",
        ));
    }
    Ok(())
}

/// The vocabulary of `dataset`'s class names, in class order.
fn class_vocabulary(dataset: Dataset) -> Vocabulary {
    let preset = VocabularyPreset::ALL
        .into_iter()
        .find(|preset| preset.dataset() == dataset)
        .expect("every dataset has a preset of its class names");
    Vocabulary::preset(preset)
}

/// What the predictions in a cache folder were made with; a cache made otherwise
/// is refused rather than mixed in. A DiffSeg cache keeps the fields it had before
/// DiffCut existed (its merging options at the top level), so older caches still
/// resume.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct CacheSettings {
    dataset: String,
    model: String,
    weights: Option<PathBuf>,
    precision: String,
    #[serde(flatten)]
    merge: Option<MergeOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    diffcut: Option<DiffCutSettings>,
    /// `paper` or `diffcut`: the grid the cached labels are on.
    #[serde(default = "paper_protocol")]
    protocol: String,
    /// Whether the cache holds class maps (`--semantic`) instead of segment labels.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    semantic: bool,
}

/// The protocol of a cache that does not record one (made before DiffCut's existed).
fn paper_protocol() -> String {
    Protocol::Paper.name().to_string()
}

/// The file in a cache folder that records its [`CacheSettings`].
const CACHE_SETTINGS: &str = "diffseg-eval-settings.json";

/// Creates the cache folder and records the settings, or checks that an existing
/// cache was made with the same ones.
fn open_cache(folder: &Path, settings: &CacheSettings) -> anyhow::Result<()> {
    std::fs::create_dir_all(folder)
        .with_context(|| format!("creating the prediction cache {}", folder.display()))?;
    let path = folder.join(CACHE_SETTINGS);
    let wanted = serde_json::to_string_pretty(settings)? + "\n";
    match std::fs::read_to_string(&path) {
        Ok(found) => {
            let found: CacheSettings = serde_json::from_str(&found)
                .with_context(|| format!("reading the cache settings {}", path.display()))?;
            if &found != settings {
                return Err(exit::usage(format!(
                    "the prediction cache {} was made with other settings ({}): \
                     pass another --cache folder, or delete this one",
                    folder.display(),
                    serde_json::to_string(&found)?
                )));
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Ok(diffseg::write_atomically(&path, wanted.as_bytes())?)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Segments every image not yet in the cache, keeping each prediction there, and
/// scores all of them: the scores, how many predictions were at their image's size
/// (DiffCut under the paper's protocol), and where they came from.
fn run_model(
    args: &Args,
    samples: &[Sample],
    inputs: &HashMap<PathBuf, PathBuf>,
    method: &Method,
    protocol: Protocol,
) -> anyhow::Result<(Scores, usize, String)> {
    let folder = args
        .cache
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("diffseg-eval-{}", args.dataset.name())));
    let (merge, diffcut) = method.recorded_options();
    let settings = CacheSettings {
        dataset: args.dataset.name().to_string(),
        model: args.model.model.clone(),
        weights: args.model.weights.clone(),
        precision: args.model.precision.to_string(),
        merge,
        diffcut,
        protocol: protocol.name().to_string(),
        semantic: args.semantic,
    };
    let cached = |sample: &Sample| folder.join(sample.prediction_file_name());
    for sample in samples {
        diffseg::refuse_input_as_output(&cached(sample), inputs)?;
    }
    open_cache(&folder, &settings)?;
    let missing: Vec<Sample> = samples
        .iter()
        .filter(|s| !cached(s).is_file())
        .cloned()
        .collect();
    // Bad images fail now, not after loading the model and segmenting the others.
    eval::check_images(&missing)?;
    // The model is loaded only when something is left to segment.
    let segmenter = if !missing.is_empty() {
        eprintln!(
            "segmenting {} of {} images (the rest are in {})",
            missing.len(),
            samples.len(),
            folder.display()
        );
        let builder = args.model.builder(method).fit(Fit::CenterCrop);
        let builder = match (args.semantic, &args.tokenizer) {
            (false, _) => builder,
            (true, None) => builder.vocabulary(class_vocabulary(args.dataset)),
            (true, Some(tokenizer)) => builder
                .vocabulary(class_vocabulary(args.dataset))
                .tokenizer(tokenizer),
        };
        Some(builder.build()?)
    } else {
        None
    };
    let semantic = args.semantic.then_some(args.dataset);
    let progress = progress_bar(samples.len());
    let mut scores = Scores::default();
    let mut resized = 0;
    for chunk in samples.chunks(args.batch_size as usize) {
        if let Some(segmenter) = &segmenter {
            let to_segment: Vec<&Sample> = chunk.iter().filter(|s| !cached(s).is_file()).collect();
            segment_into_cache(segmenter, protocol, &to_segment, &folder, semantic)?;
        }
        for sample in chunk {
            let path = cached(sample);
            let counts = match method {
                Method::DiffSeg(_) => {
                    score_model_square(args.dataset, sample, path, args.semantic)?
                }
                Method::DiffCut(_) => {
                    let (counts, was_resized) =
                        eval::score_prediction_file(protocol, args.dataset, sample, &path)?;
                    resized += usize::from(was_resized);
                    counts
                }
            };
            scores.add(&counts);
            progress.set_message(running_metrics(&scores));
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    let model = args
        .model
        .weights
        .as_ref()
        .map_or(args.model.model.clone(), |w| w.display().to_string());
    let source = match method {
        Method::DiffSeg(options) => format!(
            "{model} (τ {:?}, M {}, N {}, refine {}{}), cached in {}",
            options.tau,
            options.anchors,
            options.iterations,
            options.refine,
            if args.semantic {
                ", segments named from the class names"
            } else {
                ""
            },
            folder.display()
        ),
        Method::DiffCut(options) => format!(
            "{model} (DiffCut: {}, α {}, input {}, seed {}, mask {}, PAMR {}, median {}; \
             {} protocol), cached in {}",
            match options.cut.auto_tau() {
                true => "τ auto".to_string(),
                false => format!("τ {}", options.cut.tau()),
            },
            options.cut.alpha(),
            options.features.input_size(),
            options.features.seed(),
            options.cut.mask_size(),
            options.cut.pamr(),
            options.cut.median(),
            protocol.name(),
            folder.display()
        ),
    };
    Ok((scores, resized, source))
}

/// Scores a cached DiffSeg prediction: on the grid the model saw (512 for SD 1.x),
/// the cache's square; with `semantic`, a class map scored by name.
fn score_model_square(
    dataset: Dataset,
    sample: &Sample,
    path: PathBuf,
    semantic: bool,
) -> anyhow::Result<eval::ClassCounts> {
    let prediction = eval::decode_prediction_png(&path)?;
    if prediction.width != prediction.height {
        return Err(diffseg::Error::PredictionSize {
            path,
            width: prediction.width,
            height: prediction.height,
            expected: "a square label map on the model's input grid".into(),
        }
        .into());
    }
    let side = prediction.width as usize;
    let score = match semantic {
        true => eval::score_sample_by_class,
        false => eval::score_sample,
    };
    Ok(score(dataset, sample, &prediction.segments, side)?)
}

/// Segments `samples` as one batch and writes each label map into the cache folder
/// as `<image stem>.png` (atomically). DiffSeg labels its square input grid (the
/// centre crop: the protocol's 512×512 for SD 1.x). DiffCut labels, with its protocol,
/// its mask-size square of the image cropped as eval_diffcut.py crops it, and with the
/// paper's the image's own pixels. With `semantic` (the dataset), each segment's name gives
/// its pixels' class, and the class map is kept instead.
fn segment_into_cache(
    segmenter: &Segmenter,
    protocol: Protocol,
    samples: &[&Sample],
    folder: &Path,
    semantic: Option<Dataset>,
) -> anyhow::Result<()> {
    if samples.is_empty() {
        return Ok(());
    }
    let images = samples
        .iter()
        .map(|sample| diffseg::open_image(&sample.image))
        .collect::<Result<Vec<_>, _>>()?;
    let context = || format!("segmenting {}", samples[0].image.display());
    let segmentations = match (segmenter.method(), protocol) {
        (Method::DiffSeg(_), _) => segmenter
            .segment_model_input_batch(&images)
            .with_context(context)?,
        (Method::DiffCut(_), Protocol::DiffCut { .. }) => {
            let crops = samples
                .iter()
                .zip(&images)
                .map(|(sample, image)| eval::diffcut_crop(sample, image))
                .collect::<Result<Vec<_>, _>>()?;
            segmenter
                .segment_model_input_batch(&crops)
                .with_context(context)?
        }
        (Method::DiffCut(_), _) => segmenter.segment_batch(&images).with_context(context)?,
    };
    for (sample, segmentation) in samples.iter().zip(&segmentations) {
        let path = folder.join(sample.prediction_file_name());
        match semantic {
            Some(dataset) => {
                let classes = eval::class_map(dataset, segmentation)
                    .expect("a segmenter with a vocabulary names every segment");
                let (width, height) = (segmentation.width() as u32, segmentation.height() as u32);
                eval::save_class_png(&path, width, height, &classes)?;
            }
            None => segmentation.save_label_png(&path)?,
        }
    }
    Ok(())
}

/// Scores a folder of predictions with a progress bar showing running ACC and mIoU.
fn score_folder(
    protocol: Protocol,
    dataset: Dataset,
    samples: &[Sample],
    folder: &Path,
) -> anyhow::Result<eval::FolderScores> {
    let progress = progress_bar(samples.len());
    let scores = eval::score_predictions_with(protocol, dataset, samples, folder, |_, running| {
        progress.set_message(running_metrics(running));
        progress.inc(1);
    });
    progress.finish_and_clear();
    Ok(scores?)
}

/// Scores a folder of class maps by name with a progress bar showing running ACC and mIoU.
fn score_class_folder(
    dataset: Dataset,
    samples: &[Sample],
    folder: &Path,
) -> anyhow::Result<eval::FolderScores> {
    let progress = progress_bar(samples.len());
    let scores = eval::score_class_predictions(dataset, samples, folder, |_, running| {
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
fn finish(args: &Args, report: &EvalReport, available: usize) -> anyhow::Result<Exit> {
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
    Ok(Exit::Done)
}
