//! Where the Stable Diffusion weights come from.
//!
//! In order: an explicit path (a diffusers folder or a single-file checkpoint),
//! else the `DIFFSEG_WEIGHTS` environment variable, else the Hugging Face cache,
//! else a download from the Hugging Face Hub of only the files segmentation
//! needs. Offline with nothing found, the error lists which files to put where.
//!
//! The Hub is reached as the Python client `huggingface_hub` reaches it
//! ([`HubSettings::from_env`]): `HF_ENDPOINT` (a mirror), `HF_TOKEN` or the
//! token file, `HF_HOME` / `HF_HUB_CACHE`, `HF_HUB_OFFLINE`; the cache layout is
//! the one it shares with it. A model is a repository id, a revision (branch,
//! tag or commit) and a [`FileVariant`] ([`HubModel`]).
//!
//! Downloads resume: a file cut off midway is continued from where it stopped
//! by the next attempt (failed requests, timeouts included, are retried with
//! backoff) or the next run, and a file only counts as downloaded once its
//! size and hash match the ones the Hub names it by. Nothing a server answers
//! is trusted: `src/hub.rs` says what is checked.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::hub::{check_revision, is_commit_hash, Client, Failure};
use crate::{Error, Precision};

/// What [`crate::Pipeline::load`] reads: a diffusers folder or a single-file
/// checkpoint, with the file variant (f32, fp16, bf16) to prefer; opened once
/// for [`crate::Pipeline::load_opened`].
pub use diffseg_sd::{OpenedWeights, Variant, WeightsSource};

use diffseg_sd::{ClipTokenizer, Component, TOKENIZER_FILES};

/// The default model: Stable Diffusion 1.5.
pub const DEFAULT_MODEL: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";
/// The model the paper's numbers were measured with.
pub const PAPER_MODEL: &str = "CompVis/stable-diffusion-v1-4";
/// The environment variable naming a weights folder or file.
pub const WEIGHTS_ENV: &str = "DIFFSEG_WEIGHTS";
/// The Hugging Face Hub, unless `HF_ENDPOINT` names a mirror.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The revision downloaded unless another is asked for.
pub const DEFAULT_REVISION: &str = "main";
/// The environment variable that allows plain http to an endpoint or a
/// redirect target on another machine (`1`, `ON`, `YES` or `TRUE`).
pub const ALLOW_HTTP_ENV: &str = "DIFFSEG_HUB_ALLOW_HTTP";
/// How long a metadata request or a download waits to connect, and then for
/// each read, unless `HF_HUB_ETAG_TIMEOUT` / `HF_HUB_DOWNLOAD_TIMEOUT` say
/// otherwise (`huggingface_hub`'s default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which weight files to download where a repository has both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FileVariant {
    /// Half-precision files (`*.fp16.safetensors`): half the download.
    Fp16,
    /// Full-precision files (`*.safetensors`).
    #[default]
    Full,
}

impl FileVariant {
    /// The files a computation in `precision` reads without losing anything:
    /// full precision for f32, fp16 for f16.
    pub fn for_precision(precision: Precision) -> FileVariant {
        match precision {
            Precision::F32 => FileVariant::Full,
            Precision::F16 => FileVariant::Fp16,
        }
    }

    fn other(self) -> FileVariant {
        match self {
            FileVariant::Fp16 => FileVariant::Full,
            FileVariant::Full => FileVariant::Fp16,
        }
    }
}

impl From<FileVariant> for Variant {
    fn from(variant: FileVariant) -> Variant {
        match variant {
            FileVariant::Fp16 => Variant::F16,
            FileVariant::Full => Variant::F32,
        }
    }
}

impl fmt::Display for FileVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileVariant::Fp16 => "fp16",
            FileVariant::Full => "full",
        })
    }
}

impl FromStr for FileVariant {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "fp16" => Ok(FileVariant::Fp16),
            "full" => Ok(FileVariant::Full),
            _ => Err(Error::unknown_name(
                "file variant",
                s,
                "expected fp16 or full",
            )),
        }
    }
}

