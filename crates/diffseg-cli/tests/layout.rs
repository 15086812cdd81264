//! Every crate whose integration tests are one binary declares each of its test files,
//! since cargo no longer finds them on its own (`autotests = false`).

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
