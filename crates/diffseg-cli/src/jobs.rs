//! What `diffseg segment` works on: the image files named, listed or found in
//! folders, each with where its results go, and the share one shard takes.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Component, Path, PathBuf};

use diffseg::{OutputKinds, ResultPaths};
use walkdir::WalkDir;

/// File extensions taken from folders (files named explicitly are always tried).
pub const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "tif", "tiff", "webp", "bmp"];

/// One image to segment and where its results go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The image file, as given or found.
    pub input: PathBuf,
    /// The image file resolved (symbolic links, `.`, `..`): what tells two
    /// spellings of one file apart from two files.
    pub real: PathBuf,
    /// Output path without extension: `<out>/<sub-folders>/<stem>`.
    pub output_base: PathBuf,
}

impl Job {
    /// Where its result's files go.
    pub fn result_paths(&self) -> ResultPaths {
        ResultPaths::at(&self.output_base)
    }

    /// The files of the `kinds` asked for, in writing order (the JSON last).
    pub fn outputs(&self, kinds: &OutputKinds) -> Vec<PathBuf> {
        let paths = self.result_paths();
        kinds
            .iter()
            .map(|kind| paths.path(kind).to_path_buf())
            .collect()
    }

    /// The input's path relative to the folder its results mirror
    /// (`sub/photo.jpg` for `<out>/sub/photo.*`): what names it in a COCO file.
    pub fn relative_name(&self, out: &Path) -> PathBuf {
        let folder = self
            .output_base
            .parent()
            .and_then(|parent| parent.strip_prefix(out).ok())
            .unwrap_or(Path::new(""));
        folder.join(self.input.file_name().unwrap_or(self.input.as_os_str()))
    }
}

/// The jobs found, and what went wrong or was left out on the way.
#[derive(Debug, Default)]
pub struct Listing {
    /// One job per image, in a fixed order: the arguments in turn, each
    /// folder's files sorted.
    pub jobs: Vec<Job>,
    /// Paths that could not be used, and why: missing, an unreadable folder,
    /// a result name another image already takes.
    pub problems: Vec<(PathBuf, String)>,
    /// What was left out without losing an image: the output folder inside an
    /// input folder, symbolic links that loop.
    pub notes: Vec<String>,
}

/// Expands the arguments into jobs: folders recursively (sorted, image
/// extensions only, following symbolic links but not around a loop, never into
/// `out` below them, never taking diffseg's own results for images), files as
/// given. `listed` are files from a `--files-from` list; their results mirror
/// the folders in their (relative) paths. A file named twice (also through
/// another spelling or a symbolic link) is one job, the first. Two inputs that
/// would share a result name keep their extension in it (`photo.jpg.png`) so
/// neither overwrites the other.
pub fn collect_jobs(paths: &[PathBuf], listed: &[PathBuf], out: &Path) -> Listing {
    let mut listing = Listing::default();
    let mut found: Vec<(PathBuf, PathBuf)> = Vec::new(); // (input, relative folder)
                                                         // Only an output folder that exists can hold results to skip.
    let out_real = out.canonicalize().ok();
    for path in paths {
        if path.is_dir() {
            walk(path, out_real.as_deref(), &mut found, &mut listing);
        } else if path.exists() {
            found.push((path.clone(), PathBuf::new()));
        } else {
            listing
                .problems
                .push((path.clone(), "no such file or folder".into()));
        }
    }
    for path in listed {
        if path.is_file() {
            found.push((path.clone(), mirrored_folder(path)));
        } else {
            listing
                .problems
                .push((path.clone(), "listed, but not a file".into()));
        }
    }
    let found = once_each(found, &mut listing);
    let stem_of = |input: &Path| input.file_stem().unwrap_or(input.as_os_str()).to_owned();
    let mut uses: HashMap<PathBuf, usize> = HashMap::new();
    for (input, relative, _) in &found {
        *uses.entry(relative.join(stem_of(input))).or_default() += 1;
    }
    let mut taken: HashMap<PathBuf, PathBuf> = HashMap::new(); // output base → input
    for (input, relative, real) in found {
        let key = relative.join(stem_of(&input));
        let name = if uses[&key] > 1 {
            input.file_name().unwrap_or(input.as_os_str()).to_owned()
        } else {
            stem_of(&input)
        };
        let output_base = out.join(relative).join(name);
        if let Some(first) = taken.get(&output_base) {
            let reason = format!(
                "its results would overwrite those of {} ({})",
                first.display(),
                output_base.display()
            );
            listing.problems.push((input, reason));
            continue;
        }
        taken.insert(output_base.clone(), input.clone());
        listing.jobs.push(Job {
            input,
            real,
            output_base,
        });
    }
    listing
}

