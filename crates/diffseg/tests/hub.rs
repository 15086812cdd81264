//! Downloads from a local stand-in for the Hugging Face Hub
//! (`support/hub_server.rs`, on 127.0.0.1): first run, cache, revision,
//! variants, resuming, the checksum, offline mode and the Hub's refusals.
//! Each test has its own server and cache folder and passes the Hub settings
//! explicitly, so nothing depends on (or changes) the process environment and
//! nothing leaves the machine. (ureq ignores `NO_PROXY`: with `HTTP_PROXY`
//! set, these requests would go to the proxy.)

#[path = "support/hub_server.rs"]
mod hub_server;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use diffseg::weights::{
    DownloadProgress, FileVariant, HubMissing, HubModel, HubSettings, WeightsOrigin, WEIGHTS_ENV,
};
use diffseg::Error;
use hub_server::{assert_holds, fixture_files, sha256, Access, HubServer, ServedRepo};
use tempfile::TempDir;

const MODEL: &str = "tiny/sd";

fn settings(server: &HubServer, cache: &TempDir) -> HubSettings {
    HubSettings {
        endpoint: server.endpoint.clone(),
        token: None,
        cache: cache.path().to_path_buf(),
        offline: false,
        retries: 0,
        retry_delay: Duration::from_millis(10),
    }
}

fn model(server: &HubServer, cache: &TempDir) -> HubModel {
    HubModel {
        id: MODEL.to_string(),
        revision: "main".to_string(),
        variant: FileVariant::Full,
        settings: settings(server, cache),
    }
}

/// What a download reported, per file.
#[derive(Default)]
struct Recorded {
    sizes: BTreeMap<String, u64>,
    received: BTreeMap<String, u64>,
    finished: Vec<String>,
    retries: Vec<String>,
    current: String,
}

impl DownloadProgress for Recorded {
    fn start(&mut self, file: &str, size: u64) {
        self.current = file.to_string();
        self.sizes.insert(file.to_string(), size);
    }
    fn advance(&mut self, bytes: u64) {
        *self.received.entry(self.current.clone()).or_default() += bytes;
    }
    fn finish(&mut self, file: &str) {
        self.finished.push(file.to_string());
    }
    fn retry(&mut self, file: &str, _reason: &str, _delay: Duration) {
        self.retries.push(file.to_string());
        // A retry reports the bytes already there afresh.
        self.received.remove(file);
    }
}

const FULL_FILES: [&str; 6] = [
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
];