/// The files a diffusers folder needs, as one line per file for messages.
pub fn needed_files() -> Vec<String> {
    Component::ALL
        .iter()
        .flat_map(|component| {
            [
                component.config_file(),
                format!(
                    "{} (or {})",
                    component.weights_file(FileVariant::Full.into()),
                    component.weights_file(FileVariant::Fp16.into())
                ),
            ]
        })
        .collect()
}

/// How to reach the Hugging Face Hub and where its cache is: the settings the
/// Python client `huggingface_hub` reads from the environment
/// ([`HubSettings::from_env`]), or given directly. Its `Debug` shows whether
/// there is a token, never the token.
#[derive(Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The Hub or a mirror, without a trailing slash (`HF_ENDPOINT`).
    pub endpoint: String,
    /// The access token sent with every request, for private and gated
    /// repositories (`HF_TOKEN`, else the token file).
    pub token: Option<String>,
    /// The cache folder (`HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub cache: PathBuf,
    /// Whether downloads are off (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// How many times a download that failed on the way (network, a server
    /// error, a cut connection) is tried again, resuming where it stopped.
    pub retries: u32,
    /// The wait before the first retry, doubled before each next one.
    pub retry_delay: Duration,
    /// How long a download waits to connect and then for each read before
    /// the attempt fails (and is retried) (`HF_HUB_DOWNLOAD_TIMEOUT`).
    pub download_timeout: Duration,
    /// The same for the requests that ask for a file's metadata
    /// (`HF_HUB_ETAG_TIMEOUT`).
    pub etag_timeout: Duration,
    /// Whether plain http to another machine is allowed (the endpoint or a
    /// redirect target; [`ALLOW_HTTP_ENV`]). Off, only https and this
    /// machine's own addresses are asked. Either way the token is sent only
    /// to the endpoint's own host, and over plain http only on this machine.
    pub allow_http: bool,
}

impl fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSettings")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cache", &self.cache)
            .field("offline", &self.offline)
            .field("retries", &self.retries)
            .field("retry_delay", &self.retry_delay)
            .field("download_timeout", &self.download_timeout)
            .field("etag_timeout", &self.etag_timeout)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl HubSettings {
    /// The settings as `huggingface_hub` reads them from the environment.
    pub fn from_env() -> HubSettings {
        HubSettings::from_vars(|name| std::env::var_os(name))
    }

    /// The settings from the environment variables `var` looks up, as
    /// `huggingface_hub` reads them (an empty variable counts as unset):
    ///
    /// - `HF_ENDPOINT`: the Hub or a mirror (default [`DEFAULT_ENDPOINT`]);
    /// - `HF_HOME`: default `$XDG_CACHE_HOME/huggingface`, else
    ///   `~/.cache/huggingface`;
    /// - `HF_HUB_CACHE`: the cache (default `$HF_HOME/hub`);
    /// - `HF_TOKEN`: the token, else the file `HF_TOKEN_PATH` (default
    ///   `$HF_HOME/token`, where `huggingface-cli login` writes it);
    /// - `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`): downloads are off when
    ///   it is `1`, `ON`, `YES` or `TRUE` in any case;
    /// - `HF_HUB_DOWNLOAD_TIMEOUT`, `HF_HUB_ETAG_TIMEOUT`: seconds (default
    ///   [`DEFAULT_TIMEOUT`]);
    /// - and diffseg's own [`ALLOW_HTTP_ENV`], true as `HF_HUB_OFFLINE` is.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> HubSettings {
        let var = |name: &str| var(name).filter(|value| !value.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| {
                    var("HOME")
                        .or_else(|| var("USERPROFILE"))
                        .map(|home| PathBuf::from(home).join(".cache"))
                })
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface")
        });
        let token = var("HF_TOKEN")
            .map(|token| token.to_string_lossy().into_owned())
            .or_else(|| {
                let file = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| home.join("token"));
                std::fs::read_to_string(file).ok()
            })
            .map(|token| token.trim().to_string())
            .filter(|token| !token.is_empty());
        let truthy = |value: OsString| {
            let value = value.to_string_lossy().trim().to_ascii_uppercase();
            matches!(value.as_str(), "1" | "ON" | "YES" | "TRUE")
        };
        let offline = var("HF_HUB_OFFLINE")
            .or_else(|| var("TRANSFORMERS_OFFLINE"))
            .is_some_and(truthy);
        let seconds = |name: &str| {
            var(name)
                .and_then(|value| value.to_string_lossy().trim().parse::<f64>().ok())
                .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
                .filter(|timeout| !timeout.is_zero())
                .unwrap_or(DEFAULT_TIMEOUT)
        };
        HubSettings {
            endpoint: var("HF_ENDPOINT")
                .map(|endpoint| endpoint.to_string_lossy().trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token,
            cache: var("HF_HUB_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join("hub")),
            offline,
            retries: 3,
            retry_delay: Duration::from_secs(1),
            download_timeout: seconds("HF_HUB_DOWNLOAD_TIMEOUT"),
            etag_timeout: seconds("HF_HUB_ETAG_TIMEOUT"),
            allow_http: var(ALLOW_HTTP_ENV).is_some_and(truthy),
        }
    }
}

