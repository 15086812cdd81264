//! `diffseg segment PATH... --out DIR`: segment image files and folders.
//!
//! For each image, in DIR (mirroring the sub-folders of a folder argument):
//! `<stem>.png` (label map), `<stem>.overlay.png` (segments tinted over the
//! image) and `<stem>.json` (size, the settings used, segments with area, box
//! and COCO RLE mask, and the other two files' lengths and SHA-256). The three
//! are written whole and synced before any is renamed into place, the JSON
//! last; an image whose files all match its JSON, which records this run's
//! settings, is skipped unless `--overwrite`, so an interrupted run resumes
//! where it stopped, a damaged result is redone and a run with other settings
//! redoes it. No output may be an input (refused before any work), and a file
//! in DIR that diffseg did not write is never replaced: that image fails. A
//! bad image is reported and skipped; the exit status is non-zero if any
//! failed. `--shard I/N` takes one share of the images, for running one folder
//! on many machines.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use diffseg::weights::{FoundWeights, ResolvedWeights, WeightsOrigin};
use diffseg::{
    check_result, write_json_atomically, ResultState, SegmentSettings, SegmenterBuilder,
};
use diffseg::{Segmentation, StageTimes};
use image::DynamicImage;

use crate::jobs::{collect_jobs, read_file_list, Job, Shard};
use crate::options::{MergeArgs, ModelArgs};
use crate::progress::Progress;

/// Segment images (files or folders) into label PNGs, overlays and JSON.
///
/// For each image, in the output folder (mirroring the sub-folders of a folder
/// argument): NAME.png, the label map (pixel value = segment number);
/// NAME.overlay.png, the segments tinted over the image; NAME.json, the size,
/// the settings used and each segment's area, box and COCO RLE mask. An image
/// whose results are already there, whole and made with the same settings, is
/// skipped, so an interrupted run resumes where it stopped. A file in the output
/// folder that diffseg did not write is never replaced. A bad image is reported
/// and skipped; the exit status is non-zero if any failed.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  diffseg segment photo.jpg --out results/
  diffseg segment photos/ --out results/ --backend cuda --batch-size 8
  diffseg segment photos/ --out results/ --tau 0.9 --fit center-crop
  find photos -name '*.jpg' | diffseg segment --files-from - --out results/
  diffseg segment photos/ --out results/ --shard SLURM_ARRAY_TASK_ID/16 --summary s.json
  diffseg segment photos/ --out results/ --dry-run    # what is done, what is left

docs/user-guide.md explains the outputs; docs/large-runs.md, runs over many machines.")]
pub struct Args {
    /// Image files and folders (searched recursively for .png, .jpg, .jpeg,
    /// .tif, .tiff, .webp, .bmp).
    #[arg(required_unless_present = "files_from", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Also segment the files listed in LIST, one path per line (`-`: standard
    /// input); their results mirror the folders in the listed paths.
    #[arg(long, value_name = "LIST")]
    pub files_from: Option<PathBuf>,
    /// Output folder (never read as input, even inside an input folder).
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
    /// Take share I of N of the images (positions I, I+N, ... of the sorted
    /// list); I and N are numbers or names of environment variables holding
    /// them, e.g. SLURM_ARRAY_TASK_ID/16 or JOB_COMPLETION_INDEX/8.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Redo images whose results already exist.
    #[arg(long)]
    pub overwrite: bool,
    /// Keep results made with other settings (model, revision, precision,
    /// fit, merge options, diffseg version) instead of redoing them; they are
    /// reported.
    #[arg(long, conflicts_with = "overwrite")]
    pub keep_outdated: bool,
    /// Segment a truncated or corrupt image that still decodes (the decoder
    /// fills in what is missing), with a warning, instead of refusing it.
    #[arg(long)]
    pub allow_truncated: bool,
    /// List the images of this run (or shard) with their state (todo, done,
    /// outdated) on standard output and stop, loading nothing; the exit status
    /// says whether listing found problems.
    #[arg(long)]
    pub dry_run: bool,
    /// Images per model pass (more use more memory; on a GPU, more are faster).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// When stderr is not a terminal, write a progress line every N images
    /// (and at least once a minute).
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub log_every: u64,
    /// Print errors only: no progress, no notes, no final tally.
    #[arg(long, short)]
    pub quiet: bool,
    /// Write a summary of the run (done, skipped, failed with reasons,
    /// settings, timing) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Write the wall time of each stage (seconds, JSON) to FILE.
    #[arg(long, value_name = "FILE")]
    pub timings: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub merge: MergeArgs,
}