/// The inputs found, each file once (the first of its spellings), with its
/// resolved path; the other spellings are noted.
fn once_each(
    found: Vec<(PathBuf, PathBuf)>,
    listing: &mut Listing,
) -> Vec<(PathBuf, PathBuf, PathBuf)> {
    let mut first: HashMap<PathBuf, PathBuf> = HashMap::new(); // resolved → first spelling
    let mut kept = Vec::with_capacity(found.len());
    for (input, relative) in found {
        // A file found a moment ago and gone now fails when it is read.
        let real = input.canonicalize().unwrap_or_else(|_| input.clone());
        if let Some(earlier) = first.get(&real) {
            listing.notes.push(format!(
                "{}: the same file as {}; segmented once",
                input.display(),
                earlier.display()
            ));
            continue;
        }
        first.insert(real.clone(), input.clone());
        kept.push((input, relative, real));
    }
    kept
}

/// The folders of a listed path that its results mirror: its parent's plain
/// components (no root, `.` or `..`), so results stay inside the output folder.
fn mirrored_folder(path: &Path) -> PathBuf {
    path.parent()
        .map(|parent| {
            parent
                .components()
                .filter(|component| matches!(component, Component::Normal(_)))
                .collect()
        })
        .unwrap_or_default()
}

fn walk(
    folder: &Path,
    out_real: Option<&Path>,
    found: &mut Vec<(PathBuf, PathBuf)>,
    listing: &mut Listing,
) {
    let skipped_out = Cell::new(false);
    let is_out =
        |path: &Path| out_real.is_some_and(|out| path.canonicalize().is_ok_and(|p| p == out));
    let mut results = 0usize;
    let walker = WalkDir::new(folder)
        .follow_links(true)
        .into_iter()
        .filter_entry(|entry| {
            // The output folder is left out below the folder walked; the
            // folder itself is walked, its results left out one by one.
            let inside_out =
                entry.depth() > 0 && entry.file_type().is_dir() && is_out(entry.path());
            skipped_out.set(skipped_out.get() || inside_out);
            !inside_out
        });
    let mut files = Vec::new();
    for entry in walker {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                let is_image = path
                    .extension()
                    .and_then(|extension| extension.to_str())
                    .is_some_and(|extension| {
                        IMAGE_EXTENSIONS.contains(&extension.to_ascii_lowercase().as_str())
                    });
                if entry.file_type().is_file() && is_image {
                    if diffseg::is_diffseg_png(path) {
                        results += 1;
                    } else {
                        files.push(entry.into_path());
                    }
                }
            }
            Err(error) => {
                let path = error.path().unwrap_or(folder).to_path_buf();
                if let Some(ancestor) = error.loop_ancestor() {
                    listing.notes.push(format!(
                        "{}: a symbolic link back to {}; not followed",
                        path.display(),
                        ancestor.display()
                    ));
                } else {
                    let reason = error
                        .io_error()
                        .map_or_else(|| error.to_string(), ToString::to_string);
                    listing
                        .problems
                        .push((path, format!("cannot read: {reason}")));
                }
            }
        }
    }
    if skipped_out.get() {
        listing.notes.push(format!(
            "{}: the output folder is inside this input folder; not read as input",
            folder.display()
        ));
    }
    if results > 0 {
        listing.notes.push(format!(
            "{}: {results} PNGs written by diffseg (results) left out; not read as input",
            folder.display()
        ));
    }
    files.sort();
    for file in files {
        let relative = file
            .parent()
            .and_then(|parent| parent.strip_prefix(folder).ok())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        found.push((file, relative));
    }
}