/// A model on the Hugging Face Hub: its repository, the revision and file
/// variant wanted, and how to reach the Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubModel {
    /// The repository id, e.g. [`DEFAULT_MODEL`].
    pub id: String,
    /// A branch, tag or commit hash (default [`DEFAULT_REVISION`]).
    pub revision: String,
    /// The weight files to download where the repository has both.
    pub variant: FileVariant,
    /// The Hub and its cache.
    pub settings: HubSettings,
}

impl HubModel {
    /// Repository `id` at [`DEFAULT_REVISION`], full-precision files, the Hub
    /// as the environment describes it ([`HubSettings::from_env`]).
    pub fn new(id: impl Into<String>) -> HubModel {
        HubModel {
            id: id.into(),
            revision: DEFAULT_REVISION.to_string(),
            variant: FileVariant::default(),
            settings: HubSettings::from_env(),
        }
    }

    /// At this branch, tag or commit.
    pub fn with_revision(mut self, revision: impl Into<String>) -> HubModel {
        self.revision = revision.into();
        self
    }

    /// Downloading these weight files where the repository has both.
    pub fn with_variant(mut self, variant: FileVariant) -> HubModel {
        self.variant = variant;
        self
    }

    /// With these Hub settings.
    pub fn with_settings(mut self, settings: HubSettings) -> HubModel {
        self.settings = settings;
        self
    }

    /// The cache's snapshot folder (a diffusers layout) holding every file
    /// segmentation needs, the chosen variant's weights or else the other's.
    /// Makes no request.
    pub fn cached(&self) -> Option<PathBuf> {
        self.cached_with(&[self.variant, self.variant.other()])
    }

    /// The cache's snapshot folder of this revision, if the cache knows it:
    /// a commit hash names its folder, a branch or tag is looked up in `refs/`
    /// (a revision or a ref that could lead out of the cache names none).
    fn snapshot(&self) -> Option<PathBuf> {
        check_revision(&self.revision).ok()?;
        let repo = self.repo_dir();
        let commit = if is_commit_hash(&self.revision) {
            self.revision.to_ascii_lowercase()
        } else {
            let text = std::fs::read_to_string(repo.join("refs").join(&self.revision)).ok()?;
            crate::hub::parse_commit(&text)?
        };
        Some(repo.join("snapshots").join(commit))
    }

    /// The repository's folder in the cache (`models--{org}--{name}`).
    pub(crate) fn repo_dir(&self) -> PathBuf {
        let name = format!("models--{}", self.id.replace('/', "--"));
        self.settings.cache.join(name)
    }

    /// The snapshot if it holds every needed file with weights of one of `variants`.
    fn cached_with(&self, variants: &[FileVariant]) -> Option<PathBuf> {
        let snapshot = self.snapshot()?;
        let complete = Component::ALL.iter().all(|component| {
            snapshot.join(component.config_file()).is_file()
                && variants.iter().any(|&variant| {
                    snapshot
                        .join(component.weights_file(variant.into()))
                        .is_file()
                })
        });
        complete.then_some(snapshot)
    }

