//! `diffseg segment PATH... --out DIR`: segment image files and folders.
//!
//! For each image, in DIR (mirroring the sub-folders of a folder argument):
//! `<stem>.png` (label map), `<stem>.overlay.png` (segments tinted over the
//! image) and `<stem>.json` (size, segments with area, box and COCO RLE mask).
//! Each file is written atomically; an image whose three files exist is skipped
//! unless `--overwrite`, so an interrupted run resumes where it stopped. A bad
//! image is reported and skipped; the exit status is non-zero if any failed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use diffseg::{open_image, Segmentation, StageTimes};
use image::DynamicImage;
use indicatif::{ProgressBar, ProgressStyle};

use crate::options::{MergeArgs, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Image files and folders (searched recursively for .png, .jpg, .jpeg,
    /// .tif, .tiff, .webp, .bmp).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Output folder.
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
    /// Redo images whose results already exist.
    #[arg(long)]
    pub overwrite: bool,
    /// Images per model pass.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Write the wall time of each stage (seconds, JSON) to FILE.
    #[arg(long, value_name = "FILE")]
    pub timings: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub merge: MergeArgs,
}

/// File extensions taken from folders (files named explicitly are always tried).
const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "tif", "tiff", "webp", "bmp"];

/// One image to segment and where its results go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The image file.
    pub input: PathBuf,
    /// Output path without extension: `<out>/<sub-folders>/<stem>`.
    pub output_base: PathBuf,
}

impl Job {
    /// The three result files: label PNG, overlay PNG, JSON.
    pub fn outputs(&self) -> [PathBuf; 3] {
        let base = self.output_base.as_os_str().to_owned();
        let with = |suffix: &str| {
            let mut path = base.clone();
            path.push(suffix);
            PathBuf::from(path)
        };
        [with(".png"), with(".overlay.png"), with(".json")]
    }

    fn done(&self) -> bool {
        self.outputs().iter().all(|path| path.is_file())
    }
}

/// Expands the arguments into jobs: folders recursively (sorted, image
/// extensions only), files as given. Paths that do not exist are returned
/// separately. Two inputs that would share a result name keep their extension
/// in it (`photo.jpg.png`) so neither overwrites the other.
pub fn collect_jobs(paths: &[PathBuf], out: &Path) -> (Vec<Job>, Vec<PathBuf>) {
    let mut found: Vec<(PathBuf, PathBuf)> = Vec::new(); // (input, relative folder)
    let mut missing = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files = Vec::new();
            walk(path, &mut files);
            files.sort();
            for file in files {
                let relative = file
                    .parent()
                    .and_then(|parent| parent.strip_prefix(path).ok())
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                found.push((file, relative));
            }
        } else if path.exists() {
            found.push((path.clone(), PathBuf::new()));
        } else {
            missing.push(path.clone());
        }
    }
    found.dedup_by(|a, b| a.0 == b.0);
    let stem_of = |input: &Path| input.file_stem().unwrap_or(input.as_os_str()).to_owned();
    let mut uses: HashMap<PathBuf, usize> = HashMap::new();
    for (input, relative) in &found {
        *uses.entry(relative.join(stem_of(input))).or_default() += 1;
    }
    let jobs = found
        .into_iter()
        .map(|(input, relative)| {
            let key = relative.join(stem_of(&input));
            let name = if uses[&key] > 1 {
                input.file_name().unwrap_or(input.as_os_str()).to_owned()
            } else {
                stem_of(&input)
            };
            Job {
                output_base: out.join(relative).join(name),
                input,
            }
        })
        .collect();
    (jobs, missing)
}

fn walk(folder: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, files);
        } else if path
            .extension()
            .and_then(|extension| extension.to_str())
            .is_some_and(|extension| {
                IMAGE_EXTENSIONS.contains(&extension.to_ascii_lowercase().as_str())
            })
        {
            files.push(path);
        }
    }
}