/// Where a job stands before the run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// No results.
    Todo,
    /// Whole results with this run's settings.
    Done,
    /// Whole results with other or unknown settings: what differs.
    Outdated(String),
    /// Results that are not whole (a file missing, cut short or changed, no
    /// checksums): what is wrong. Redone.
    Damaged(String),
    /// A file diffseg did not write is where a result goes: never replaced.
    Blocked(String),
}

/// What differs between the settings recorded with a result and this run's;
/// `None` if nothing. A revision still to be downloaded is not compared.
fn settings_difference(
    recorded: &SegmentSettings,
    expected: &SegmentSettings,
    revision_pending: bool,
) -> Option<String> {
    let mut differences = Vec::new();
    let mut differ = |name: &str, recorded: String, expected: String| {
        if recorded != expected {
            differences.push(format!("{name} {recorded} (now {expected})"));
        }
    };
    let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "unknown".into());
    differ("model", recorded.model.clone(), expected.model.clone());
    if !revision_pending {
        differ(
            "revision",
            text(&recorded.revision),
            text(&expected.revision),
        );
    }
    differ(
        "precision",
        recorded.precision.clone(),
        expected.precision.clone(),
    );
    differ("fit", recorded.fit.clone(), expected.fit.clone());
    differ(
        "merge options",
        format!("{:?}", recorded.merge),
        format!("{:?}", expected.merge),
    );
    differ(
        "diffseg version",
        recorded.version.clone(),
        expected.version.clone(),
    );
    (!differences.is_empty()).then(|| differences.join(", "))
}

/// Whether `job` has whole results, made with `expected` settings, or a file
/// that is not diffseg's in the way.
fn job_state(job: &Job, expected: &SegmentSettings, revision_pending: bool) -> State {
    match check_result(&job.result_paths()) {
        ResultState::Missing => State::Todo,
        ResultState::Damaged(reason) => State::Damaged(reason),
        ResultState::Foreign { path, reason } => {
            State::Blocked(diffseg::Error::NotOurs { path, reason }.to_string())
        }
        ResultState::Whole(description) => match description.settings {
            None => State::Outdated("no settings recorded".into()),
            Some(recorded) => match settings_difference(&recorded, expected, revision_pending) {
                None => State::Done,
                Some(difference) => State::Outdated(difference),
            },
        },
        // A state a newer library may add: not known to be whole, so redone.
        other => State::Damaged(format!("not known to be whole ({other:?})")),
    }
}

/// Refuses the run, before any work, when an output path is an input: each
/// job's results, the summary and the timings against every image.
fn refuse_inputs_as_outputs(jobs: &[Job], args: &Args) -> anyhow::Result<()> {
    let inputs: HashMap<PathBuf, PathBuf> = jobs
        .iter()
        .map(|job| (job.real.clone(), job.input.clone()))
        .collect();
    let reports = [&args.summary, &args.timings];
    let outputs = jobs
        .iter()
        .flat_map(Job::outputs)
        .chain(reports.into_iter().flatten().cloned());
    let refusals: Vec<String> = outputs
        .filter_map(|output| diffseg::refuse_input_as_output(&output, &inputs).err())
        .map(|error| error.to_string())
        .collect();
    if let Some(first) = refusals.first() {
        let more = match refusals.len() {
            1 => String::new(),
            n => format!(" (and {} more such outputs)", n - 1),
        };
        anyhow::bail!("{first}{more}; nothing was done");
    }
    Ok(())
}

/// Refuses to replace the report at `path` when a file is there that is not
/// such a report of diffseg's (`keys`: the top-level keys it has).
fn refuse_foreign_report(path: &Path, what: &str, keys: &[&str]) -> anyhow::Result<()> {
    let is_report = |path: &Path| {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|value| keys.iter().all(|key| value.get(key).is_some()))
    };
    Ok(diffseg::refuse_foreign(path, what, is_report)?)
}