    /// Downloads what segmentation needs (the chosen variant's weights, or
    /// the other's where the repository lacks them) into the cache, skipping
    /// files already there, and returns the snapshot folder, a diffusers
    /// layout. Makes no request when the cache holds them all.
    pub fn fetch(&self, progress: &mut dyn DownloadProgress) -> Result<PathBuf, Error> {
        if let Some(snapshot) = self.cached_with(&[self.variant]) {
            return Ok(snapshot);
        }
        if self.settings.offline {
            return Err(self.not_found("downloads are off (HF_HUB_OFFLINE is set)"));
        }
        let client = Client::new(self)?;
        // Each file goes into the snapshot of the commit the revision names
        // when it is downloaded, and files already cached are looked up in the
        // snapshot the cache's ref names: when the branch moved on since an
        // earlier download, the first pass leaves some files in the old
        // snapshot, and a second fetches them into the new one.
        for _pass in 0..2 {
            for component in Component::ALL {
                self.download(&client, &component.config_file(), progress)?;
                self.download_weights(&client, component, progress)?;
            }
            if let Some(snapshot) = self.cached() {
                return Ok(snapshot);
            }
        }
        Err(self.download_error(
            "",
            format!(
                "revision {} keeps changing on the Hub during the download: run it again",
                self.revision
            ),
        ))
    }

    /// The model's CLIP tokenizer folder, `tokenizer/` of the snapshot: its
    /// `vocab.json` and `merges.txt`, and `tokenizer_config.json` where the
    /// repository has one, downloaded into the cache like the weights (files
    /// already there are not asked for again). Only naming segments needs them,
    /// so [`HubModel::fetch`] leaves them out.
    pub fn fetch_tokenizer(&self, progress: &mut dyn DownloadProgress) -> Result<PathBuf, Error> {
        let cached = self
            .snapshot()
            .map(|snapshot| snapshot.join(TOKENIZER_DIR))
            .filter(|folder| {
                TOKENIZER_FILES
                    .iter()
                    .all(|file| folder.join(file).is_file())
            });
        if let Some(folder) = cached {
            return Ok(folder);
        }
        if self.settings.offline {
            return Err(self.missing_tokenizer("downloads are off (HF_HUB_OFFLINE is set)"));
        }
        let client = Client::new(self)?;
        let mut folder = None;
        for file in TOKENIZER_FILES {
            let path = self.download(&client, &format!("{TOKENIZER_DIR}/{file}"), progress)?;
            folder = path.parent().map(Path::to_path_buf);
        }
        match self.download(
            &client,
            &format!("{TOKENIZER_DIR}/{TOKENIZER_CONFIG}"),
            progress,
        ) {
            Ok(_)
            | Err(Error::HubNotFound {
                missing: HubMissing::File,
                ..
            }) => {}
            Err(error) => return Err(error),
        }
        folder.ok_or_else(|| self.missing_tokenizer("the download named no folder"))
    }

    fn missing_tokenizer(&self, reason: &str) -> Error {
        Error::WeightsNotFound {
            model: self.id.clone(),
            reason: reason.to_string(),
            cache: self.settings.cache.clone(),
            files: TOKENIZER_FILES
                .iter()
                .map(|file| format!("{TOKENIZER_DIR}/{file}"))
                .collect(),
        }
    }

    /// The chosen variant's weights of `component`, else the other's where
    /// the repository lacks them.
    fn download_weights(
        &self,
        client: &Client,
        component: Component,
        progress: &mut dyn DownloadProgress,
    ) -> Result<PathBuf, Error> {
        let preferred = component.weights_file(self.variant.into());
        match self.download(client, &preferred, progress) {
            Err(Error::HubNotFound {
                missing: HubMissing::File,
                ..
            }) => {
                let fallback = component.weights_file(self.variant.other().into());
                self.download(client, &fallback, progress)
                    .map_err(|error| match error {
                        Error::HubNotFound {
                            missing: HubMissing::File,
                            ..
                        } => self.missing(HubMissing::File, format!("{preferred} (or {fallback})")),
                        error => error,
                    })
            }
            result => result,
        }
    }

