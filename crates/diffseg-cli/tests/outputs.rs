//! What `diffseg` writes, on the tiny random-weight SD fixture: never over an
//! input or a file it did not write, whole results only (a full disk, a run
//! killed at any moment), each input file once however it is spelled.

use crate::common;

use common::{diffseg, diffseg_subcommand, path_str, read_labels, stderr_of, text, tiny_weights};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use sha2::{Digest, Sha256};

fn example_image(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/images"
    ))
    .join(name)
}

/// `diffseg segment args --weights <tiny>`.
fn segment(args: &[&str]) -> Output {
    let weights = tiny_weights();
    let mut all = vec!["segment"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--weights", &weights]);
    diffseg(&all)
}

/// Copies the example image `name` to `folder/as_name`.
fn copy_example(name: &str, folder: &Path, as_name: &str) -> PathBuf {
    std::fs::create_dir_all(folder).unwrap();
    let path = folder.join(as_name);
    std::fs::copy(example_image(name), &path).unwrap();
    path
}

/// Every file under `folder` with its content, sorted by path.
fn snapshot(folder: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![folder.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let content = std::fs::read(&path).unwrap();
                files.push((path, content));
            }
        }
    }
    files.sort();
    files
}

/// Checks that the result `<out>/<stem>` is whole: its JSON records the label
/// PNG and overlay with the lengths and SHA-256 found, and the labels decode
/// to the recorded size with every recorded segment.
fn assert_whole(out: &Path, stem: &str) {
    let json_path = out.join(format!("{stem}.json"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let files = json["files"].as_array().expect("files recorded");
    let mut names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        [format!("{stem}.overlay.png"), format!("{stem}.png")],
        "{json_path:?}"
    );
    for record in files {
        let content = std::fs::read(out.join(record["name"].as_str().unwrap())).unwrap();
        assert_eq!(record["bytes"].as_u64().unwrap(), content.len() as u64);
        assert_eq!(
            record["sha256"].as_str().unwrap(),
            format!("{:x}", Sha256::digest(&content))
        );
    }
    let labels = read_labels(&out.join(format!("{stem}.png")));
    assert_eq!(labels.width() as u64, json["width"].as_u64().unwrap());
    assert_eq!(labels.height() as u64, json["height"].as_u64().unwrap());
    let segments = json["segments"].as_array().unwrap().len() as u16;
    assert!(labels.pixels().all(|pixel| pixel[0] < segments));
}

#[test]
fn an_output_that_is_an_input_is_refused_before_any_work() {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path().join("dir");
    let photo = copy_example("chelsea.png", &dir, "photo.png");
    let before = snapshot(folder.path());
    // The label PNG of dir/photo.png would be dir/photo.png itself; also
    // through another spelling of the folder.
    let spelled = dir.join("..").join("dir");
    for out in [&dir, &spelled] {
        let output = segment(&[path_str(&photo), "--out", path_str(out)]);
        assert!(!output.status.success(), "{}", text(&output));
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains("photo.png is an input") && stderr.contains(path_str(&photo)),
            "{stderr}"
        );
        assert!(
            !stderr.contains("loading"),
            "refused before loading: {stderr}"
        );
        assert_eq!(snapshot(folder.path()), before, "nothing written");
    }
    // A folder segmented into itself: its PNG photos would be their results.
    let output = segment(&[path_str(&dir), "--out", path_str(&dir)]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        stderr_of(&output).contains("is an input"),
        "{}",
        text(&output)
    );
    assert_eq!(snapshot(folder.path()), before);
    // The summary may not be an input either.
    let other = folder.path().join("out");
    let output = segment(&[
        path_str(&photo),
        "--out",
        path_str(&other),
        "--summary",
        path_str(&photo),
    ]);
    assert!(!output.status.success(), "{}", text(&output));
    assert_eq!(snapshot(folder.path()), before);
}

