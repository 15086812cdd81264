//! The committed CLIP tokenizer fixture (tools/reference/tokenizer_reference.py):
//! CLIP's published BPE as a gzipped diffusers `tokenizer/` folder, and
//! transformers' ids for a few hundred strings. Shared with the facade's tests.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The fixture's folder.
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffseg-sd/tests/fixtures/clip-tokenizer")
}

/// The fixture unpacked into a temporary diffusers `tokenizer/` folder
/// (`vocab.json`, `merges.txt`, `tokenizer_config.json`).
pub fn unpacked() -> tempfile::TempDir {
    let folder = tempfile::tempdir().unwrap();
    for name in ["vocab.json", "merges.txt"] {
        let packed = std::fs::File::open(fixture().join(format!("{name}.gz"))).unwrap();
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(packed)
            .read_to_end(&mut text)
            .unwrap();
        std::fs::write(folder.path().join(name), text).unwrap();
    }
    std::fs::copy(
        fixture().join("tokenizer_config.json"),
        folder.path().join("tokenizer_config.json"),
    )
    .unwrap();
    folder
}