    /// One file from the cache, else downloaded, retrying with backoff what
    /// failed on the way (each attempt resumes the partial file
    /// `blobs/<etag>.part`).
    fn download(
        &self,
        client: &Client,
        file: &str,
        progress: &mut dyn DownloadProgress,
    ) -> Result<PathBuf, Error> {
        if let Some(path) = self.snapshot().map(|snapshot| snapshot.join(file)) {
            if path.is_file() {
                return Ok(path);
            }
        }
        let mut delay = self.settings.retry_delay;
        let mut tries = 0;
        loop {
            tries += 1;
            match client.download(file, progress) {
                Ok(path) => return Ok(path),
                Err(Failure::Transient(reason)) if tries <= self.settings.retries => {
                    progress.retry(file, &reason, delay);
                    sleep_unless_interrupted(delay, progress);
                    if progress.interrupted() {
                        return Err(self.interrupted(file));
                    }
                    delay *= 2;
                }
                Err(Failure::Transient(reason)) => {
                    let plural = if tries == 1 { "" } else { "s" };
                    return Err(self.download_error(
                        file,
                        format!("{reason} ({tries} attempt{plural}; running again resumes the download)"),
                    ));
                }
                Err(Failure::Final(error)) => return Err(error),
            }
        }
    }

    pub(crate) fn access_advice(&self, status: u16) -> String {
        let model_page = format!("{}/{}", self.settings.endpoint, self.id);
        match (status, &self.settings.token) {
            (401, None) => format!(
                "the repository is private or gated, or does not exist: check the id given \
                 with --model, and if it is yours or you were granted access, log in with \
                 `huggingface-cli login` or set HF_TOKEN to a token that can read {model_page}"
            ),
            (401, Some(_)) => "the token (HF_TOKEN or the token file) was not accepted: \
                 it may be invalid or revoked; create a new one in your Hub account's settings"
                .to_string(),
            _ => format!(
                "the token cannot read this repository: if it is gated, accept its conditions \
                 on {model_page} with your account; a fine-grained token needs read access to it"
            ),
        }
    }

    pub(crate) fn missing(&self, missing: HubMissing, file: String) -> Error {
        Error::HubNotFound {
            model: self.id.clone(),
            revision: self.revision.clone(),
            endpoint: self.settings.endpoint.clone(),
            missing,
            file,
        }
    }

    pub(crate) fn download_error(&self, file: &str, reason: String) -> Error {
        Error::Download {
            model: self.id.clone(),
            endpoint: self.settings.endpoint.clone(),
            file: file.to_string(),
            reason,
        }
    }

    /// The download of `file` stopped because its progress asked so.
    pub(crate) fn interrupted(&self, file: &str) -> Error {
        Error::DownloadInterrupted {
            model: self.id.clone(),
            file: file.to_string(),
        }
    }

    fn not_found(&self, reason: &str) -> Error {
        Error::WeightsNotFound {
            model: self.id.clone(),
            reason: reason.to_string(),
            cache: self.settings.cache.clone(),
            files: needed_files(),
        }
    }
}

/// What the Hub said does not exist (HTTP 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubMissing {
    /// No repository of this id (or a private one, without the token).
    Repository,
    /// No such branch, tag or commit in the repository.
    Revision,
    /// No such file at this revision.
    File,
}

/// Told how a download goes (a progress bar, a log, a test's record).
pub trait DownloadProgress {
    /// `file` (`size` bytes) starts downloading; it may have been started
    /// before, and [`DownloadProgress::advance`] then first reports the bytes
    /// already there.
    fn start(&mut self, file: &str, size: u64);
    /// `bytes` more of the file are on disk.
    fn advance(&mut self, bytes: u64);
    /// The file is complete.
    fn finish(&mut self, file: &str);
    /// The download of `file` failed (`reason`) and is tried again after `delay`.
    fn retry(&mut self, file: &str, reason: &str, delay: Duration);
    /// Asked after every chunk received and while waiting to retry: `true`
    /// stops the download with [`Error::DownloadInterrupted`], keeping what
    /// arrived for the next attempt to resume from (a Ctrl-C in a program
    /// that embeds the library, say). Never by default.
    fn interrupted(&mut self) -> bool {
        false
    }
}

/// How often a wait before retrying asks [`DownloadProgress::interrupted`].
const INTERRUPT_POLL: Duration = Duration::from_millis(100);

/// Sleeps `delay`, or less when `progress` says the download is interrupted.
fn sleep_unless_interrupted(delay: Duration, progress: &mut dyn DownloadProgress) {
    let until = std::time::Instant::now() + delay;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || progress.interrupted() {
            return;
        }
        std::thread::sleep(left.min(INTERRUPT_POLL));
    }
}