#[test]
fn a_folder_segmented_into_itself_does_not_take_its_results_for_images() {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path().join("dir");
    copy_example("rocket.jpg", &dir, "rocket.jpg");
    for round in 0..2 {
        let output = segment(&[path_str(&dir), "--out", path_str(&dir)]);
        assert!(output.status.success(), "round {round}: {}", text(&output));
        let stderr = stderr_of(&output);
        let tally = if round == 0 {
            "1 segmented, 0 skipped"
        } else {
            "0 segmented, 1 skipped"
        };
        assert!(stderr.contains(tally), "round {round}: {stderr}");
        if round == 1 {
            assert!(stderr.contains("PNGs written by diffseg"), "{stderr}");
        }
    }
    assert_whole(&dir, "rocket");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "rocket.jpg",
            "rocket.json",
            "rocket.overlay.png",
            "rocket.png"
        ]
    );
}

#[test]
fn a_users_files_in_the_output_folder_are_never_replaced() {
    let folder = tempfile::tempdir().unwrap();
    let rocket = copy_example("rocket.jpg", folder.path(), "rocket.jpg");
    let out = folder.path().join("res");
    std::fs::create_dir_all(&out).unwrap();
    // The user's own files where results would go: a PNG, then a JSON.
    std::fs::copy(example_image("coffee.png"), out.join("rocket.png")).unwrap();
    for overwrite in [false, true] {
        let before = snapshot(folder.path());
        let mut args = vec![path_str(&rocket), "--out", path_str(&out)];
        if overwrite {
            args.push("--overwrite");
        }
        let output = segment(&args);
        assert!(!output.status.success(), "{}", text(&output));
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains("rocket.png is in the way") && stderr.contains("1 failed"),
            "{stderr}"
        );
        assert_eq!(snapshot(folder.path()), before, "--overwrite {overwrite}");
    }
    std::fs::remove_file(out.join("rocket.png")).unwrap();
    std::fs::write(out.join("rocket.json"), b"{\"my\": \"notes\"}\n").unwrap();
    let before = snapshot(folder.path());
    let output = segment(&[path_str(&rocket), "--out", path_str(&out), "--overwrite"]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        stderr_of(&output).contains("rocket.json is in the way"),
        "{}",
        text(&output)
    );
    assert_eq!(snapshot(folder.path()), before);
    // Moved away, the image is segmented.
    std::fs::remove_file(out.join("rocket.json")).unwrap();
    let output = segment(&[path_str(&rocket), "--out", path_str(&out)]);
    assert!(output.status.success(), "{}", text(&output));
    assert_whole(&out, "rocket");
}

#[test]
fn a_file_listed_twice_or_through_a_link_is_segmented_once() {
    let folder = tempfile::tempdir().unwrap();
    let a = folder.path().join("a");
    let photo = copy_example("chelsea.png", &a, "x.png");
    std::os::unix::fs::symlink(&a, folder.path().join("link")).unwrap();
    let list = folder.path().join("list.txt");
    let absolute = photo.to_string_lossy().into_owned();
    std::fs::write(
        &list,
        format!("a/x.png\n./a/x.png\nlink/x.png\n{absolute}\n"),
    )
    .unwrap();
    let out = folder.path().join("out");
    let weights = tiny_weights();
    let output = common::command(&[
        "segment",
        "--files-from",
        path_str(&list),
        "--out",
        path_str(&out),
        "--weights",
        &weights,
    ])
    .current_dir(folder.path())
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let stderr = stderr_of(&output);
    assert!(stderr.contains("1 segmented"), "{stderr}");
    assert_eq!(stderr.matches("segmented once").count(), 3, "{stderr}");
    assert_whole(&out.join("a"), "x");
}

