//! Downloads from a local stand-in for the Hugging Face Hub
//! (`support/hub_server.rs`, on 127.0.0.1): first run, cache, revision,
//! variants, resuming, the checksum, offline mode and the Hub's refusals, and
//! hostile answers: a token redirected to another host, paths in the ETag or
//! the commit, a stalled, short or long body, a range request answered whole.
//! Each test has its own server and cache folder and passes the Hub settings
//! explicitly, so nothing depends on (or changes) the process environment and
//! nothing leaves the machine. (ureq ignores `NO_PROXY`: with `HTTP_PROXY`
//! set, these requests would go to the proxy.)

#[path = "support/hub_server.rs"]
mod hub_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diffseg::weights::{
    DownloadProgress, FileVariant, HubMissing, HubModel, HubSettings, WeightsOrigin, WEIGHTS_ENV,
};
use diffseg::Error;
use hub_server::{
    assert_holds, fixture_files, git_blob_sha1, sha256, Access, Fault, HubServer, ServedRepo,
};
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
        download_timeout: Duration::from_secs(10),
        etag_timeout: Duration::from_secs(10),
        allow_http: false,
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

/// Progress that asks to stop once part of `file` has arrived (a Ctrl-C, say).
struct StopDuring {
    file: &'static str,
    current: String,
    received: u64,
    asked_while_receiving: bool,
}

impl DownloadProgress for StopDuring {
    fn start(&mut self, file: &str, _size: u64) {
        self.current = file.to_string();
    }
    fn advance(&mut self, bytes: u64) {
        if self.current == self.file {
            self.received += bytes;
        }
    }
    fn finish(&mut self, _file: &str) {}
    fn retry(&mut self, _file: &str, _reason: &str, _delay: Duration) {}
    fn interrupted(&mut self) -> bool {
        let stop = self.current == self.file && self.received > 0;
        self.asked_while_receiving |= stop;
        stop
    }
}