/// Reads a `--files-from` list: one path per line (`-` reads standard input);
/// empty lines are ignored.
pub fn read_file_list(list: &Path) -> std::io::Result<Vec<PathBuf>> {
    let reader: Box<dyn BufRead> = if list == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(list)?))
    };
    let mut paths = Vec::new();
    for line in reader.lines() {
        let line = line?;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if !line.is_empty() {
            paths.push(PathBuf::from(line));
        }
    }
    Ok(paths)
}

/// One share of a job list split across machines: `--shard I/N` takes the
/// jobs at positions `I, I + N, I + 2N, ...` of the full list, so the N shards
/// cover it exactly once whatever the done state on each machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Shard {
    /// This shard, from 0.
    pub index: usize,
    /// How many shards there are.
    pub count: usize,
}

impl Shard {
    /// The jobs of this shard, in order.
    pub fn select(&self, jobs: Vec<Job>) -> Vec<Job> {
        jobs.into_iter()
            .enumerate()
            .filter(|(position, _)| position % self.count == self.index)
            .map(|(_, job)| job)
            .collect()
    }
}

impl Shard {
    /// Parses `I/N`, each part a number or the name of a variable that
    /// `variable` looks up.
    fn parse_with(text: &str, variable: impl Fn(&str) -> Option<String>) -> Result<Shard, String> {
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not I/N (e.g. 0/4, or SLURM_ARRAY_TASK_ID/4)"))?;
        let number = |part: &str| -> Result<usize, String> {
            if let Ok(value) = part.parse() {
                return Ok(value);
            }
            let value = variable(part).ok_or_else(|| {
                format!("`{part}` is neither a number nor a set environment variable")
            })?;
            value
                .trim()
                .parse()
                .map_err(|_| format!("{part}={value} is not a number"))
        };
        let (index, count) = (number(index)?, number(count)?);
        if count == 0 || index >= count {
            return Err(format!(
                "shard {index}/{count}: the index must be at least 0 and less than the count"
            ));
        }
        Ok(Shard { index, count })
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N`, each a number or the name of an environment variable holding
    /// one: `3/16`, `SLURM_ARRAY_TASK_ID/16`, `JOB_COMPLETION_INDEX/8`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Shard::parse_with(text, |name| std::env::var(name).ok())
    }
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
        let listing = collect_jobs(&[images.clone(), root.path().join("nope.png")], &[], &out);
        assert_eq!(listing.problems.len(), 1);
        assert_eq!(listing.problems[0].0, root.path().join("nope.png"));
        let bases: Vec<PathBuf> = listing
            .jobs
            .iter()
            .map(|job| job.output_base.clone())
            .collect();
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
            listing.jobs[2].outputs(&OutputKinds::all()),
            [
                out.join("b.png"),
                out.join("b.overlay.png"),
                out.join("b.json")
            ]
        );
        let some: OutputKinds = "json,labels".parse().unwrap();
        assert_eq!(
            listing.jobs[3].outputs(&some),
            [out.join("sub/c.png"), out.join("sub/c.json")]
        );
        assert_eq!(listing.jobs[3].relative_name(&out), Path::new("sub/c.webp"));
        assert_eq!(listing.jobs[0].relative_name(&out), Path::new("a.jpg"));
    }

    #[test]
    fn shards_cover_a_folder_exactly_once() {
        let root = tempfile::tempdir().unwrap();
        let images = root.path().join("images");
        for folder in ["", "x", "x/y", "z"] {
            std::fs::create_dir_all(images.join(folder)).unwrap();
            for n in 0..7 {
                std::fs::write(images.join(folder).join(format!("{n}.png")), b"").unwrap();
            }
        }
        let out = root.path().join("out");
        let all = collect_jobs(std::slice::from_ref(&images), &[], &out).jobs;
        assert_eq!(all.len(), 28);
        for count in [1, 3, 5, 28, 40] {
            let mut seen: Vec<PathBuf> = Vec::new();
            for index in 0..count {
                // Each machine lists the folder itself.
                let listing = collect_jobs(std::slice::from_ref(&images), &[], &out);
                let shard = Shard { index, count };
                let share = shard.select(listing.jobs);
                assert!(share.len().abs_diff(all.len() / count) <= 1, "{count}");
                seen.extend(share.into_iter().map(|job| job.input));
            }
            seen.sort();
            let mut expected: Vec<PathBuf> = all.iter().map(|job| job.input.clone()).collect();
            expected.sort();
            assert_eq!(seen, expected, "{count} shards: each image exactly once");
        }
    }

    #[test]
    fn shard_indices_come_from_numbers_or_the_environment() {
        let environment = |name: &str| match name {
            "TASK" => Some("3\n".to_string()),
            "COUNT" => Some("4".to_string()),
            "WORD" => Some("three".to_string()),
            _ => None,
        };
        let parse = |text: &str| Shard::parse_with(text, environment);
        assert_eq!(parse("2/5"), Ok(Shard { index: 2, count: 5 }));
        assert_eq!(parse("TASK/COUNT"), Ok(Shard { index: 3, count: 4 }));
        for bad in ["5/5", "1/0", "1", "UNSET/2", "WORD/4", "TASK/3"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_output_folder_inside_an_input_is_not_read() {
        let root = tempfile::tempdir().unwrap();
        let images = root.path().join("images");
        std::fs::create_dir_all(images.join("results")).unwrap();
        std::fs::write(images.join("a.png"), b"").unwrap();
        std::fs::write(images.join("results/a.png"), b"").unwrap();
        let listing = collect_jobs(std::slice::from_ref(&images), &[], &images.join("results"));
        assert_eq!(listing.jobs.len(), 1);
        assert_eq!(listing.jobs[0].input, images.join("a.png"));
        assert!(
            listing.notes[0].contains("output folder"),
            "{:?}",
            listing.notes
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loops_end_and_unreadable_folders_are_reported() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let images = root.path().join("images");
        std::fs::create_dir_all(images.join("sub")).unwrap();
        std::fs::write(images.join("sub/a.png"), b"").unwrap();
        std::os::unix::fs::symlink(&images, images.join("sub/back")).unwrap();
        // A link to nothing cannot be read, even by root.
        std::os::unix::fs::symlink(root.path().join("gone"), images.join("dangling")).unwrap();
        std::fs::create_dir(images.join("locked")).unwrap();
        std::fs::write(images.join("locked/b.png"), b"").unwrap();
        std::fs::set_permissions(
            images.join("locked"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        let listing = collect_jobs(std::slice::from_ref(&images), &[], &root.path().join("out"));
        std::fs::set_permissions(
            images.join("locked"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let inputs: Vec<&Path> = listing.jobs.iter().map(|job| job.input.as_path()).collect();
        assert!(
            inputs.contains(&images.join("sub/a.png").as_path()),
            "{inputs:?}"
        );
        assert!(
            listing
                .notes
                .iter()
                .any(|note| note.contains("symbolic link")),
            "{:?}",
            listing.notes
        );
        let problems: Vec<&Path> = listing
            .problems
            .iter()
            .map(|(path, _)| path.as_path())
            .collect();
        assert!(
            problems.contains(&images.join("dangling").as_path()),
            "{problems:?}"
        );
        // Root reads any folder: then the locked one is simply read.
        let root_user = inputs.contains(&images.join("locked/b.png").as_path());
        if !root_user {
            assert!(
                problems.contains(&images.join("locked").as_path()),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn listed_files_mirror_their_folders() {
        let root = tempfile::tempdir().unwrap();
        for folder in ["a", "b"] {
            std::fs::create_dir_all(root.path().join(folder)).unwrap();
            std::fs::write(root.path().join(folder).join("x.jpg"), b"").unwrap();
        }
        let list = root.path().join("list.txt");
        std::fs::write(&list, "a/x.jpg\r\n\nb/x.jpg\nmissing.png\n").unwrap();
        let listed: Vec<PathBuf> = read_file_list(&list)
            .unwrap()
            .into_iter()
            .map(|path| root.path().join(path))
            .collect();
        assert_eq!(listed.len(), 3);
        let out = root.path().join("out");
        let listing = collect_jobs(&[], &listed, &out);
        let bases: Vec<&Path> = listing
            .jobs
            .iter()
            .map(|job| job.output_base.as_path())
            .collect();
        let mirrored = |folder: &str| {
            out.join(mirrored_folder(&root.path().join(folder).join("x.jpg")))
                .join("x")
        };
        assert_eq!(bases, vec![mirrored("a"), mirrored("b")]);
        assert_eq!(listing.problems[0].0, root.path().join("missing.png"));
    }
}