/// This run's settings, known before loading the model, and the weights
/// they were read from, located and opened once for the whole run by the
/// builder that loads the model (so at its revision); `None` when the
/// weights are still to be downloaded (then the revision is not compared).
fn expected_settings(
    args: &Args,
    builder: &SegmenterBuilder,
) -> Result<(SegmentSettings, Option<ResolvedWeights>), diffseg::Error> {
    let located = builder.locate_weights()?;
    // Weights still to be downloaded come from the hub; the revision is what
    // the download will find.
    let pending = FoundWeights {
        path: PathBuf::new(),
        origin: WeightsOrigin::Downloaded,
    };
    let found = located.as_ref().map_or(&pending, ResolvedWeights::found);
    let settings = SegmentSettings::new(
        found,
        &args.model.model,
        args.model.precision,
        args.model.fit,
        &args.merge.to_options(),
    );
    Ok((settings, located))
}

/// The `--summary` report.
#[derive(serde::Serialize)]
struct Summary {
    /// The diffseg version that ran.
    version: &'static str,
    /// The settings results are made (and compared) with.
    settings: SegmentSettings,
    /// The share of the images this run took, if sharded.
    shard: Option<Shard>,
    /// Images listed before sharding (the same on every shard of one run).
    listed: usize,
    /// Images in this run (this shard's share).
    images: usize,
    /// Images segmented now.
    done: Vec<PathBuf>,
    /// Images already segmented with these settings.
    skipped: Vec<PathBuf>,
    /// Images kept with results of other settings (`--keep-outdated`).
    outdated_kept: Vec<Outdated>,
    /// Images whose results were damaged (not whole), redone: with why.
    damaged_redone: Vec<Failure>,
    /// Damaged images segmented anyway (`--allow-truncated`).
    damaged_accepted: Vec<Failure>,
    /// Images and paths that failed, with why.
    failed: Vec<Failure>,
    /// Wall time of the run in seconds.
    seconds: f64,
    /// Images segmented per minute.
    images_per_minute: f64,
}

#[derive(serde::Serialize)]
struct Failure {
    path: PathBuf,
    reason: String,
}

#[derive(serde::Serialize)]
struct Outdated {
    path: PathBuf,
    difference: String,
}

/// Writes a job's three results as one: none replaces a previous one before
/// all are written whole, and the JSON, which records the others' checksums,
/// goes last.
pub fn write_results(
    job: &Job,
    image: &DynamicImage,
    segmentation: &Segmentation,
    settings: &SegmentSettings,
) -> Result<(), diffseg::Error> {
    let name = job
        .input
        .file_name()
        .map(|name| name.to_string_lossy().into_owned());
    segmentation.save_result(image, &job.result_paths(), name, Some(settings.clone()))
}