/// No progress shown.
impl DownloadProgress for () {
    fn start(&mut self, _file: &str, _size: u64) {}
    fn advance(&mut self, _bytes: u64) {}
    fn finish(&mut self, _file: &str) {}
    fn retry(&mut self, _file: &str, _reason: &str, _delay: Duration) {}
}

/// Download progress on standard error: a line per file and per retry, and
/// a progress bar while a file downloads when standard error is a terminal.
#[derive(Debug, Default)]
pub struct ConsoleProgress {
    bar: Option<ProgressBar>,
}

impl DownloadProgress for ConsoleProgress {
    fn start(&mut self, file: &str, size: u64) {
        eprintln!("downloading {file} ({})", HumanBytes(size));
        let bar = ProgressBar::new(size).with_style(
            ProgressStyle::with_template(
                "  [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
            )
            .expect("a valid progress template"),
        );
        self.bar = Some(bar);
    }

    fn advance(&mut self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn finish(&mut self, _file: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn retry(&mut self, file: &str, reason: &str, delay: Duration) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
        eprintln!("downloading {file} failed ({reason}); resuming in {delay:?}");
    }
}

/// How the weights were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WeightsOrigin {
    /// Given explicitly (builder or `--weights`).
    Explicit,
    /// From the `DIFFSEG_WEIGHTS` environment variable.
    Environment,
    /// Already in the Hugging Face cache.
    HuggingFaceCache,
    /// Downloaded now into the Hugging Face cache.
    Downloaded,
}

impl fmt::Display for WeightsOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightsOrigin::Explicit => "given explicitly",
            WeightsOrigin::Environment => WEIGHTS_ENV,
            WeightsOrigin::HuggingFaceCache => "Hugging Face cache",
            WeightsOrigin::Downloaded => "downloaded",
        })
    }
}

/// Weights found on disk: a diffusers folder or a single-file checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundWeights {
    /// The folder or file.
    pub path: PathBuf,
    /// Where it came from.
    pub origin: WeightsOrigin,
}

/// The weights of a run, found (or downloaded) and opened once: where they
/// are, the commit of the revision asked for when they come from the Hub,
/// the source the model loads and its networks' architectures. The settings
/// a resumed run compares and the model it loads both come from this one
/// value ([`crate::SegmenterBuilder::locate_weights`],
/// [`crate::SegmenterBuilder::build_with`]).
#[derive(Debug, Clone)]
pub struct ResolvedWeights {
    found: FoundWeights,
    opened: OpenedWeights,
}

impl ResolvedWeights {
    /// Opens `found`: a diffusers folder (its `variant` files preferred
    /// where it has several) and its networks' architectures, or a
    /// single-file checkpoint, mapped and its header read here once.
    pub fn open(found: FoundWeights, variant: FileVariant) -> Result<ResolvedWeights, Error> {
        let opened = OpenedWeights::open(&found.path, variant.into(), None).map_err(|error| {
            Error::Load {
                path: found.path.clone(),
                error: Box::new(error),
            }
        })?;
        Ok(ResolvedWeights { found, opened })
    }

    /// Where the weights are and how they were found.
    pub fn found(&self) -> &FoundWeights {
        &self.found
    }

    /// The commit of the Hub snapshot holding the weights: the one the
    /// revision asked for names. `None` for weights given by path.
    pub fn commit(&self) -> Option<&str> {
        match self.found.origin {
            WeightsOrigin::HuggingFaceCache | WeightsOrigin::Downloaded => {
                self.found.path.file_name().and_then(|name| name.to_str())
            }
            WeightsOrigin::Explicit | WeightsOrigin::Environment => None,
        }
    }

    /// What the model loads.
    pub fn opened(&self) -> &OpenedWeights {
        &self.opened
    }
}

/// Looks for weights without downloading: explicit path, then `DIFFSEG_WEIGHTS`,
/// then the Hugging Face cache (as the environment describes it) for `model`
/// at [`DEFAULT_REVISION`]. `Ok(None)` when there are none; an error when an
/// explicit or environment path does not exist.
pub fn locate_weights(explicit: Option<&Path>, model: &str) -> Result<Option<FoundWeights>, Error> {
    locate(explicit, &HubModel::new(model))
}