/// Writes a job's three results, each atomically; if one fails, the ones
/// already written are removed so the image is redone on the next run.
pub fn write_results(
    job: &Job,
    image: &DynamicImage,
    segmentation: &Segmentation,
) -> Result<(), diffseg::Error> {
    let [labels, overlay, json] = job.outputs();
    let result = segmentation
        .save_label_png(&labels)
        .and_then(|()| segmentation.save_overlay(image, &overlay))
        .and_then(|()| {
            let name = job
                .input
                .file_name()
                .map(|name| name.to_string_lossy().into_owned());
            segmentation.save_json(&json, name)
        });
    if result.is_err() {
        for path in [&labels, &overlay, &json] {
            let _ = std::fs::remove_file(path);
        }
    }
    result
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
    let (jobs, missing) = collect_jobs(&args.paths, &args.out);
    let mut failed = 0usize;
    for path in &missing {
        eprintln!("error: {}: no such file or folder", path.display());
        failed += 1;
    }
    let total = jobs.len();
    let (todo, done): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|job| args.overwrite || !job.done());
    if !done.is_empty() {
        eprintln!(
            "{} of {total} images already segmented in {} (skipped; --overwrite redoes them)",
            done.len(),
            args.out.display()
        );
    }
    let mut segmented = 0usize;
    if !todo.is_empty() {
        let segmenter = args
            .model
            .builder(&args.merge)
            .build()
            .context("cannot load the model")?;
        let progress = ProgressBar::new(todo.len() as u64).with_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} images, {elapsed} elapsed, ~{eta} left {msg}",
            )
            .expect("valid template"),
        );
        for chunk in todo.chunks(args.batch_size as usize) {
            let mut batch: Vec<(&Job, DynamicImage)> = Vec::with_capacity(chunk.len());
            let decoding = Instant::now();
            for job in chunk {
                match open_image(&job.input) {
                    Ok(image) => batch.push((job, image)),
                    Err(error) => {
                        progress.suspend(|| eprintln!("skipped: {error}"));
                        failed += 1;
                        progress.inc(1);
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
                        match write_results(job, image, segmentation) {
                            Ok(()) => segmented += 1,
                            Err(error) => {
                                progress.suspend(|| {
                                    eprintln!("failed: {}: {error}", job.input.display())
                                });
                                failed += 1;
                            }
                        }
                        progress.inc(1);
                    }
                    outputs += writing.elapsed();
                }
                Err(error) => {
                    for (job, _) in &batch {
                        progress.suspend(|| eprintln!("failed: {}: {error}", job.input.display()));
                        failed += 1;
                        progress.inc(1);
                    }
                }
            }
        }
        progress.finish_and_clear();
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
        diffseg::output::write_json_atomically(path, &report)
            .with_context(|| format!("cannot write the timings to {}", path.display()))?;
    }
    eprintln!(
        "{segmented} segmented, {} skipped (already done), {failed} failed; results in {}",
        done.len(),
        args.out.display()
    );
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_walked_and_names_kept_apart() {
        let root = tempfile::tempdir().unwrap();
        let images = root.path().join("images");
        std::fs::create_dir_all(images.join("sub")).unwrap();
        for name in ["a.png", "a.jpg", "b.JPG", "notes.txt", "sub/c.webp"] {
            std::fs::write(images.join(name), b"").unwrap();
        }
        let out = root.path().join("out");
        let (jobs, missing) = collect_jobs(&[images.clone(), root.path().join("nope.png")], &out);
        assert_eq!(missing, vec![root.path().join("nope.png")]);
        let bases: Vec<PathBuf> = jobs.iter().map(|job| job.output_base.clone()).collect();
        assert_eq!(
            bases,
            vec![
                out.join("a.jpg"),
                out.join("a.png"),
                out.join("b"),
                out.join("sub/c")
            ]
        );
        assert_eq!(
            jobs[2].outputs(),
            [
                out.join("b.png"),
                out.join("b.overlay.png"),
                out.join("b.json")
            ]
        );
    }
}