fn partial_files(cache: &TempDir) -> Vec<PathBuf> {
    let blobs = cache.path().join("models--tiny--sd/blobs");
    std::fs::read_dir(blobs)
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.extension().is_some_and(|e| e == "part"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_first_fetch_downloads_with_progress_and_the_second_makes_no_request() {
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    let cache = TempDir::new().unwrap();
    let model = model(&server, &cache);
    assert_eq!(model.cached(), None);

    let mut progress = Recorded::default();
    let snapshot = model.fetch(&mut progress).unwrap();
    let commit = ServedRepo::tiny(MODEL).commit;
    assert_eq!(
        snapshot,
        cache
            .path()
            .join("models--tiny--sd/snapshots")
            .join(&commit)
    );
    assert_holds(&snapshot, &FULL_FILES);
    // Full-precision files for an f32 run: no fp16 file was asked for.
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .all(|request| !request.path.contains("fp16")),
        "{requests:#?}"
    );
    // The LFS files came through the redirect to the content store.
    assert!(requests
        .iter()
        .any(|request| request.path.starts_with("/cdn/")));
    // Progress: every file announced with its size, received whole, finished.
    let served = fixture_files();
    for file in FULL_FILES {
        let size = served[file].len() as u64;
        assert_eq!(progress.sizes.get(file), Some(&size), "{file}");
        assert_eq!(progress.received.get(file), Some(&size), "{file}");
        assert!(progress.finished.iter().any(|f| f == file), "{file}");
    }

    // The second run finds everything in the cache without asking the Hub.
    let before = server.requests().len();
    assert_eq!(model.fetch(&mut ()).unwrap(), snapshot);
    assert_eq!(model.cached(), Some(snapshot));
    assert_eq!(
        server.requests().len(),
        before,
        "the second run made requests"
    );
}

#[test]
fn the_fp16_variant_downloads_half_precision_files() {
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    let cache = TempDir::new().unwrap();
    let model = model(&server, &cache).with_variant(FileVariant::Fp16);
    let snapshot = model.fetch(&mut ()).unwrap();
    assert_holds(
        &snapshot,
        &[
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "text_encoder/model.fp16.safetensors",
        ],
    );
    assert!(!snapshot
        .join("unet/diffusion_pytorch_model.safetensors")
        .exists());
}

#[test]
fn full_precision_falls_back_to_fp16_where_the_repository_has_only_those() {
    let repo = ServedRepo::tiny(MODEL)
        .without(|path| path.ends_with(".safetensors") && !path.ends_with(".fp16.safetensors"));
    let server = HubServer::start(vec![repo]);
    let cache = TempDir::new().unwrap();
    let snapshot = model(&server, &cache).fetch(&mut ()).unwrap();
    assert_holds(
        &snapshot,
        &["unet/diffusion_pytorch_model.fp16.safetensors"],
    );
    let not_found = server
        .requests()
        .iter()
        .filter(|request| request.status == 404)
        .count();
    assert_eq!(not_found, 3, "one 404 per network's full-precision file");
}

#[test]
fn a_revision_downloads_that_commit_and_an_unknown_one_is_named() {
    let served = ServedRepo::tiny(MODEL);
    let commit = served.commit.clone();
    let server = HubServer::start(vec![served]);
    let cache = TempDir::new().unwrap();
    let model = model(&server, &cache).with_revision(&commit);
    let snapshot = model.fetch(&mut ()).unwrap();
    assert!(snapshot.ends_with(&commit));
    assert!(server
        .requests()
        .iter()
        .filter(|request| !request.path.starts_with("/cdn/"))
        .all(|request| request.path.contains(&format!("/resolve/{commit}/"))));
    let before = server.requests().len();
    assert_eq!(model.cached(), Some(snapshot));
    assert_eq!(server.requests().len(), before);

    let error = model.with_revision("v9").fetch(&mut ()).unwrap_err();
    assert!(
        matches!(
            error,
            Error::HubNotFound {
                missing: HubMissing::Revision,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    for expected in ["tiny/sd", "revision `v9`", "--revision", "404"] {
        assert!(
            message.contains(expected),
            "`{expected}` missing: {message}"
        );
    }
}

#[test]
fn an_interrupted_download_is_resumed_by_the_next_run() {
    const CUT: &str = "unet/diffusion_pytorch_model.safetensors";
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    server.cut_once(CUT);
    let cache = TempDir::new().unwrap();
    let model = model(&server, &cache);

    let error = model.fetch(&mut ()).unwrap_err();
    assert!(
        matches!(error, Error::Download { ref file, .. } if file == CUT),
        "{error:?}"
    );
    // Half the file waits in a partial file; nothing pretends to be complete.
    let partial = partial_files(&cache);
    assert_eq!(partial.len(), 1, "{partial:?}");
    let kept = std::fs::metadata(&partial[0]).unwrap().len();
    let size = fixture_files()[CUT].len() as u64;
    assert!(kept > 0 && kept < size, "kept {kept} of {size} bytes");
    assert_eq!(model.cached(), None);

    let mut progress = Recorded::default();
    let snapshot = model.fetch(&mut progress).unwrap();
    assert_holds(&snapshot, &FULL_FILES);
    assert!(partial_files(&cache).is_empty());
    // The second run asked only for the missing part, and did not fetch the
    // config it already had.
    let resumed = format!("bytes={kept}-");
    assert!(
        server
            .requests()
            .iter()
            .any(|request| request.range.as_deref() == Some(resumed.as_str())),
        "no request for {resumed}"
    );
    assert!(!progress.sizes.contains_key("unet/config.json"));
}

#[test]
fn a_cut_download_is_retried_and_resumed_in_the_same_run() {
    const CUT: &str = "text_encoder/model.safetensors";
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    server.cut_once(CUT);
    let cache = TempDir::new().unwrap();
    let mut model = model(&server, &cache);
    model.settings.retries = 1;
    let mut progress = Recorded::default();
    let snapshot = model.fetch(&mut progress).unwrap();
    assert_holds(&snapshot, &FULL_FILES);
    assert_eq!(progress.retries, [CUT]);
    let size = fixture_files()[CUT].len() as u64;
    assert_eq!(progress.received.get(CUT), Some(&size));
}

#[test]
fn a_garbled_download_is_never_taken_for_the_file() {
    const GARBLED: &str = "vae/diffusion_pytorch_model.safetensors";
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    server.garble_once(GARBLED);
    let cache = TempDir::new().unwrap();
    let model = model(&server, &cache);

    let error = model.fetch(&mut ()).unwrap_err();
    assert!(error.to_string().contains("SHA-256"), "{error}");
    assert_eq!(model.cached(), None);
    let blob = cache
        .path()
        .join("models--tiny--sd/blobs")
        .join(sha256(&fixture_files()[GARBLED]));
    assert!(!blob.exists(), "the garbled blob was kept");

    let snapshot = model.fetch(&mut ()).unwrap();
    assert_holds(&snapshot, &FULL_FILES);
}

#[test]
fn offline_fails_without_a_request_and_lists_the_files() {
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    let cache = TempDir::new().unwrap();
    let mut model = model(&server, &cache);
    model.settings.offline = true;
    let error = model.fetch(&mut ()).unwrap_err();
    assert!(matches!(error, Error::WeightsNotFound { .. }), "{error:?}");
    let message = error.to_string();
    for expected in [
        "HF_HUB_OFFLINE",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "text_encoder/model.safetensors",
        "--weights",
        "diffseg fetch",
    ] {
        assert!(
            message.contains(expected),
            "`{expected}` missing: {message}"
        );
    }
    assert!(server.requests().is_empty());
}

#[test]
fn an_unknown_repository_is_a_404_that_names_it() {
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    let cache = TempDir::new().unwrap();
    let mut model = model(&server, &cache);
    model.id = "nobody/nothing".to_string();
    let error = model.fetch(&mut ()).unwrap_err();
    assert!(
        matches!(
            error,
            Error::HubNotFound {
                missing: HubMissing::Repository,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    for expected in ["nobody/nothing", "404", "--model", &server.endpoint] {
        assert!(
            message.contains(expected),
            "`{expected}` missing: {message}"
        );
    }
    // Not worth a retry, nor the other files.
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn a_private_repository_needs_its_token() {
    let private = ServedRepo::tiny(MODEL).with_access(Access::Private("hf_secret".into()));
    let server = HubServer::start(vec![private]);
    let cache = TempDir::new().unwrap();
    let mut model = model(&server, &cache);

    let error = model.fetch(&mut ()).unwrap_err();
    assert!(
        matches!(error, Error::HubAccessDenied { status: 401, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    for expected in ["tiny/sd", "401", "HF_TOKEN", "huggingface-cli login"] {
        assert!(
            message.contains(expected),
            "`{expected}` missing: {message}"
        );
    }

    model.settings.token = Some("hf_wrong".into());
    let message = model.fetch(&mut ()).unwrap_err().to_string();
    assert!(message.contains("not accepted"), "{message}");

    model.settings.token = Some("hf_secret".into());
    let snapshot = model.fetch(&mut ()).unwrap();
    assert_holds(&snapshot, &FULL_FILES);
    assert!(server
        .requests()
        .iter()
        .any(|request| request.authorization.as_deref() == Some("Bearer hf_secret")));
}

#[test]
fn a_gated_repository_says_to_accept_its_conditions() {
    let gated = ServedRepo::tiny(MODEL).with_access(Access::Gated);
    let server = HubServer::start(vec![gated]);
    let cache = TempDir::new().unwrap();
    let mut model = model(&server, &cache);
    model.settings.token = Some("hf_token".into());
    let error = model.fetch(&mut ()).unwrap_err();
    assert!(
        matches!(error, Error::HubAccessDenied { status: 403, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    for expected in [
        "403",
        "accept its conditions",
        &format!("{}/tiny/sd", server.endpoint),
    ] {
        assert!(
            message.contains(expected),
            "`{expected}` missing: {message}"
        );
    }
}

#[test]
fn a_renamed_repository_is_followed_to_its_new_name() {
    let server = HubServer::start(vec![ServedRepo::tiny("tiny/sd-new").renamed_from(MODEL)]);
    let cache = TempDir::new().unwrap();
    let snapshot = model(&server, &cache).fetch(&mut ()).unwrap();
    assert_holds(&snapshot, &FULL_FILES);
    assert!(server
        .requests()
        .iter()
        .any(|request| request.status == 307));
}

#[test]
fn a_segmenter_downloads_through_the_hub_then_uses_the_cache() {
    assert!(
        std::env::var_os(WEIGHTS_ENV).is_none(),
        "unset {WEIGHTS_ENV} to run this test: it would be used instead of the Hub"
    );
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    let cache = TempDir::new().unwrap();
    let build = || {
        diffseg::Segmenter::builder()
            .model(MODEL)
            .hub(settings(&server, &cache))
            .build()
            .unwrap()
    };
    let segmenter = build();
    assert_eq!(segmenter.weights().origin, WeightsOrigin::Downloaded);
    assert!(!server.requests().is_empty());
    assert_holds(&segmenter.weights().path, &FULL_FILES);

    let before = server.requests().len();
    let segmenter = build();
    assert_eq!(segmenter.weights().origin, WeightsOrigin::HuggingFaceCache);
    assert_eq!(server.requests().len(), before);
}

#[test]
fn files_cached_under_an_older_commit_of_the_branch_are_fetched_into_the_new_one() {
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    let cache = TempDir::new().unwrap();
    // An earlier download left `main` at another commit with one file.
    let repo = cache.path().join("models--tiny--sd");
    let old = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), old).unwrap();
    let old_unet = repo.join("snapshots").join(old).join("unet");
    std::fs::create_dir_all(&old_unet).unwrap();
    std::fs::write(
        old_unet.join("config.json"),
        &fixture_files()["unet/config.json"],
    )
    .unwrap();

    let snapshot = model(&server, &cache).fetch(&mut ()).unwrap();
    assert!(snapshot.ends_with(ServedRepo::tiny(MODEL).commit));
    assert_holds(&snapshot, &FULL_FILES);
}

#[test]
fn both_variants_missing_names_both_files() {
    let repo = ServedRepo::tiny(MODEL)
        .without(|path| path.starts_with("vae/") && path.ends_with(".safetensors"));
    let server = HubServer::start(vec![repo]);
    let cache = TempDir::new().unwrap();
    let error = model(&server, &cache).fetch(&mut ()).unwrap_err();
    let message = error.to_string();
    for expected in [
        "vae/diffusion_pytorch_model.safetensors (or vae/diffusion_pytorch_model.fp16.safetensors)",
        "404",
        "diffusers layout",
    ] {
        assert!(
            message.contains(expected),
            "`{expected}` missing: {message}"
        );
    }
}