pub(crate) fn locate(
    explicit: Option<&Path>,
    model: &HubModel,
) -> Result<Option<FoundWeights>, Error> {
    if let Some(path) = explicit {
        return existing(path, WeightsOrigin::Explicit).map(Some);
    }
    if let Some(value) = std::env::var_os(WEIGHTS_ENV).filter(|value| !value.is_empty()) {
        return existing(Path::new(&value), WeightsOrigin::Environment).map(Some);
    }
    Ok(model.cached().map(|path| FoundWeights {
        path,
        origin: WeightsOrigin::HuggingFaceCache,
    }))
}

fn existing(path: &Path, origin: WeightsOrigin) -> Result<FoundWeights, Error> {
    if path.exists() {
        Ok(FoundWeights {
            path: path.to_path_buf(),
            origin,
        })
    } else {
        Err(Error::WeightsPathMissing {
            path: path.to_path_buf(),
            origin,
        })
    }
}

/// The folder of a diffusers model's CLIP tokenizer.
pub const TOKENIZER_DIR: &str = "tokenizer";
/// Settings file of a tokenizer folder, fetched where the repository has it.
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// The CLIP tokenizer folder of a run's weights: `explicit` (`--tokenizer`,
/// the way for a single-file checkpoint), else the diffusers folder's
/// `tokenizer/`. A single-file checkpoint without `explicit` has none:
/// [`diffseg_sd::Error::MissingTokenizer`] names the checkpoint. Plain
/// segmentation never asks for it; naming segments does.
pub fn tokenizer_folder(
    weights: &Path,
    explicit: Option<&Path>,
) -> Result<PathBuf, diffseg_sd::Error> {
    if let Some(folder) = explicit {
        return Ok(folder.to_path_buf());
    }
    if weights.is_dir() {
        return Ok(weights.join(TOKENIZER_DIR));
    }
    Err(diffseg_sd::Error::MissingTokenizer {
        folder: weights.to_path_buf(),
        missing: vec!["a tokenizer folder (a single-file checkpoint holds none)".into()],
    })
}

/// The CLIP tokenizer of a run's weights ([`tokenizer_folder`]), read.
pub fn load_tokenizer(
    weights: &Path,
    explicit: Option<&Path>,
) -> Result<ClipTokenizer, diffseg_sd::Error> {
    ClipTokenizer::from_folder(tokenizer_folder(weights, explicit)?)
}

/// The Hugging Face cache folder the environment names (for messages and
/// `diffseg info`).
pub fn cache_dir() -> PathBuf {
    HubSettings::from_env().cache
}

