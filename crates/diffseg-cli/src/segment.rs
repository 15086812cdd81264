//! `diffseg segment PATH... --out DIR`: segment image files and folders.
//!
//! For each image, in DIR (mirroring the sub-folders of a folder argument),
//! the kinds of file `--outputs` asks for (all three by default):
//! `<stem>.png` (label map), `<stem>.overlay.png` (segments tinted over the
//! image) and `<stem>.json` (size, the settings used, segments with area, box
//! and COCO RLE mask, the kinds written and the other files' lengths and
//! SHA-256). They are written whole and synced before any is renamed into
//! place, the JSON last; an image whose JSON records this run's settings and
//! kinds, and whose files match it, is skipped unless `--overwrite`, so an
//! interrupted run resumes where it stopped, a damaged result is redone and a
//! run with other settings or more kinds redoes it (without the JSON nothing
//! can be resumed). No output may be an input (refused before any work), and
//! a file in DIR that diffseg did not write is never replaced: that image
//! fails. A bad image is reported and skipped; the exit status says whether
//! any failed. `--shard I/N` takes one share of the images, for running one
//! folder on many machines.
//!
//! A run is planned (images listed, their results checked, before any model
//! is loaded), executed (the model loaded and the images to do segmented),
//! then reported (tally, `--summary`, `--timings`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use diffseg::weights::{FoundWeights, ResolvedWeights, WeightsOrigin};
use diffseg::{
    check_result, write_json_atomically, JsonStyle, Method, OutputKind, OutputKinds, ResultState,
    SegmentSettings, SegmenterBuilder, SegmentsFile,
};
use diffseg::{Segmentation, StageTimes};
use image::DynamicImage;

use crate::coco::{self, CocoFile};
use crate::exit::{self, Exit};
use crate::jobs::{collect_jobs, read_file_list, Job, Shard};
use crate::options::{MergeArgs, MethodArgs, ModelArgs, NamingArgs};
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
    /// outdated, incomplete, damaged, blocked) on standard output and stop, loading nothing; the exit status
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
    /// Also write one COCO file for the run to FILE: every image segmented now or skipped as
    /// already done, its file name relative to the folder its results mirror, each segment
    /// an annotation of category 1 (`segment`) with its mask as compressed RLE, area and box.
    /// Made for pycocotools (`COCO(FILE)`, `COCO.loadRes`) and COCO importers such as
    /// FiftyOne's and CVAT's. Written when the run ends; a file there that diffseg did not
    /// write is never replaced.
    #[arg(long, value_name = "FILE")]
    pub coco: Option<PathBuf>,
    /// Indent the JSON files this run writes (each image's `<stem>.json`, the
    /// summary, the timings, the COCO file) for reading by eye. By default they
    /// are compact, one line each: smaller, and what programs read anyway
    /// (`python -m json.tool FILE` or `jq . FILE` indents one later).
    #[arg(long)]
    pub pretty: bool,
    /// The files to write per image, comma-separated: labels (`<stem>.png`, the label map),
    /// overlay (`<stem>.overlay.png`, the segments tinted over the image), json (`<stem>.json`,
    /// the segments with their masks, and the record of what was written). Resuming needs
    /// json: an image is skipped when its JSON records these settings and every kind asked for,
    /// and redone when a kind is missing (e.g. overlay added to an earlier labels,json run);
    /// without json nothing records what is done, so every image is segmented on every run.
    #[arg(long, default_value = "labels,overlay,json", value_name = "KINDS")]
    pub outputs: OutputKinds,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub merge: MergeArgs,
    #[command(flatten)]
    pub method: MethodArgs,
    #[command(flatten)]
    pub naming: NamingArgs,
}