/// The `--timings` report: seconds per stage, summed over the run.
#[derive(serde::Serialize)]
struct Timings {
    images: usize,
    load: f64,
    clip: f64,
    decode: f64,
    prepare: f64,
    vae: f64,
    unet: f64,
    merge: f64,
    outputs: f64,
    total: f64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (mut decode, mut outputs) = (Duration::ZERO, Duration::ZERO);
    let mut stages = StageTimes::default();
    let note = |text: String| {
        if !args.quiet {
            eprintln!("{text}");
        }
    };
    let listed = match &args.files_from {
        Some(list) => read_file_list(list)
            .with_context(|| format!("cannot read the file list {}", list.display()))?,
        None => Vec::new(),
    };
    let listing = collect_jobs(&args.paths, &listed, &args.out);
    let mut failed: Vec<Failure> = Vec::new();
    for (path, reason) in listing.problems {
        eprintln!("error: {}: {reason}", path.display());
        failed.push(Failure { path, reason });
    }
    for text in listing.notes {
        note(format!("note: {text}"));
    }
    let listed_count = listing.jobs.len();
    let jobs = match args.shard {
        Some(shard) => {
            let share = shard.select(listing.jobs);
            note(format!(
                "shard {}/{}: {} of {listed_count} images",
                shard.index,
                shard.count,
                share.len()
            ));
            share
        }
        None => listing.jobs,
    };
    let images = jobs.len();
    refuse_inputs_as_outputs(&jobs, &args)?;
    if let Some(path) = &args.summary {
        refuse_foreign_report(path, "a run summary", &["version", "settings", "failed"])?;
    }
    if let Some(path) = &args.timings {
        refuse_foreign_report(path, "a timings report", &["images", "total"])?;
    }
    let builder = args.model.builder(&args.merge);
    let (expected, located) = expected_settings(&args, &builder)?;
    let revision_pending = located.is_none();
    let states: Vec<State> = jobs
        .iter()
        .map(|job| match job_state(job, &expected, revision_pending) {
            State::Blocked(why) => State::Blocked(why),
            _ if args.overwrite => State::Todo,
            state => state,
        })
        .collect();
    if args.dry_run {
        for (job, state) in jobs.iter().zip(&states) {
            match state {
                State::Todo => println!("todo\t{}", job.input.display()),
                State::Done => println!("done\t{}", job.input.display()),
                State::Outdated(why) => println!("outdated\t{}\t{why}", job.input.display()),
                State::Damaged(why) => println!("damaged\t{}\t{why}", job.input.display()),
                State::Blocked(why) => println!("blocked\t{}\t{why}", job.input.display()),
            }
        }
        let blocked = states
            .iter()
            .any(|state| matches!(state, State::Blocked(_)));
        return Ok(if failed.is_empty() && !blocked {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let (mut todo, mut skipped, mut outdated_kept) = (Vec::new(), Vec::new(), Vec::new());
    let mut damaged_redone: Vec<Failure> = Vec::new();
    let mut redone = 0usize;
    for (job, state) in jobs.into_iter().zip(states) {
        match state {
            State::Todo => todo.push(job),
            State::Blocked(reason) => {
                eprintln!("error: {}: {reason}", job.input.display());
                failed.push(Failure {
                    path: job.input,
                    reason,
                });
            }
            State::Damaged(reason) => {
                note(format!(
                    "note: {}: its results are damaged ({reason}); redoing them",
                    job.input.display()
                ));
                damaged_redone.push(Failure {
                    path: job.input.clone(),
                    reason,
                });
                todo.push(job)
            }
            State::Done => skipped.push(job.input),
            State::Outdated(difference) if args.keep_outdated => outdated_kept.push(Outdated {
                path: job.input,
                difference,
            }),
            State::Outdated(_) => {
                redone += 1;
                todo.push(job)
            }
        }
    }
    if !skipped.is_empty() {
        note(format!(
            "{} of {images} images already segmented with these settings in {} (skipped; --overwrite redoes them)",
            skipped.len(),
            args.out.display()
        ));
    }
    if !outdated_kept.is_empty() {
        note(format!(
            "{} of {images} images have results made with other settings, kept (--keep-outdated), e.g. {}: {}",
            outdated_kept.len(),
            outdated_kept[0].path.display(),
            outdated_kept[0].difference
        ));
    }
    if redone > 0 {
        note(format!(
            "{redone} of {images} images have results made with other settings; redoing them (--keep-outdated keeps them)"
        ));
    }
    let mut done: Vec<PathBuf> = Vec::new();
    let mut damaged_accepted: Vec<Failure> = Vec::new();
    let mut settings = expected.clone();
    if !todo.is_empty() {
        let weights = match &args.model.weights {
            Some(path) => format!("weights {}", path.display()),
            None => format!("model {}", args.model.model),
        };
        note(format!(
            "loading {weights} on {} ({}); this can take a while",
            args.model.backend, args.model.precision
        ));
        let loading = Instant::now();
        let segmenter = match located {
            Some(weights) => builder.build_with(weights),
            None => builder.build(),
        }
        .context("cannot load the model")?;
        note(format!(
            "loaded {} ({}) in {:.1} s",
            segmenter.weights().path.display(),
            segmenter.weights().origin,
            loading.elapsed().as_secs_f64()
        ));
        settings = SegmentSettings::new(
            segmenter.weights(),
            &args.model.model,
            segmenter.precision(),
            segmenter.fit(),
            segmenter.merge_options(),
        );
        let mut progress = Progress::new(todo.len(), args.log_every as usize, args.quiet);
        for chunk in todo.chunks(args.batch_size as usize) {
            let mut batch: Vec<(&Job, DynamicImage)> = Vec::with_capacity(chunk.len());
            let decoding = Instant::now();
            for job in chunk {
                let limits = segmenter.image_limits();
                let opened = if args.allow_truncated {
                    limits.open_allowing_damage(&job.input)
                } else {
                    limits.open(&job.input).map(|image| (image, None))
                };
                match opened {
                    Ok((image, damage)) => {
                        if let Some(reason) = damage {
                            progress.message(&format!(
                                "warning: {}: damaged image segmented anyway (--allow-truncated): {reason}",
                                job.input.display()
                            ));
                            damaged_accepted.push(Failure {
                                path: job.input.clone(),
                                reason,
                            });
                        }
                        batch.push((job, image))
                    }
                    Err(error) => {
                        let hint = if matches!(error, diffseg::Error::ImageDamaged { .. }) {
                            " (--allow-truncated segments it anyway)"
                        } else {
                            ""
                        };
                        progress.message(&format!("skipped: {error}{hint}"));
                        failed.push(Failure {
                            path: job.input.clone(),
                            reason: error.to_string(),
                        });
                        progress.inc();
                    }
                }
            }
            decode += decoding.elapsed();
            if batch.is_empty() {
                continue;
            }
            let images: Vec<DynamicImage> = batch.iter().map(|(_, image)| image.clone()).collect();
            match segmenter.segment_batch(&images) {
                Ok(segmentations) => {
                    let writing = Instant::now();
                    for ((job, image), segmentation) in batch.iter().zip(&segmentations) {
                        match write_results(job, image, segmentation, &settings) {
                            Ok(()) => done.push(job.input.clone()),
                            Err(error) => {
                                progress
                                    .message(&format!("failed: {}: {error}", job.input.display()));
                                failed.push(Failure {
                                    path: job.input.clone(),
                                    reason: error.to_string(),
                                });
                            }
                        }
                        progress.inc();
                    }
                    outputs += writing.elapsed();
                }
                Err(error) => {
                    for (job, _) in &batch {
                        progress.message(&format!("failed: {}: {error}", job.input.display()));
                        failed.push(Failure {
                            path: job.input.clone(),
                            reason: error.to_string(),
                        });
                        progress.inc();
                    }
                }
            }
        }
        progress.finish();
        stages = segmenter.stage_times();
    }
    if let Some(path) = &args.timings {
        let seconds = |duration: Duration| duration.as_secs_f64();
        let report = Timings {
            images: stages.images,
            load: seconds(stages.load),
            clip: seconds(stages.text_encoder),
            decode: seconds(decode),
            prepare: seconds(stages.prepare),
            vae: seconds(stages.vae),
            unet: seconds(stages.unet),
            merge: seconds(stages.merge),
            outputs: seconds(outputs),
            total: seconds(started.elapsed()),
        };
        write_json_atomically(path, &report)
            .with_context(|| format!("cannot write the timings to {}", path.display()))?;
    }
    note(format!(
        "{} segmented, {} skipped (already done), {}{} failed; results in {}",
        done.len(),
        skipped.len(),
        if outdated_kept.is_empty() {
            String::new()
        } else {
            format!("{} kept with other settings, ", outdated_kept.len())
        },
        failed.len(),
        args.out.display()
    ));
    let exit = if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if let Some(path) = &args.summary {
        let seconds = started.elapsed().as_secs_f64();
        let summary = Summary {
            version: env!("CARGO_PKG_VERSION"),
            settings,
            shard: args.shard,
            listed: listed_count,
            images,
            images_per_minute: done.len() as f64 / seconds * 60.0,
            done,
            skipped,
            outdated_kept,
            damaged_redone,
            damaged_accepted,
            failed,
            seconds,
        };
        write_json_atomically(path, &summary)
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    Ok(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SegmentSettings {
        let weights = FoundWeights {
            path: PathBuf::from("/hub/models--x/snapshots/abc123"),
            origin: WeightsOrigin::HuggingFaceCache,
        };
        SegmentSettings::new(
            &weights,
            "x",
            diffseg::Precision::F32,
            diffseg::Fit::Pad,
            &diffseg::MergeOptions::default(),
        )
    }

    #[test]
    fn settings_differences_are_named() {
        let expected = settings();
        assert_eq!(expected.revision.as_deref(), Some("abc123"));
        assert_eq!(settings_difference(&expected, &expected, false), None);
        let mut recorded = expected.clone();
        recorded.merge.tau = vec![0.9];
        recorded.revision = Some("old".into());
        let difference = settings_difference(&recorded, &expected, false).unwrap();
        assert!(
            difference.contains("revision old (now abc123)"),
            "{difference}"
        );
        assert!(difference.contains("merge options"), "{difference}");
        // A revision still to be downloaded is not compared.
        recorded.merge.tau = expected.merge.tau.clone();
        assert_eq!(settings_difference(&recorded, &expected, true), None);
    }
}
