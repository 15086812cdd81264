//! Every crate whose integration tests are one binary declares each of its test files,
//! since cargo no longer finds them on its own (`autotests = false`); and the consumer
//! example's lock file (its own workspace) keeps up with the library's dependencies.

use std::fs;
use std::path::Path;

/// A test file that is neither a module of `tests/main.rs` nor a `[[test]]` target of its
/// own would never be compiled, and its tests would pass by not running.
#[test]
fn every_test_file_is_compiled() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["diffseg-cli", "diffseg", "diffseg-core", "diffseg-sd"] {
        let dir = crates.join(krate);
        let main = fs::read_to_string(dir.join("tests/main.rs")).unwrap();
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains("autotests = false"),
            "{krate}: expected autotests = false"
        );
        for entry in fs::read_dir(dir.join("tests")).unwrap() {
            let path = entry.unwrap().path();
            let (Some(stem), Some("rs")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            let declared = stem == "main"
                || main.lines().any(|line| line == format!("mod {stem};"))
                || manifest.contains(&format!("path = \"tests/{stem}.rs\""));
            assert!(
                declared,
                "{krate}/tests/{stem}.rs is not compiled: declare `mod {stem};` in tests/main.rs"
            );
        }
    }
}

/// CI builds `examples/consumer` with `--locked`, 30 minutes into its run: a dependency added
/// to the library without the consumer's `Cargo.lock` fails there. This fails first. Fix:
/// copy the workspace's `Cargo.lock` over the consumer's and run `cargo metadata
/// --manifest-path examples/consumer/Cargo.toml` (which prunes it to the consumer's graph).
#[test]
fn the_consumer_lock_file_is_up_to_date() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/consumer/Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