/// Where a job stands before the run.
#[derive(Debug, Clone, PartialEq)]
enum State {
    /// No results.
    Todo,
    /// Whole results with this run's settings: their description, kept for
    /// `--coco` only.
    Done(Option<Box<SegmentsFile>>),
    /// Whole results with other or unknown settings: what differs.
    Outdated(String),
    /// Whole results of other kinds: the kinds asked for that they lack.
    /// Redone.
    Incomplete(Vec<OutputKind>),
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
    let naming = |settings: &SegmentSettings| match &settings.naming {
        Some(naming) => format!(
            "{:?} (template {:?}, top-k {})",
            naming.vocabulary, naming.template, naming.top_k
        ),
        None => "none".into(),
    };
    differ("vocabulary", naming(recorded), naming(expected));
    differ(
        "DiffCut options",
        format!("{:?}", recorded.diffcut),
        format!("{:?}", expected.diffcut),
    );
    differ(
        "diffseg version",
        recorded.version.clone(),
        expected.version.clone(),
    );
    (!differences.is_empty()).then(|| differences.join(", "))
}

/// Whether `job` has whole results of the `kinds` asked for, made with
/// `expected` settings, or a file that is not diffseg's in the way.
fn job_state(
    job: &Job,
    kinds: &OutputKinds,
    expected: &SegmentSettings,
    revision_pending: bool,
) -> State {
    match check_result(&job.result_paths(), kinds) {
        ResultState::Missing => State::Todo,
        ResultState::Incomplete(lacking) => State::Incomplete(lacking),
        ResultState::Damaged(reason) => State::Damaged(reason),
        ResultState::Foreign { path, reason } => {
            State::Blocked(diffseg::Error::NotOurs { path, reason }.to_string())
        }
        ResultState::Whole(description) => match &description.settings {
            None => State::Outdated("no settings recorded".into()),
            Some(recorded) => match settings_difference(recorded, expected, revision_pending) {
                None => State::Done(Some(description)),
                Some(difference) => State::Outdated(difference),
            },
        },
        // A state a newer library may add: not known to be whole, so redone.
        other => State::Damaged(format!("not known to be whole ({other:?})")),
    }
}

/// Refuses the run, before any work, when an output path is an input: each
/// job's results, the summary, the timings and the COCO file against every
/// image.
fn refuse_inputs_as_outputs(jobs: &[Job], args: &Args) -> anyhow::Result<()> {
    let inputs: HashMap<PathBuf, PathBuf> = jobs
        .iter()
        .map(|job| (job.real.clone(), job.input.clone()))
        .collect();
    let reports = [&args.summary, &args.timings, &args.coco];
    let outputs = jobs
        .iter()
        .flat_map(|job| job.outputs(&args.outputs))
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
        return Err(exit::usage(format!("{first}{more}; nothing was done")));
    }
    Ok(())
}