#[test]
fn a_download_stops_between_chunks_when_asked_and_the_next_run_resumes_it() {
    const STOPPED: &str = "unet/diffusion_pytorch_model.safetensors";
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    let cache = TempDir::new().unwrap();
    let model = model(&server, &cache);

    let mut stop = StopDuring {
        file: STOPPED,
        current: String::new(),
        received: 0,
        asked_while_receiving: false,
    };
    let error = model.fetch(&mut stop).unwrap_err();
    assert!(
        matches!(error, Error::DownloadInterrupted { ref file, .. } if file == STOPPED),
        "{error:?}"
    );
    assert!(stop.asked_while_receiving);
    // Stopped after a chunk, not at the end: what arrived waits in the partial file.
    let partial = partial_files(&cache);
    assert_eq!(partial.len(), 1, "{partial:?}");
    let kept = std::fs::metadata(&partial[0]).unwrap().len();
    let size = fixture_files()[STOPPED].len() as u64;
    assert!(kept > 0 && kept < size, "kept {kept} of {size} bytes");
    assert_eq!(model.cached(), None);

    let snapshot = model.fetch(&mut ()).unwrap();
    assert_holds(&snapshot, &FULL_FILES);
    let resumed = format!("bytes={kept}-");
    assert!(
        server
            .requests()
            .iter()
            .any(|request| request.range.as_deref() == Some(resumed.as_str())),
        "no request for {resumed}"
    );
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

/// A cache folder inside a folder of its own, to tell that nothing was
/// written beside the cache.
struct Sandbox {
    root: TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let root = TempDir::new().unwrap();
        std::fs::create_dir(root.path().join("cache")).unwrap();
        Sandbox { root }
    }

    fn cache(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    fn model(&self, server: &HubServer) -> HubModel {
        let mut model = HubModel::new(MODEL).with_settings(HubSettings {
            endpoint: server.endpoint.clone(),
            token: None,
            cache: self.cache(),
            offline: false,
            retries: 0,
            retry_delay: Duration::from_millis(10),
            download_timeout: Duration::from_secs(10),
            etag_timeout: Duration::from_secs(10),
            allow_http: false,
        });
        model.revision = "main".to_string();
        model
    }

    /// Nothing but the cache folder beside it, and nothing in the cache that
    /// is not a plain file, a folder or a link that stays inside the cache.
    fn assert_nothing_outside_the_cache(&self) {
        let beside: Vec<_> = std::fs::read_dir(self.root.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(beside, ["cache"], "written beside the cache");
        let cache = std::fs::canonicalize(self.cache()).unwrap();
        assert_stays_inside(&cache, &cache);
    }
}

fn assert_stays_inside(folder: &Path, cache: &Path) {
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_symlink() {
            let target = std::fs::canonicalize(&path).unwrap();
            assert!(
                target.starts_with(cache),
                "{} leads to {}",
                path.display(),
                target.display()
            );
        } else if meta.is_dir() {
            assert_stays_inside(&path, cache);
        }
    }
}

/// The blob of `file` and whether the snapshot links to it.
fn blob_of(cache: &Path, etag: &str) -> PathBuf {
    cache.join("models--tiny--sd/blobs").join(etag)
}

const CONFIG: &str = "unet/config.json";

#[test]
fn the_token_is_never_sent_to_the_content_host() {
    let private = ServedRepo::tiny(MODEL).with_access(Access::Private("hf_secret".into()));
    let server = HubServer::start_with_content_host(vec![private]);
    let sandbox = Sandbox::new();
    let mut model = sandbox.model(&server);
    model.settings.token = Some("hf_secret".into());
    let snapshot = model.fetch(&mut ()).unwrap();
    assert_holds(&snapshot, &FULL_FILES);
    let requests = server.requests();
    let content: Vec<_> = requests
        .iter()
        .filter(|request| request.host.starts_with("localhost:"))
        .collect();
    assert_eq!(content.len(), 3, "one per weights file: {requests:#?}");
    assert!(
        content
            .iter()
            .all(|request| request.authorization.is_none()),
        "{content:#?}"
    );
    assert!(requests
        .iter()
        .filter(|request| request.host.starts_with("127.0.0.1:"))
        .all(|request| request.authorization.as_deref() == Some("Bearer hf_secret")));
    sandbox.assert_nothing_outside_the_cache();
}

#[test]
fn an_etag_holding_a_path_is_refused_before_anything_is_written() {
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    let sandbox = Sandbox::new();
    let escape = sandbox.root.path().join("escaped");
    server.forge_etag(escape.to_str().unwrap());
    let error = sandbox.model(&server).fetch(&mut ()).unwrap_err();
    assert!(
        matches!(error, Error::HubInvalidAnswer { header: "ETag", ref file, .. } if file == CONFIG),
        "{error:?}"
    );
    assert!(error.to_string().contains("40 hex digits"), "{error}");
    assert!(!escape.exists());
    sandbox.assert_nothing_outside_the_cache();
}

#[test]
fn a_commit_holding_a_path_is_refused_before_anything_is_written() {
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    let sandbox = Sandbox::new();
    server.forge_commit("../../../escaped");
    let error = sandbox.model(&server).fetch(&mut ()).unwrap_err();
    assert!(
        matches!(
            error,
            Error::HubInvalidAnswer {
                header: "X-Repo-Commit",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!sandbox.root.path().join("escaped").exists());
    sandbox.assert_nothing_outside_the_cache();
}

#[test]
fn a_stalled_download_gives_up_after_hf_hub_download_timeout_and_resumes() {
    const STALLED: &str = "vae/diffusion_pytorch_model.safetensors";
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    server.fault_once(STALLED, Fault::Stall);
    let sandbox = Sandbox::new();
    let root = sandbox.root.path().to_str().unwrap().to_string();
    let cache = sandbox.cache().to_str().unwrap().to_string();
    let vars = [
        ("HF_ENDPOINT", server.endpoint.as_str()),
        ("HF_HOME", root.as_str()),
        ("HF_HUB_CACHE", cache.as_str()),
        ("HF_HUB_DOWNLOAD_TIMEOUT", "1"),
    ];
    let mut settings =
        HubSettings::from_vars(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.into()));
    assert_eq!(settings.download_timeout, Duration::from_secs(1));
    settings.retries = 0;
    let model = HubModel::new(MODEL).with_settings(settings);

    // The server stalls for a minute: the client gives up after a second.
    let started = Instant::now();
    let error = model.fetch(&mut ()).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "gave up only after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(error, Error::Download { ref file, .. } if file == STALLED),
        "{error:?}"
    );
    // What came before the stall is kept and resumed.
    let partial = partial_files_in(&sandbox.cache());
    assert_eq!(partial.len(), 1, "{partial:?}");
    let snapshot = model.fetch(&mut ()).unwrap();
    assert_holds(&snapshot, &FULL_FILES);
    assert!(server
        .requests()
        .iter()
        .any(|request| request.status == 206 && request.range.as_deref() != Some("bytes=0-0")));
    sandbox.assert_nothing_outside_the_cache();
}

fn partial_files_in(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache.join("models--tiny--sd/blobs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "part"))
        .collect()
}

/// A small file whose next transfer goes wrong this way fails the run
/// without entering the cache, and the next run gets it right.
fn a_bad_small_file_is_never_kept(fault: Fault, expected: &str) {
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    server.fault_once(CONFIG, fault);
    let sandbox = Sandbox::new();
    let model = sandbox.model(&server);
    let error = model.fetch(&mut ()).unwrap_err();
    assert!(
        matches!(error, Error::Download { ref file, .. } if file == CONFIG),
        "{error:?}"
    );
    assert!(error.to_string().contains(expected), "{error}");
    let bytes = &fixture_files()[CONFIG];
    assert!(!blob_of(&sandbox.cache(), &git_blob_sha1(bytes)).exists());
    assert_eq!(model.cached(), None);

    let snapshot = model.fetch(&mut ()).unwrap();
    assert_holds(&snapshot, &FULL_FILES);
    sandbox.assert_nothing_outside_the_cache();
}

#[test]
fn a_short_body_is_never_kept() {
    a_bad_small_file_is_never_kept(Fault::Short, "announced");
}

#[test]
fn a_long_body_is_never_kept() {
    a_bad_small_file_is_never_kept(Fault::Long, "announced");
}

#[test]
fn a_cut_small_file_is_never_kept() {
    a_bad_small_file_is_never_kept(Fault::Cut, "stopped after");
}

#[test]
fn a_garbled_small_file_fails_its_git_blob_sha1() {
    a_bad_small_file_is_never_kept(Fault::Garble, "git SHA-1");
}

#[test]
fn a_range_request_answered_whole_restarts_the_file() {
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    server.cut_once(CONFIG);
    let sandbox = Sandbox::new();
    let model = sandbox.model(&server);
    model.fetch(&mut ()).unwrap_err();
    let kept = std::fs::metadata(&partial_files_in(&sandbox.cache())[0])
        .unwrap()
        .len();
    assert!(kept > 0);

    server.fault_once(CONFIG, Fault::IgnoreRange);
    let snapshot = model.fetch(&mut ()).unwrap();
    assert_holds(&snapshot, &FULL_FILES);
    let resumed = format!("bytes={kept}-");
    assert!(
        server
            .requests()
            .iter()
            .any(|request| request.range.as_deref() == Some(resumed.as_str())
                && request.status == 200),
        "the resumption was not answered 200"
    );
    sandbox.assert_nothing_outside_the_cache();
}

#[test]
fn plain_http_to_another_machine_is_refused_unless_allowed() {
    let sandbox = Sandbox::new();
    // TEST-NET-1: an address of another machine that nothing answers.
    let mut model = HubModel::new(MODEL).with_settings(HubSettings {
        endpoint: "http://192.0.2.1".to_string(),
        etag_timeout: Duration::from_millis(500),
        ..sandbox.model(&HubServer::start(Vec::new())).settings
    });
    let error = model.fetch(&mut ()).unwrap_err();
    assert!(
        matches!(error, Error::HubInsecureUrl { ref url, .. } if url.starts_with("http://192.0.2.1")),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("DIFFSEG_HUB_ALLOW_HTTP"),
        "{error}"
    );
    // Allowed, it is asked (and here, does not answer).
    model.settings.allow_http = true;
    let error = model.fetch(&mut ()).unwrap_err();
    assert!(matches!(error, Error::Download { .. }), "{error:?}");
}

#[test]
fn a_revision_that_could_leave_the_cache_is_refused() {
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    let sandbox = Sandbox::new();
    let model = sandbox.model(&server).with_revision("../../escaped");
    assert_eq!(model.cached(), None);
    let error = model.fetch(&mut ()).unwrap_err();
    assert!(
        matches!(
            error,
            Error::UnknownName {
                what: "revision",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(server.requests().is_empty());
    sandbox.assert_nothing_outside_the_cache();
}

#[test]
fn debug_output_never_shows_the_token() {
    let server = HubServer::start(Vec::new());
    let sandbox = Sandbox::new();
    let mut model = sandbox.model(&server);
    model.settings.token = Some("hf_do_not_print".into());
    let builder = diffseg::Segmenter::builder().hub(model.settings.clone());
    for shown in [
        format!("{:?}", model.settings),
        format!("{model:?}"),
        format!("{builder:?}"),
        format!("{:#?}", model.settings),
    ] {
        assert!(!shown.contains("hf_do_not_print"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}

#[test]
fn a_revisions_weights_carry_its_own_commit_not_mains() {
    assert!(
        std::env::var_os(WEIGHTS_ENV).is_none(),
        "unset {WEIGHTS_ENV} to run this test: it would be used instead of the cache"
    );
    let server = HubServer::start(Vec::new());
    let sandbox = Sandbox::new();
    // `main` and the tag `v1` both cached, at different commits.
    let repo = sandbox.cache().join("models--tiny--sd");
    let main = "1111111111111111111111111111111111111111";
    let tagged = "2222222222222222222222222222222222222222";
    for (revision, commit) in [("main", main), ("v1", tagged)] {
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join(revision), commit).unwrap();
        for (file, bytes) in fixture_files() {
            let path = repo.join("snapshots").join(commit).join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }
    let builder = |revision: &str| {
        diffseg::Segmenter::builder()
            .model(MODEL)
            .revision(revision)
            .hub(sandbox.model(&server).settings)
    };
    let located = builder("v1").locate_weights().unwrap().unwrap();
    assert_eq!(located.commit(), Some(tagged));
    assert_eq!(located.found().origin, WeightsOrigin::HuggingFaceCache);
    // What a resumed run compares its results with.
    let settings = diffseg::SegmentSettings::new(
        located.found(),
        MODEL,
        diffseg::Precision::F32,
        diffseg::Fit::Pad,
        &diffseg::MergeOptions::default(),
    );
    assert_eq!(settings.revision.as_deref(), Some(tagged));
    assert_eq!(
        builder("main").locate_weights().unwrap().unwrap().commit(),
        Some(main)
    );
    // Nothing cached at `v2`: to be downloaded, and no request to find that out.
    assert!(builder("v2").locate_weights().unwrap().is_none());
    assert!(server.requests().is_empty());

    // The model loads from the weights located, at the tagged commit.
    let segmenter = builder("v1").build_with(located).unwrap();
    assert!(segmenter.weights().path.ends_with(tagged));
}

#[test]
fn the_tokenizer_is_fetched_on_request_like_the_other_files() {
    let vocab = r#"{"a": 0, "b": 1, "a</w>": 2, "b</w>": 3, "ab</w>": 4, "<|startoftext|>": 5, "<|endoftext|>": 6}"#;
    let merges = "#version: 0.2\na b</w>\n";
    let mut repo = ServedRepo::tiny(MODEL);
    repo.files
        .insert("tokenizer/vocab.json".into(), vocab.as_bytes().to_vec());
    repo.files
        .insert("tokenizer/merges.txt".into(), merges.as_bytes().to_vec());
    let server = HubServer::start(vec![repo]);
    let cache = TempDir::new().unwrap();
    let model = model(&server, &cache);

    // The weights' download leaves the tokenizer out: plain segmentation does without.
    let snapshot = model.fetch(&mut ()).unwrap();
    assert!(!snapshot.join("tokenizer").exists());
    let folder = model.fetch_tokenizer(&mut ()).unwrap();
    assert_eq!(folder, snapshot.join("tokenizer"));
    assert_eq!(
        std::fs::read_to_string(folder.join("vocab.json")).unwrap(),
        vocab
    );
    // The repository has no tokenizer_config.json: asked for, not required.
    assert!(server
        .requests()
        .iter()
        .any(|request| request.path.ends_with("tokenizer/tokenizer_config.json")));
    let tokenizer = diffseg_sd::ClipTokenizer::from_folder(&folder).unwrap();
    assert_eq!(tokenizer.prompt_ids("ab").unwrap()[..3], [5, 4, 6]);

    let before = server.requests().len();
    assert_eq!(model.fetch_tokenizer(&mut ()).unwrap(), folder);
    assert_eq!(
        server.requests().len(),
        before,
        "the cached tokenizer was asked for"
    );
}

#[test]
fn a_repository_without_a_tokenizer_names_the_missing_file() {
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    let cache = TempDir::new().unwrap();
    let error = model(&server, &cache).fetch_tokenizer(&mut ()).unwrap_err();
    assert!(
        matches!(&error, Error::HubNotFound { missing: HubMissing::File, file, .. } if file.contains("tokenizer/vocab.json")),
        "{error}"
    );
}