#[test]
fn damaged_results_are_redone_and_reported() {
    let folder = tempfile::tempdir().unwrap();
    let photo = copy_example("chelsea.png", folder.path(), "cat.png");
    let out = folder.path().join("out");
    let first = segment(&[path_str(&photo), "--out", path_str(&out)]);
    assert!(first.status.success(), "{}", text(&first));
    // What the old disk-full fault left: an empty label PNG, a cut overlay.
    let overlay = std::fs::read(out.join("cat.overlay.png")).unwrap();
    std::fs::write(out.join("cat.png"), b"").unwrap();
    std::fs::write(out.join("cat.overlay.png"), &overlay[..overlay.len() / 2]).unwrap();
    let second = segment(&[path_str(&photo), "--out", path_str(&out)]);
    assert!(second.status.success(), "{}", text(&second));
    let stderr = stderr_of(&second);
    assert!(
        stderr.contains("damaged") && stderr.contains("1 segmented, 0 skipped"),
        "{stderr}"
    );
    assert_whole(&out, "cat");
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `4m`) at a new folder in `parent`, or
    /// says why it cannot (not root, no mount permission).
    fn mount(parent: &Path, size: &str) -> Result<Tmpfs, String> {
        let point = parent.join("tmpfs");
        std::fs::create_dir_all(&point).map_err(|error| error.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&point)
            .output()
            .map_err(|error| format!("cannot run mount: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs(point))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system of `folder` until a write fails; returns the file.
fn fill(folder: &Path, name: &str, at_most: usize) -> PathBuf {
    use std::io::Write;
    let path = folder.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0x5a_u8; 4096];
    let mut written = 0;
    while written < at_most && file.write_all(&block).is_ok() {
        written += block.len();
    }
    let _ = file.sync_all();
    path
}

#[test]
fn overwriting_on_a_full_disk_keeps_the_previous_results() {
    let folder = tempfile::tempdir().unwrap();
    let photo = copy_example("coffee.png", folder.path(), "coffee.png");
    let tmpfs = match Tmpfs::mount(folder.path(), "4m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            eprintln!("DISK-FULL TEST NOT RUN: {reason}");
            assert!(
                std::env::var("DIFFSEG_REQUIRE_TMPFS").as_deref() != Ok("1"),
                "DIFFSEG_REQUIRE_TMPFS=1 and the disk-full test cannot run: {reason}"
            );
            return;
        }
    };
    let out = tmpfs.0.join("out");
    let first = segment(&[path_str(&photo), "--out", path_str(&out)]);
    assert!(first.status.success(), "{}", text(&first));
    let results = snapshot(&out);
    let label_bytes = std::fs::metadata(out.join("coffee.png")).unwrap().len() as usize;
    let overlay_bytes = std::fs::metadata(out.join("coffee.overlay.png"))
        .unwrap()
        .len() as usize;
    assert!(
        overlay_bytes > label_bytes + 16 * 1024,
        "{overlay_bytes} {label_bytes}"
    );
    // A full disk, then room for the label PNG but not the overlay: a reserve
    // of that size is written, the rest filled, the reserve removed.
    for room in [0, label_bytes + 8 * 1024] {
        let reserve = fill(&tmpfs.0, "reserve", room);
        let filler = fill(&tmpfs.0, "filler", usize::MAX);
        std::fs::remove_file(&reserve).unwrap();
        let output = segment(&[path_str(&photo), "--out", path_str(&out), "--overwrite"]);
        std::fs::remove_file(&filler).unwrap();
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "room {room}: {}", text(&output));
        assert!(
            stderr.contains("1 failed") && stderr.contains("coffee.png"),
            "room {room}: {stderr}"
        );
        assert_eq!(
            snapshot(&out),
            results,
            "room {room}: the previous results intact"
        );
    }
    // With room again, the previous results still count as done.
    let output = segment(&[path_str(&photo), "--out", path_str(&out)]);
    assert!(
        stderr_of(&output).contains("0 segmented, 1 skipped"),
        "{}",
        text(&output)
    );
}