/// Refuses the run, before any work, when a report (`--summary`,
/// `--timings`, `--coco`) would be written over one of the results.
fn refuse_reports_over_results(jobs: &[Job], args: &Args) -> anyhow::Result<()> {
    let reports = [
        ("--summary", &args.summary),
        ("--timings", &args.timings),
        ("--coco", &args.coco),
    ];
    for (flag, report) in reports {
        let Some(report) = report else { continue };
        let resolved = diffseg::resolved_path(report);
        let taken = jobs.iter().find(|job| {
            job.outputs(&args.outputs).iter().any(|output| {
                output.file_name() == report.file_name()
                    && diffseg::resolved_path(output) == resolved
            })
        });
        if let Some(job) = taken {
            return Err(exit::usage(format!(
                "{flag} {} is where a result of {} goes: choose another file",
                report.display(),
                job.input.display()
            )));
        }
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
    method: &Method,
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
    let settings = SegmentSettings::for_method(
        found,
        &args.model.model,
        args.model.precision,
        args.model.fit,
        method,
    );
    Ok((settings, located))
}

/// Refuses, before any work, a vocabulary that cannot name: with DiffCut, without a tokenizer
/// for weights already found, or with entries the tokenizer cannot fit in a prompt.
fn check_vocabulary(
    args: &Args,
    method: &Method,
    vocabulary: &diffseg::Vocabulary,
    located: Option<&ResolvedWeights>,
) -> anyhow::Result<()> {
    if matches!(method, Method::DiffCut(_)) {
        return Err(exit::usage(
            "--vocabulary names DiffSeg's segments only: DiffCut's UNet pass stops before most \
             cross-attention layers",
        ));
    }
    let explicit = args.naming.tokenizer.as_deref();
    // Weights still to be downloaded (or Hub snapshots, whose tokenizer is fetched when the
    // model loads) are checked then.
    let Some(weights) = located.map(ResolvedWeights::found) else {
        return Ok(());
    };
    let from_hub = matches!(
        weights.origin,
        WeightsOrigin::HuggingFaceCache | WeightsOrigin::Downloaded
    );
    if from_hub && explicit.is_none() {
        return Ok(());
    }
    let tokenizer = diffseg::weights::load_tokenizer(&weights.path, explicit)
        .map_err(|error| exit::usage(format!("--vocabulary: {error}")))?;
    vocabulary
        .prompts(&tokenizer)
        .map_err(|error| exit::usage(format!("--vocabulary: {error}")))?;
    Ok(())
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
    /// What became of each image.
    #[serde(flatten)]
    tally: Tally,
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

/// Writes a job's result, the kinds asked for, as one: none replaces a
/// previous file before all are written whole, and the JSON, which records the
/// others' checksums, goes last.
pub fn write_results(
    job: &Job,
    image: &DynamicImage,
    segmentation: &Segmentation,
    settings: &SegmentSettings,
    args: &Args,
) -> Result<SegmentsFile, diffseg::Error> {
    let name = job
        .input
        .file_name()
        .map(|name| name.to_string_lossy().into_owned());
    segmentation.save_result(
        image,
        &job.result_paths(),
        &args.outputs,
        name,
        Some(settings.clone()),
        json_style(args),
    )
}

/// How the JSON files of the run are laid out (`--pretty`).
fn json_style(args: &Args) -> JsonStyle {
    if args.pretty {
        JsonStyle::Pretty
    } else {
        JsonStyle::Compact
    }
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
    /// Naming segments from `--vocabulary` (0 without one; encoding it counts as `clip`).
    naming: f64,
    outputs: f64,
    total: f64,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let plan = plan(&args)?;
    if args.dry_run {
        return Ok(print_dry_run(&plan));
    }
    let counts = Counts {
        listed: plan.listed,
        images: plan.jobs.len(),
    };
    let mut tally = Tally {
        failed: plan.failed,
        ..Tally::default()
    };
    let todo = triage(&args, plan.jobs, &mut tally);
    let mut times = RunTimes::default();
    let settings = if todo.is_empty() {
        plan.expected
    } else {
        execute(
            &args,
            plan.builder,
            plan.located,
            &todo,
            &mut tally,
            &mut times,
        )?
    };
    report(&args, tally, settings, counts, &times, started)
}

/// How many images a run lists, and takes (its shard's share).
struct Counts {
    listed: usize,
    images: usize,
}

/// Prints `note` unless `--quiet`.
fn note(args: &Args, text: String) {
    if !args.quiet {
        eprintln!("{text}");
    }
}

/// What a run will do, decided before any model is loaded.
struct Plan {
    /// Images listed before sharding (the same on every shard of one run).
    listed: usize,
    /// This run's images (this shard's share), with where each stands.
    jobs: Vec<(Job, State)>,
    /// Paths that could not be listed, with why.
    failed: Vec<Failure>,
    /// The settings results are made and compared with.
    expected: SegmentSettings,
    /// What loads the model, and the weights it found (`None`: still to be
    /// downloaded).
    builder: SegmenterBuilder,
    located: Option<ResolvedWeights>,
}

/// Lists the images, takes this shard's share, refuses unsafe outputs and
/// checks each image's results: everything that needs no model.
fn plan(args: &Args) -> anyhow::Result<Plan> {
    // Bad method options are a usage error, reported before any listing.
    let method = args.method.method(&args.merge, None)?;
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
        note(args, format!("note: {text}"));
    }
    let listed_count = listing.jobs.len();
    let jobs = match args.shard {
        Some(shard) => {
            let share = shard.select(listing.jobs);
            note(
                args,
                format!(
                    "shard {}/{}: {} of {listed_count} images",
                    shard.index,
                    shard.count,
                    share.len()
                ),
            );
            share
        }
        None => listing.jobs,
    };
    refuse_inputs_as_outputs(&jobs, args)?;
    if let Some(path) = &args.summary {
        refuse_foreign_report(path, "a run summary", &["version", "settings", "failed"])?;
    }
    if let Some(path) = &args.timings {
        refuse_foreign_report(path, "a timings report", &["images", "total"])?;
    }
    if let Some(path) = &args.coco {
        diffseg::refuse_foreign(path, "a COCO file", coco::is_ours)?;
    }
    refuse_reports_over_results(&jobs, args)?;
    if !args.outputs.contains(OutputKind::Json) && !args.dry_run {
        note(
            args,
            "note: --outputs without json: nothing records what is done, so every image is segmented"
                .into(),
        );
    }
    let vocabulary = args.naming.vocabulary()?;
    let builder = args
        .naming
        .apply(args.model.builder(&method), vocabulary.as_ref());
    let (expected, located) = expected_settings(args, &method, &builder)?;
    let expected = match &vocabulary {
        Some(vocabulary) => {
            check_vocabulary(args, &method, vocabulary, located.as_ref())?;
            expected.with_naming(vocabulary, args.naming.top_k as usize)
        }
        None => expected,
    };
    match &located {
        Some(weights) => tracing::info!(
            path = %weights.found().path.display(),
            origin = %weights.found().origin,
            "weights resolved"
        ),
        None => tracing::info!(
            model = %args.model.model,
            "weights not found locally: they will be downloaded when the model loads"
        ),
    }
    let revision_pending = located.is_none();
    let jobs = jobs
        .into_iter()
        .map(|job| {
            let state = match job_state(&job, &args.outputs, &expected, revision_pending) {
                State::Blocked(why) => State::Blocked(why),
                _ if args.overwrite => State::Todo,
                // Held for the whole run: only when a COCO file needs it.
                State::Done(_) if args.coco.is_none() => State::Done(None),
                state => state,
            };
            (job, state)
        })
        .collect::<Vec<(Job, State)>>();
    log_plan(&jobs);
    Ok(Plan {
        listed: listed_count,
        jobs,
        failed,
        expected,
        builder,
        located,
    })
}

/// Logs (`-v`) how many images are in each state.
fn log_plan(jobs: &[(Job, State)]) {
    let count = |wanted: fn(&State) -> bool| jobs.iter().filter(|(_, state)| wanted(state)).count();
    tracing::info!(
        images = jobs.len(),
        todo = count(|state| matches!(state, State::Todo)),
        done = count(|state| matches!(state, State::Done(_))),
        outdated = count(|state| matches!(state, State::Outdated(_))),
        incomplete = count(|state| matches!(state, State::Incomplete(_))),
        damaged = count(|state| matches!(state, State::Damaged(_))),
        blocked = count(|state| matches!(state, State::Blocked(_))),
        "planned"
    );
}

/// `--dry-run`: each image with its state on standard output; the status
/// says whether listing found problems.
fn print_dry_run(plan: &Plan) -> Exit {
    for (job, state) in &plan.jobs {
        let input = job.input.display();
        match state {
            State::Todo => println!("todo\t{input}"),
            State::Done(_) => println!("done\t{input}"),
            State::Outdated(why) => println!("outdated\t{input}\t{why}"),
            State::Incomplete(lacking) => println!("incomplete\t{input}\tlacks {}", names(lacking)),
            State::Damaged(why) => println!("damaged\t{input}\t{why}"),
            State::Blocked(why) => println!("blocked\t{input}\t{why}"),
        }
    }
    let blocked = plan
        .jobs
        .iter()
        .any(|(_, state)| matches!(state, State::Blocked(_)));
    if plan.failed.is_empty() && !blocked {
        Exit::Done
    } else {
        Exit::InputsFailed
    }
}

/// Output kinds as `overlay, json`.
fn names(kinds: &[OutputKind]) -> String {
    let names: Vec<&str> = kinds.iter().map(|kind| kind.name()).collect();
    names.join(", ")
}

/// What became of each image: the run's tally, summary and exit status.
#[derive(Default, serde::Serialize)]
struct Tally {
    /// Segmented now.
    done: Vec<PathBuf>,
    /// Already segmented with these settings and kinds.
    skipped: Vec<PathBuf>,
    /// Kept with results of other settings (`--keep-outdated`).
    outdated_kept: Vec<Outdated>,
    /// Damaged results, redone: with why.
    damaged_redone: Vec<Failure>,
    /// Damaged images segmented anyway (`--allow-truncated`).
    damaged_accepted: Vec<Failure>,
    /// Images and paths that failed, with why.
    failed: Vec<Failure>,
    /// For `--coco`: each image done or skipped, named as its results are,
    /// with its description.
    #[serde(skip)]
    described: Vec<(String, SegmentsFile)>,
}

impl Tally {
    /// Keeps `description`, the result of `job`, for the COCO file.
    fn described(&mut self, args: &Args, job: &Job, description: SegmentsFile) {
        if args.coco.is_some() {
            let name = job.relative_name(&args.out);
            self.described
                .push((name.to_string_lossy().into_owned(), description));
        }
    }

    /// Records that `path` failed for `reason`.
    fn fail(&mut self, path: &Path, reason: String) {
        self.failed.push(Failure {
            path: path.to_path_buf(),
            reason,
        });
    }
}

/// Sorts the planned jobs: the ones to segment are returned, the others
/// tallied (skipped, kept, blocked), with a note for each group.
fn triage(args: &Args, jobs: Vec<(Job, State)>, tally: &mut Tally) -> Vec<Job> {
    let images = jobs.len();
    let mut todo = Vec::new();
    let mut redone = 0usize;
    for (job, state) in jobs {
        match state {
            State::Todo => todo.push(job),
            State::Blocked(reason) => {
                eprintln!("error: {}: {reason}", job.input.display());
                tally.fail(&job.input, reason);
            }
            State::Damaged(reason) => {
                note(
                    args,
                    format!(
                        "note: {}: its results are damaged ({reason}); redoing them",
                        job.input.display()
                    ),
                );
                tally.damaged_redone.push(Failure {
                    path: job.input.clone(),
                    reason,
                });
                todo.push(job)
            }
            State::Incomplete(lacking) => {
                note(
                    args,
                    format!(
                        "note: {}: its results lack {} (asked for by --outputs); redoing them",
                        job.input.display(),
                        names(&lacking)
                    ),
                );
                todo.push(job)
            }
            State::Done(description) => {
                if let Some(description) = description {
                    tally.described(args, &job, *description);
                }
                tally.skipped.push(job.input)
            }
            State::Outdated(difference) if args.keep_outdated => {
                tally.outdated_kept.push(Outdated {
                    path: job.input,
                    difference,
                })
            }
            State::Outdated(_) => {
                redone += 1;
                todo.push(job)
            }
        }
    }
    if !tally.skipped.is_empty() {
        note(args, format!(
            "{} of {images} images already segmented with these settings in {} (skipped; --overwrite redoes them)",
            tally.skipped.len(),
            args.out.display()
        ));
    }
    if let Some(first) = tally.outdated_kept.first() {
        note(args, format!(
            "{} of {images} images have results made with other settings, kept (--keep-outdated), e.g. {}: {}",
            tally.outdated_kept.len(),
            first.path.display(),
            first.difference
        ));
    }
    if redone > 0 {
        note(args, format!(
            "{redone} of {images} images have results made with other settings; redoing them (--keep-outdated keeps them)"
        ));
    }
    todo
}

/// Time spent outside the model, and the model's stages.
#[derive(Default)]
struct RunTimes {
    decode: Duration,
    outputs: Duration,
    stages: StageTimes,
}

/// Loads the model and segments `todo`, batch by batch, writing each
/// result as it is done. Returns the settings the results were made with
/// (the weights' revision known once they are loaded).
fn execute(
    args: &Args,
    builder: SegmenterBuilder,
    located: Option<ResolvedWeights>,
    todo: &[Job],
    tally: &mut Tally,
    times: &mut RunTimes,
) -> anyhow::Result<SegmentSettings> {
    let weights = match &args.model.weights {
        Some(path) => format!("weights {}", path.display()),
        None => format!("model {}", args.model.model),
    };
    note(
        args,
        format!(
            "loading {weights} on {} ({}); this can take a while",
            args.model.backend, args.model.precision
        ),
    );
    let loading = Instant::now();
    let segmenter = match located {
        Some(weights) => builder.build_with(weights),
        None => builder.build(),
    }
    .context("cannot load the model")?;
    note(
        args,
        format!(
            "loaded {} ({}) in {:.1} s",
            segmenter.weights().path.display(),
            segmenter.weights().origin,
            loading.elapsed().as_secs_f64()
        ),
    );
    let settings = SegmentSettings::for_method(
        segmenter.weights(),
        &args.model.model,
        segmenter.precision(),
        segmenter.fit(),
        segmenter.method(),
    );
    let settings = match (segmenter.vocabulary(), segmenter.top_k()) {
        (Some(vocabulary), Some(top_k)) => settings.with_naming(vocabulary, top_k),
        _ => settings,
    };
    tracing::info!(
        seconds = loading.elapsed().as_secs_f64(),
        backend = %args.model.backend,
        "model loaded"
    );
    let mut progress = Progress::new(todo.len(), args.log_every as usize, args.quiet);
    for chunk in todo.chunks(args.batch_size as usize) {
        let decoding = Instant::now();
        let batch = open_batch(args, &segmenter, chunk, tally, &mut progress);
        times.decode += decoding.elapsed();
        if batch.is_empty() {
            continue;
        }
        let images: Vec<DynamicImage> = batch.iter().map(|(_, image)| image.clone()).collect();
        let segmenting = Instant::now();
        let segmented = segmenter.segment_batch(&images);
        tracing::debug!(
            images = images.len(),
            seconds = segmenting.elapsed().as_secs_f64(),
            "batch segmented"
        );
        match segmented {
            Ok(segmentations) => {
                let writing = Instant::now();
                for ((job, image), segmentation) in batch.iter().zip(&segmentations) {
                    let written = Instant::now();
                    let result = write_results(job, image, segmentation, &settings, args);
                    tracing::debug!(
                        image = %job.input.display(),
                        segments = segmentation.segment_count(),
                        seconds = written.elapsed().as_secs_f64(),
                        "results written"
                    );
                    match result {
                        Ok(description) => {
                            tally.described(args, job, description);
                            tally.done.push(job.input.clone())
                        }
                        Err(error) => {
                            progress.message(&format!("failed: {}: {error}", job.input.display()));
                            tally.fail(&job.input, error.to_string());
                        }
                    }
                    progress.inc();
                }
                times.outputs += writing.elapsed();
            }
            Err(error) => {
                for (job, _) in &batch {
                    progress.message(&format!("failed: {}: {error}", job.input.display()));
                    tally.fail(&job.input, error.to_string());
                    progress.inc();
                }
            }
        }
    }
    progress.finish();
    times.stages = segmenter.stage_times();
    Ok(settings)
}

/// Opens the images of one batch; the ones that cannot be opened are
/// reported, tallied as failed and left out.
fn open_batch<'a>(
    args: &Args,
    segmenter: &diffseg::Segmenter,
    chunk: &'a [Job],
    tally: &mut Tally,
    progress: &mut Progress,
) -> Vec<(&'a Job, DynamicImage)> {
    let limits = segmenter.image_limits();
    let mut batch = Vec::with_capacity(chunk.len());
    for job in chunk {
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
                    tally.damaged_accepted.push(Failure {
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
                tally.fail(&job.input, error.to_string());
                progress.inc();
            }
        }
    }
    batch
}