/// Finds the weights (explicit path, `DIFFSEG_WEIGHTS`, the cache), else
/// downloads `model`'s if allowed, telling `progress` how it goes.
pub fn resolve_weights(
    explicit: Option<&Path>,
    model: &HubModel,
    allow_download: bool,
    progress: &mut dyn DownloadProgress,
) -> Result<FoundWeights, Error> {
    if let Some(found) = locate(explicit, model)? {
        return Ok(found);
    }
    if !allow_download {
        return Err(model.not_found("downloads are off"));
    }
    model.fetch(progress).map(|path| FoundWeights {
        path,
        origin: WeightsOrigin::Downloaded,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_needed_files_name_every_network() {
        let files = needed_files().join("\n");
        for expected in [
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors (or unet/diffusion_pytorch_model.fp16.safetensors)",
            "vae/config.json",
            "text_encoder/model.safetensors",
        ] {
            assert!(files.contains(expected), "{files}");
        }
    }

    #[test]
    fn an_explicit_path_that_does_not_exist_is_an_error() {
        let error = locate_weights(Some(Path::new("/no/such/weights")), DEFAULT_MODEL).unwrap_err();
        assert!(error.to_string().contains("/no/such/weights"), "{error}");
    }

    fn settings(vars: &[(&str, &str)]) -> HubSettings {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), OsString::from(value)))
            .collect();
        HubSettings::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn hub_settings_follow_the_python_client() {
        let defaults = settings(&[("HOME", "/home/me")]);
        assert_eq!(defaults.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(defaults.cache, Path::new("/home/me/.cache/huggingface/hub"));
        assert!(!defaults.offline);

        let xdg = settings(&[("HOME", "/home/me"), ("XDG_CACHE_HOME", "/xdg")]);
        assert_eq!(xdg.cache, Path::new("/xdg/huggingface/hub"));
        let home = settings(&[("HF_HOME", "/hf"), ("XDG_CACHE_HOME", "/xdg")]);
        assert_eq!(home.cache, Path::new("/hf/hub"));
        let cache = settings(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/elsewhere")]);
        assert_eq!(cache.cache, Path::new("/elsewhere"));

        let mirror = settings(&[("HF_ENDPOINT", "https://hf-mirror.com/")]);
        assert_eq!(mirror.endpoint, "https://hf-mirror.com");
    }

    #[test]
    fn offline_accepts_the_usual_truthy_spellings() {
        for value in ["1", "ON", "on", "YES", "yes", "TRUE", "True", "true"] {
            assert!(settings(&[("HF_HUB_OFFLINE", value)]).offline, "{value}");
        }
        for value in ["", "0", "off", "no", "false", "2"] {
            assert!(!settings(&[("HF_HUB_OFFLINE", value)]).offline, "{value}");
        }
        assert!(settings(&[("TRANSFORMERS_OFFLINE", "1")]).offline);
    }

    #[test]
    fn the_token_comes_from_hf_token_else_the_token_file() {
        let home = tempfile::tempdir().unwrap();
        let hf_home = home.path().to_str().unwrap();
        assert_eq!(settings(&[("HF_HOME", hf_home)]).token, None);
        std::fs::write(home.path().join("token"), "hf_file\n").unwrap();
        assert_eq!(
            settings(&[("HF_HOME", hf_home)]).token.as_deref(),
            Some("hf_file")
        );
        assert_eq!(
            settings(&[("HF_HOME", hf_home), ("HF_TOKEN", "hf_env")])
                .token
                .as_deref(),
            Some("hf_env")
        );
        let elsewhere = home.path().join("elsewhere");
        std::fs::write(&elsewhere, "hf_path").unwrap();
        let token_path = elsewhere.to_str().unwrap();
        assert_eq!(
            settings(&[("HF_HOME", hf_home), ("HF_TOKEN_PATH", token_path)])
                .token
                .as_deref(),
            Some("hf_path")
        );
    }

    /// The tiny model as a single LDM file: detected, its header read and
    /// checked once, then loaded from that mapping even after the file is
    /// gone from the disk, where loading from the source (the path) fails.
    #[cfg(feature = "ndarray")]
    #[test]
    fn a_single_file_is_opened_once_and_loaded_from_that_opening() {
        use crate::backend::Cpu;
        use crate::Pipeline;

        let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffseg-sd/tests/fixtures/tiny");
        // Single files carry no architecture, and the tiny one is no SD 1.x preset.
        let config = WeightsSource::detect(&tiny).unwrap().config().unwrap();
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("tiny-ldm.safetensors");
        std::fs::copy(tiny.join("tiny-ldm.safetensors"), &file).unwrap();
        let opened = OpenedWeights::open(&file, Variant::F32, Some(config)).unwrap();
        std::fs::remove_file(&file).unwrap();
        Pipeline::<Cpu>::load_opened(&opened, Default::default()).unwrap();
        let reopened = Pipeline::<Cpu>::load(opened.source(), Default::default());
        assert!(reopened.is_err(), "the file was not gone");
    }

    #[test]
    fn variants_parse_and_follow_the_precision() {
        assert_eq!("fp16".parse::<FileVariant>().unwrap(), FileVariant::Fp16);
        assert_eq!("FULL".parse::<FileVariant>().unwrap(), FileVariant::Full);
        let unknown = "bf16".parse::<FileVariant>().unwrap_err();
        assert!(
            matches!(&unknown, Error::UnknownName { what: "file variant", name, .. } if name == "bf16"),
            "{unknown:?}"
        );
        assert_eq!(
            FileVariant::for_precision(Precision::F32),
            FileVariant::Full
        );
        assert_eq!(
            FileVariant::for_precision(Precision::F16),
            FileVariant::Fp16
        );
    }
}
