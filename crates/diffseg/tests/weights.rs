//! The weights lookup order: explicit path, `DIFFSEG_WEIGHTS`, the Hugging Face
//! cache, and the offline error. One test function, because it changes
//! environment variables that the whole test process shares.

use std::path::{Path, PathBuf};

use diffseg::weights::{locate_weights, resolve_weights, HubModel, WeightsOrigin, WEIGHTS_ENV};
use diffseg::Error;

fn tiny_weights() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../diffseg-sd/tests/fixtures/tiny"
    ))
}

/// Lays the tiny model out as hf-hub's cache does: blobs, a ref, a snapshot.
fn fake_hub_cache(cache: &Path, model: &str) -> PathBuf {
    let repo = cache.join(format!("models--{}", model.replace('/', "--")));
    let revision = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), revision).unwrap();
    let snapshot = repo.join("snapshots").join(revision);
    for (component, weights) in [
        ("unet", "diffusion_pytorch_model.fp16.safetensors"),
        ("vae", "diffusion_pytorch_model.fp16.safetensors"),
        ("text_encoder", "model.fp16.safetensors"),
    ] {
        std::fs::create_dir_all(snapshot.join(component)).unwrap();
        for file in ["config.json", weights] {
            std::fs::copy(
                tiny_weights().join(component).join(file),
                snapshot.join(component).join(file),
            )
            .unwrap();
        }
    }
    snapshot
}

#[test]
fn weights_are_found_in_order() {
    let home = tempfile::tempdir().unwrap();
    // SAFETY (edition 2021: safe calls): this is the only test in this binary.
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::remove_var(WEIGHTS_ENV);
    let model = "someone/tiny-sd";

    // Nothing anywhere, offline: the error says which files to put where.
    let error = resolve_weights(None, &HubModel::new(model), true, &mut ()).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::WeightsNotFound { .. }));
    for needed in [
        "unet/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "--weights",
        WEIGHTS_ENV,
        "diffseg fetch",
    ] {
        assert!(
            message.contains(needed),
            "`{needed}` missing from: {message}"
        );
    }

    // In the Hugging Face cache (fp16 files only): found there.
    let snapshot = fake_hub_cache(&home.path().join("hub"), model);
    let found = locate_weights(None, model).unwrap().unwrap();
    assert_eq!(found.origin, WeightsOrigin::HuggingFaceCache);
    assert_eq!(found.path, snapshot);
    // ... and it loads (the loader falls back to the fp16 files).
    let segmenter = diffseg::Segmenter::builder()
        .model(model)
        .allow_download(false)
        .build()
        .unwrap();
    assert_eq!(segmenter.weights().path, snapshot);

    // DIFFSEG_WEIGHTS wins over the cache; an explicit path wins over both.
    std::env::set_var(WEIGHTS_ENV, tiny_weights());
    let found = locate_weights(None, model).unwrap().unwrap();
    assert_eq!(
        (found.origin, found.path),
        (WeightsOrigin::Environment, tiny_weights())
    );
    let explicit = tiny_weights().join("tiny-ldm.safetensors");
    let found = locate_weights(Some(&explicit), model).unwrap().unwrap();
    assert_eq!(
        (found.origin, found.path),
        (WeightsOrigin::Explicit, explicit)
    );

    // A DIFFSEG_WEIGHTS that points nowhere is an error, not a silent fallback.
    std::env::set_var(WEIGHTS_ENV, home.path().join("nowhere"));
    assert!(matches!(
        locate_weights(None, model),
        Err(Error::WeightsPathMissing {
            origin: WeightsOrigin::Environment,
            ..
        })
    ));
    std::env::remove_var(WEIGHTS_ENV);
}