/// Writes `--timings` and `--summary`, prints the tally and says how the
/// run ended.
fn report(
    args: &Args,
    mut tally: Tally,
    settings: SegmentSettings,
    counts: Counts,
    times: &RunTimes,
    started: Instant,
) -> anyhow::Result<Exit> {
    if let Some(path) = &args.timings {
        let seconds = |duration: Duration| duration.as_secs_f64();
        let stages = &times.stages;
        let report = Timings {
            images: stages.images,
            load: seconds(stages.load),
            clip: seconds(stages.text_encoder),
            decode: seconds(times.decode),
            prepare: seconds(stages.prepare),
            vae: seconds(stages.vae),
            unet: seconds(stages.unet),
            merge: seconds(stages.merge),
            naming: seconds(stages.naming),
            outputs: seconds(times.outputs),
            total: seconds(started.elapsed()),
        };
        write_json_atomically(path, &report, json_style(args))
            .with_context(|| format!("cannot write the timings to {}", path.display()))?;
    }
    if let Some(path) = &args.coco {
        let coco = CocoFile::new(std::mem::take(&mut tally.described));
        write_json_atomically(path, &coco, json_style(args))
            .with_context(|| format!("cannot write the COCO file {}", path.display()))?;
    }
    note(
        args,
        format!(
            "{} segmented, {} skipped (already done), {}{} failed; results in {}",
            tally.done.len(),
            tally.skipped.len(),
            if tally.outdated_kept.is_empty() {
                String::new()
            } else {
                format!("{} kept with other settings, ", tally.outdated_kept.len())
            },
            tally.failed.len(),
            args.out.display()
        ),
    );
    let exit = if tally.failed.is_empty() {
        Exit::Done
    } else {
        Exit::InputsFailed
    };
    if let Some(path) = &args.summary {
        let seconds = started.elapsed().as_secs_f64();
        let summary = Summary {
            version: env!("CARGO_PKG_VERSION"),
            settings,
            shard: args.shard,
            listed: counts.listed,
            images: counts.images,
            images_per_minute: tally.done.len() as f64 / seconds * 60.0,
            tally,
            seconds,
        };
        write_json_atomically(path, &summary, json_style(args))
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
        recorded.merge.as_mut().expect("a DiffSeg run").tau = vec![0.9];
        recorded.revision = Some("old".into());
        let difference = settings_difference(&recorded, &expected, false).unwrap();
        assert!(
            difference.contains("revision old (now abc123)"),
            "{difference}"
        );
        assert!(difference.contains("merge options"), "{difference}");
        // A revision still to be downloaded is not compared.
        recorded.merge = expected.merge.clone();
        assert_eq!(settings_difference(&recorded, &expected, true), None);

        // DiffCut's options are compared as DiffSeg's are: a result cut at another τ is not done.
        let cut = diffseg::DiffCutSettings {
            tau: 0.5,
            auto_tau: false,
            alpha: 10.0,
            mask_size: 128,
            pamr: false,
            median: false,
            input_size: 1024,
            timestep: 50,
            seed: 42,
        };
        let mut expected = expected;
        expected.merge = None;
        expected.diffcut = Some(cut.clone());
        let mut recorded = expected.clone();
        assert_eq!(settings_difference(&recorded, &expected, false), None);
        recorded.diffcut = Some(diffseg::DiffCutSettings { tau: 0.3, ..cut });
        let difference = settings_difference(&recorded, &expected, false).unwrap();
        assert!(difference.contains("DiffCut options"), "{difference}");
    }
}