#[test]
fn runs_killed_at_any_moment_resume_to_whole_results() {
    let folder = tempfile::tempdir().unwrap();
    let images = folder.path().join("images");
    let mut stems = Vec::new();
    for (name, extension) in [("rocket", "jpg"), ("chelsea", "png"), ("coffee", "png")] {
        copy_example(
            &format!("{name}.{extension}"),
            &images,
            &format!("{name}.{extension}"),
        );
        stems.push(name.to_string());
    }
    let out = folder.path().join("out");
    let weights = tiny_weights();
    // Each run redoes every image (`--overwrite`), so kills land while
    // results are new and while earlier ones are being replaced.
    let run = || {
        common::command(&[
            "segment",
            path_str(&images),
            "--out",
            path_str(&out),
            "--weights",
            &weights,
            "--quiet",
            "--overwrite",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
    };
    // How long a whole run takes here bounds the delays.
    let started = Instant::now();
    assert!(run().wait().unwrap().success());
    let whole_run = started.elapsed();
    std::fs::remove_dir_all(&out).unwrap();
    let mut runner = TestRunner::deterministic();
    let delays = proptest::collection::vec(0..whole_run.as_millis() as u64, 20)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let mut finished = 0;
    for delay in &delays {
        let mut child = run();
        std::thread::sleep(Duration::from_millis(*delay));
        if child.try_wait().unwrap().is_some() {
            finished += 1;
        }
        let _ = child.kill();
        child.wait().unwrap();
    }
    eprintln!(
        "killed 20 runs after {delays:?} ms (a whole run: {} ms; {finished} finished first)",
        whole_run.as_millis()
    );
    let output = segment(&[path_str(&images), "--out", path_str(&out)]);
    assert!(output.status.success(), "{}", text(&output));
    for stem in &stems {
        assert_whole(&out, stem);
    }
    // Resumed again, every result counts as done.
    let output = segment(&[path_str(&images), "--out", path_str(&out)]);
    let done = format!("0 segmented, {} skipped", stems.len());
    assert!(stderr_of(&output).contains(&done), "{}", text(&output));
}

#[test]
fn attention_and_merge_never_write_over_an_input_or_a_users_file() {
    let folder = tempfile::tempdir().unwrap();
    let photo = copy_example("chelsea.png", folder.path(), "cat.png");
    let attention = folder.path().join("cat.safetensors");
    let weights = tiny_weights();
    let attend = |out: &Path| {
        diffseg_subcommand(
            "attention",
            &[
                path_str(&photo),
                "--out",
                path_str(out),
                "--weights",
                &weights,
            ],
        )
    };
    let user_file = folder.path().join("notes.txt");
    std::fs::write(&user_file, b"my notes").unwrap();
    let before = snapshot(folder.path());
    for (out, says) in [(&photo, "is an input"), (&user_file, "is in the way")] {
        let output = attend(out);
        assert!(!output.status.success(), "{}", text(&output));
        assert!(stderr_of(&output).contains(says), "{}", text(&output));
        assert_eq!(snapshot(folder.path()), before);
    }
    // Its own file it replaces.
    for _ in 0..2 {
        let output = attend(&attention);
        assert!(output.status.success(), "{}", text(&output));
    }
    let before = snapshot(folder.path());
    let merge = |out: &Path, json: &Path| {
        diffseg_subcommand(
            "merge",
            &[
                path_str(&attention),
                "--out",
                path_str(out),
                "--json",
                path_str(json),
            ],
        )
    };
    let labels = folder.path().join("labels.png");
    let json = folder.path().join("labels.json");
    for (out, json, says) in [
        (&attention, &json, "is an input"),
        (&labels, &attention, "is an input"),
        (&photo, &json, "is in the way"),
        (&labels, &user_file, "is in the way"),
    ] {
        let output = merge(out, json);
        assert!(!output.status.success(), "{}", text(&output));
        assert!(stderr_of(&output).contains(says), "{}", text(&output));
        assert_eq!(snapshot(folder.path()), before);
    }
    for _ in 0..2 {
        let output = merge(&labels, &json);
        assert!(output.status.success(), "{}", text(&output));
    }
}

/// The names of the files in `folder`, sorted.
fn names_in(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `--outputs` writes the kinds asked for, and a rerun resumes exactly those:
/// a result is skipped when its JSON records every kind asked for, redone when
/// one is missing; without json nothing can be resumed.
#[test]
fn output_kinds_are_written_and_resumed_as_asked() {
    let folder = tempfile::tempdir().unwrap();
    let photo = copy_example("rocket.jpg", &folder.path().join("in"), "rocket.jpg");
    let out = folder.path().join("out");
    let run = |outputs: &str, out: &Path| {
        let output = segment(&[
            path_str(&photo),
            "--out",
            path_str(out),
            "--outputs",
            outputs,
        ]);
        assert!(output.status.success(), "{outputs}: {}", text(&output));
        stderr_of(&output)
    };

    let stderr = run("labels,json", &out);
    assert!(stderr.contains("1 segmented, 0 skipped"), "{stderr}");
    assert_eq!(names_in(&out), ["rocket.json", "rocket.png"]);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("rocket.json")).unwrap()).unwrap();
    assert_eq!(json["outputs"], serde_json::json!(["labels", "json"]));
    let files = json["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{json}");
    assert_eq!(files[0]["name"], "rocket.png");
    let first = snapshot(&out);

    // The same kinds again: skipped, nothing rewritten. In another order too.
    for outputs in ["labels,json", "json,labels"] {
        let stderr = run(outputs, &out);
        assert!(
            stderr.contains("0 segmented, 1 skipped"),
            "{outputs}: {stderr}"
        );
        assert_eq!(snapshot(&out), first);
    }
    // Fewer kinds, the JSON among them: what is there covers them.
    let stderr = run("json", &out);
    assert!(stderr.contains("0 segmented, 1 skipped"), "{stderr}");

    // The overlay added: redone, and now whole with all three.
    let stderr = run("labels,overlay,json", &out);
    assert!(
        stderr.contains("lack overlay") && stderr.contains("1 segmented, 0 skipped"),
        "{stderr}"
    );
    assert_whole(&out, "rocket");
    let stderr = run("labels,overlay,json", &out);
    assert!(stderr.contains("0 segmented, 1 skipped"), "{stderr}");

    // Without json: written each time, never a JSON.
    let bare = folder.path().join("bare");
    for round in 0..2 {
        let stderr = run("labels,overlay", &bare);
        assert!(
            stderr.contains("1 segmented, 0 skipped")
                && stderr.contains("every image is segmented"),
            "round {round}: {stderr}"
        );
        assert_eq!(names_in(&bare), ["rocket.overlay.png", "rocket.png"]);
    }
}

/// The per-image JSON is one line unless `--pretty`, and both read the same.
#[test]
fn json_is_compact_unless_pretty() {
    let folder = tempfile::tempdir().unwrap();
    let photo = copy_example("rocket.jpg", folder.path(), "rocket.jpg");
    let mut read = Vec::new();
    for (out, pretty) in [("compact", false), ("pretty", true)] {
        let out = folder.path().join(out);
        let mut args = vec![
            path_str(&photo),
            "--out",
            path_str(&out),
            "--outputs",
            "json",
        ];
        if pretty {
            args.push("--pretty");
        }
        let output = segment(&args);
        assert!(output.status.success(), "{}", text(&output));
        let bytes = std::fs::read(out.join("rocket.json")).unwrap();
        let lines = bytes.iter().filter(|&&byte| byte == b'\n').count();
        assert_eq!(lines == 1, !pretty, "{lines} lines");
        read.push(serde_json::from_slice::<serde_json::Value>(&bytes).unwrap());
    }
    assert_eq!(read[0], read[1]);
}
