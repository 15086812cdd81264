//! The Hugging Face Hub's download protocol, as `huggingface_hub` speaks it,
//! over ureq, trusting nothing the server says.
//!
//! Per file: a one-byte request (`Range: bytes=0-0`) to
//! `{endpoint}/{repo}/resolve/{revision}/{file}` names the commit
//! (`X-Repo-Commit`), the content's hash (`X-Linked-Etag` of large LFS files,
//! else `ETag`), the size (`X-Linked-Size`, else `Content-Range` or
//! `Content-Length`) and, for LFS files, the content store it redirects to;
//! then the content is downloaded into `blobs/<etag>.part`, checked and
//! renamed to `blobs/<etag>`, and `snapshots/<commit>/<file>` links to it.
//! The cache layout is the one Python's `huggingface_hub` shares.
//!
//! What a server says is checked before it is used:
//!
//! - the ETag must be 40 or 64 hex digits and the commit 40 before either
//!   becomes part of a path ([`Error::HubInvalidAnswer`] otherwise);
//! - every file is verified before it enters `blobs/`: SHA-256 for LFS files
//!   (64-digit ETag), the git blob SHA-1 (`sha1("blob {len}\0" + bytes)`) for
//!   the others (40 digits); the size against `X-Linked-Size` /
//!   `Content-Range` / `Content-Length`;
//! - a resumed download must be answered `206` with the range asked for; a
//!   `200` restarts the file from its first byte;
//! - redirects are followed by hand: the token goes only to the endpoint's
//!   own scheme, host and port, and never over plain http except to this
//!   machine; plain http to another machine is refused
//!   ([`Error::HubInsecureUrl`]) unless allowed ([`HubSettings::allow_http`](crate::weights::HubSettings::allow_http));
//! - metadata requests and downloads have connect and read timeouts
//!   (`HF_HUB_ETAG_TIMEOUT`, `HF_HUB_DOWNLOAD_TIMEOUT`); a timeout is retried
//!   like any failure on the way, resuming the partial file.
//!
//! Why a client of our own: hf-hub 0.4 sends the token to whatever host it is
//! redirected to, joins the ETag and the commit into paths unchecked, has no
//! read timeout and checks no size or hash of small files; fixing that needs
//! its internals (it follows the redirect itself). hf-hub 1.0 is async
//! (reqwest and tokio; its blocking API runs a tokio runtime), a second HTTP
//! stack for this crate, and it too joins the ETag into the blob path
//! unchecked. The protocol itself is a few requests, so it is written here
//! over ureq, which the crate already used, with every header in view.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha1::Sha1;
use sha2::{Digest, Sha256};
use url::{Host, Url};

use crate::weights::{DownloadProgress, HubMissing, HubModel};
use crate::Error;

/// Redirects followed per request (a renamed repository, then the content store).
const MAX_REDIRECTS: usize = 5;
/// How much of a body is read at a time.
const CHUNK: usize = 256 * 1024;

/// A failed attempt at one file.
pub(crate) enum Failure {
    /// Worth another try: the network, a timeout, a server error, a cut,
    /// short, long or corrupt transfer.
    Transient(String),
    /// Trying again gives the same answer.
    Final(Error),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Final(error)
    }
}

/// What the Hub says about one file before its content is asked for.
#[derive(Debug)]
struct FileMetadata {
    /// The commit the revision names now (40 hex digits, checked).
    commit: String,
    /// The content's hash: SHA-256 (64 digits) or git blob SHA-1 (40), lower case.
    etag: String,
    /// The file's size in bytes.
    size: u64,
    /// Where the content is downloaded from.
    location: Url,
}

/// Downloads the files of one [`HubModel`] into its cache.
pub(crate) struct Client<'a> {
    model: &'a HubModel,
    endpoint: Url,
    /// For the one-byte metadata requests (`HF_HUB_ETAG_TIMEOUT`).
    metadata: ureq::Agent,
    /// For the content (`HF_HUB_DOWNLOAD_TIMEOUT`).
    content: ureq::Agent,
    /// `models--{org}--{name}` in the cache.
    repo_dir: PathBuf,
}

impl<'a> Client<'a> {
    /// A client for `model`, once its endpoint and revision are acceptable.
    pub(crate) fn new(model: &'a HubModel) -> Result<Client<'a>, Error> {
        let settings = &model.settings;
        check_revision(&model.revision)?;
        let endpoint = Url::parse(&settings.endpoint)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
            .ok_or_else(|| Error::HubInsecureUrl {
                model: model.id.clone(),
                url: settings.endpoint.clone(),
                reason: "not an http or https URL".into(),
            })?;
        let client = Client {
            model,
            endpoint,
            metadata: agent(settings.etag_timeout),
            content: agent(settings.download_timeout),
            repo_dir: model.repo_dir(),
        };
        client.check_url(&client.endpoint)?;
        Ok(client)
    }

    /// One attempt at `file`: its metadata, its content unless the cache
    /// has it under the same hash, then its snapshot link and the ref.
    pub(crate) fn download(
        &self,
        file: &str,
        progress: &mut dyn DownloadProgress,
    ) -> Result<PathBuf, Failure> {
        let metadata = self.metadata(file)?;
        let blob = self.repo_dir.join("blobs").join(&metadata.etag);
        if !blob.is_file() {
            self.download_blob(file, &metadata, &blob, progress)?;
        }
        Ok(self.link(file, &metadata)?)
    }

    /// The partial download of `file`'s content with this hash.
    fn partial_path(&self, etag: &str) -> PathBuf {
        self.repo_dir.join("blobs").join(format!("{etag}.part"))
    }

    /// Asks for the first byte of `file` and reads what the answer says about
    /// it, following the endpoint's own redirects (a renamed repository) but
    /// not the one to the content store, whose answer carries the metadata.
    fn metadata(&self, file: &str) -> Result<FileMetadata, Failure> {
        let mut url = self.file_url(file)?;
        for _ in 0..=MAX_REDIRECTS {
            let response = self.get(&self.metadata, &url, Some("bytes=0-0"), file)?;
            if !is_redirect(response.status()) {
                return Ok(self.read_metadata(file, &response, url, false)?);
            }
            let location = self.location(&url, &response, file)?;
            let carries_metadata = response.header("x-repo-commit").is_some();
            if carries_metadata || location.origin() != self.endpoint.origin() {
                return Ok(self.read_metadata(file, &response, location, true)?);
            }
            url = location;
        }
        Err(self.too_many_redirects(file))
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{file}`, the revision's slashes
    /// escaped as `huggingface_hub` does (`refs/pr/1`).
    fn file_url(&self, file: &str) -> Result<Url, Error> {
        let revision = self.model.revision.replace('/', "%2F");
        let base = self.model.settings.endpoint.trim_end_matches('/');
        let text = format!("{base}/{}/resolve/{revision}/{file}", self.model.id);
        Url::parse(&text).map_err(|error| Error::HubInsecureUrl {
            model: self.model.id.clone(),
            url: text,
            reason: error.to_string(),
        })
    }

    /// The commit, hash and size of `file` from an answer's headers;
    /// `redirected`: the answer is a redirect to the content (whose own
    /// length says nothing of the file's).
    fn read_metadata(
        &self,
        file: &str,
        response: &ureq::Response,
        location: Url,
        redirected: bool,
    ) -> Result<FileMetadata, Error> {
        let header = |name: &str| response.header(name).map(str::trim);
        let commit = header("x-repo-commit").unwrap_or_default();
        let commit = parse_commit(commit).ok_or_else(|| {
            self.invalid_answer(
                file,
                "X-Repo-Commit",
                commit,
                "a commit hash of 40 hex digits",
            )
        })?;
        let (etag_header, etag) = match header("x-linked-etag") {
            Some(etag) => ("X-Linked-Etag", etag),
            None => ("ETag", header("etag").unwrap_or_default()),
        };
        let etag = parse_etag(etag).ok_or_else(|| {
            self.invalid_answer(
                file,
                etag_header,
                etag,
                "a SHA-256 (64 hex digits) or git SHA-1 (40 hex digits)",
            )
        })?;
        let size = match (header("x-linked-size"), redirected) {
            (Some(size), _) => size.parse().ok(),
            (None, true) => None,
            (None, false) => match header("content-range") {
                Some(range) => parse_content_range(range).map(|(_, _, total)| total),
                None => header("content-length").and_then(|length| length.parse().ok()),
            },
        };
        let size = size.ok_or_else(|| {
            let shown = header("x-linked-size")
                .or(header("content-range"))
                .unwrap_or_default();
            self.invalid_answer(file, "X-Linked-Size", shown, "the file's size in bytes")
        })?;
        Ok(FileMetadata {
            commit,
            etag,
            size,
            location,
        })
    }

    /// Downloads the content into `blobs/<etag>.part` (continuing what an
    /// earlier attempt left there), checks its size and hash, and renames it
    /// to `blob`.
    fn download_blob(
        &self,
        file: &str,
        metadata: &FileMetadata,
        blob: &Path,
        progress: &mut dyn DownloadProgress,
    ) -> Result<(), Failure> {
        let partial = self.partial_path(&metadata.etag);
        let blobs = blob.parent().expect("a blob lies in blobs/");
        fs::create_dir_all(blobs).map_err(|error| self.cache_error(blobs, error))?;
        let mut kept = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if kept > metadata.size {
            // Not a beginning of this file: start again.
            kept = 0;
        }
        progress.start(file, metadata.size);
        if kept < metadata.size {
            self.receive(file, metadata, &partial, kept, progress)?;
        }
        if let Err(reason) = verify(&partial, &metadata.etag, metadata.size) {
            // Bad bytes are never resumed from.
            let _ = fs::remove_file(&partial);
            return Err(Failure::Transient(reason));
        }
        fs::rename(&partial, blob).map_err(|error| self.cache_error(blob, error))?;
        progress.finish(file);
        Ok(())
    }

    /// Asks for the content from byte `kept` on (from 0 when nothing is
    /// kept) and writes it into `partial` at the offset the answer starts
    /// at: `kept` for a 206 with that range, 0 for a 200.
    fn receive(
        &self,
        file: &str,
        metadata: &FileMetadata,
        partial: &Path,
        kept: u64,
        progress: &mut dyn DownloadProgress,
    ) -> Result<(), Failure> {
        let range = (kept > 0).then(|| format!("bytes={kept}-"));
        let response = self.get_following(&metadata.location, range.as_deref(), file)?;
        let start = body_start(&response, kept, metadata.size).map_err(Failure::Transient)?;
        let mut out = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(partial)
            .and_then(|mut out| {
                out.set_len(start)?;
                out.seek(SeekFrom::Start(start))?;
                Ok(out)
            })
            .map_err(|error| self.cache_error(partial, error))?;
        progress.advance(start);
        let remaining = metadata.size - start;
        let mut body = response.into_reader();
        let mut buffer = vec![0u8; CHUNK];
        let mut received = 0u64;
        loop {
            let read = match body.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) => {
                    return Err(Failure::Transient(format!(
                        "the transfer stopped after {} of {} bytes: {error}",
                        start + received,
                        metadata.size
                    )))
                }
            };
            received += read as u64;
            if received > remaining {
                drop(out);
                let _ = fs::remove_file(partial);
                return Err(Failure::Transient(format!(
                    "the server sent more than the file's {} bytes",
                    metadata.size
                )));
            }
            out.write_all(&buffer[..read])
                .map_err(|error| self.cache_error(partial, error))?;
            progress.advance(read as u64);
            if progress.interrupted() {
                // What arrived stays in the partial file: the next attempt resumes from it.
                out.sync_all()
                    .map_err(|error| self.cache_error(partial, error))?;
                return Err(Failure::Final(self.model.interrupted(file)));
            }
        }
        out.sync_all()
            .map_err(|error| self.cache_error(partial, error))?;
        if received < remaining {
            return Err(Failure::Transient(format!(
                "the transfer was cut short: {} of {} bytes",
                start + received,
                metadata.size
            )));
        }
        Ok(())
    }

    /// Links `snapshots/<commit>/<file>` to its blob (relatively, as
    /// `huggingface_hub` does) and points the revision's ref at the commit.
    fn link(&self, file: &str, metadata: &FileMetadata) -> Result<PathBuf, Error> {
        let link = self
            .repo_dir
            .join("snapshots")
            .join(&metadata.commit)
            .join(file);
        let folder = link.parent().expect("a snapshot file lies in a folder");
        fs::create_dir_all(folder).map_err(|error| self.cache_error(folder, error))?;
        let depth = Path::new(file).components().count() + 1;
        let target = Path::new(&"../".repeat(depth))
            .join("blobs")
            .join(&metadata.etag);
        replace_with_link(&target, &link).map_err(|error| self.cache_error(&link, error))?;
        if !is_commit_hash(&self.model.revision) {
            let path = self.repo_dir.join("refs").join(&self.model.revision);
            write_atomically(&path, metadata.commit.as_bytes())
                .map_err(|error| self.cache_error(&path, error))?;
        }
        Ok(link)
    }

    /// GET `url`, following every redirect by hand (each hop checked, the
    /// token only where it may go).
    fn get_following(
        &self,
        url: &Url,
        range: Option<&str>,
        file: &str,
    ) -> Result<ureq::Response, Failure> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let response = self.get(&self.content, &url, range, file)?;
            if !is_redirect(response.status()) {
                return Ok(response);
            }
            url = self.location(&url, &response, file)?;
        }
        Err(self.too_many_redirects(file))
    }

    /// One GET of `url`, without following a redirect; an error status is
    /// the Hub's refusal or a failure worth a retry.
    fn get(
        &self,
        agent: &ureq::Agent,
        url: &Url,
        range: Option<&str>,
        file: &str,
    ) -> Result<ureq::Response, Failure> {
        self.check_url(url)?;
        let mut request = agent.request_url("GET", url);
        if let Some(authorization) = self.authorization_for(url) {
            request = request.set("Authorization", &authorization);
        }
        if let Some(range) = range {
            request = request.set("Range", range);
        }
        match request.call() {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => {
                Err(self.refusal(file, status, &response))
            }
            Err(ureq::Error::Transport(transport)) => {
                Err(Failure::Transient(transport.to_string()))
            }
        }
    }

    /// `Authorization` for a request to `url`: only to the endpoint's own
    /// scheme, host and port, and over plain http only on this machine.
    fn authorization_for(&self, url: &Url) -> Option<String> {
        let token = self.model.settings.token.as_ref()?;
        let same_origin = url.origin() == self.endpoint.origin();
        let private = url.scheme() == "https" || is_loopback(url);
        (same_origin && private).then(|| format!("Bearer {token}"))
    }

    /// Refuses plain http to another machine unless the settings allow it.
    fn check_url(&self, url: &Url) -> Result<(), Error> {
        let allowed = match url.scheme() {
            "https" => true,
            "http" => is_loopback(url) || self.model.settings.allow_http,
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(Error::HubInsecureUrl {
                model: self.model.id.clone(),
                url: url.to_string(),
                reason: format!(
                    "plain http to another machine, where the weights can be changed on the \
                     way: use https, or set {} to allow it",
                    crate::weights::ALLOW_HTTP_ENV
                ),
            })
        }
    }

    /// A redirect's target, resolved against the URL that answered.
    fn location(&self, url: &Url, response: &ureq::Response, file: &str) -> Result<Url, Error> {
        let location = response.header("location").unwrap_or_default();
        url.join(location)
            .ok()
            .filter(|_| !location.is_empty())
            .ok_or_else(|| self.invalid_answer(file, "Location", location, "a URL"))
    }

    /// What an error status means: the Hub's typed refusals, or a failure
    /// worth a retry.
    fn refusal(&self, file: &str, status: u16, response: &ureq::Response) -> Failure {
        let header = |name: &str| response.header(name).map(str::to_string);
        let message = header("x-error-message").unwrap_or_default();
        match status {
            401 | 403 => Failure::Final(Error::HubAccessDenied {
                model: self.model.id.clone(),
                endpoint: self.model.settings.endpoint.clone(),
                status,
                message,
                advice: self.model.access_advice(status),
            }),
            404 => Failure::Final(match header("x-error-code").as_deref() {
                Some("RepoNotFound") => self.model.missing(HubMissing::Repository, file.into()),
                Some("RevisionNotFound") => self.model.missing(HubMissing::Revision, file.into()),
                _ => self.model.missing(HubMissing::File, file.into()),
            }),
            408 | 429 | 500..=599 => Failure::Transient(format!("HTTP {status} {message}")),
            _ => Failure::Final(
                self.model
                    .download_error(file, format!("HTTP {status} {message}")),
            ),
        }
    }

    fn too_many_redirects(&self, file: &str) -> Failure {
        Failure::Final(
            self.model
                .download_error(file, format!("more than {MAX_REDIRECTS} redirects")),
        )
    }

    fn invalid_answer(
        &self,
        file: &str,
        header: &'static str,
        value: &str,
        expected: &'static str,
    ) -> Error {
        // A hostile value can be long: enough of it to recognise.
        let value: String = value.chars().take(100).collect();
        Error::HubInvalidAnswer {
            model: self.model.id.clone(),
            endpoint: self.model.settings.endpoint.clone(),
            file: file.to_string(),
            header,
            value,
            expected,
        }
    }

    fn cache_error(&self, path: &Path, error: std::io::Error) -> Error {
        self.model.download_error(
            "",
            format!("cannot write {} in the cache: {error}", path.display()),
        )
    }
}

/// An agent that follows no redirect (they are followed by hand) and gives
/// up on a connection or a read after `timeout`.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .redirects(0)
        .timeout_connect(timeout)
        .timeout_read(timeout)
        .try_proxy_from_env(true)
        .user_agent(concat!("diffseg/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn is_redirect(status: u16) -> bool {
    (300..400).contains(&status)
}

/// Whether `url`'s host is this machine.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Where an answer's body starts in the file: `kept` for a `206` whose
/// `Content-Range` is the range asked for, 0 for a `200` (the whole file,
/// also when a range was asked for and ignored); its length must be the rest
/// of the file where it is declared.
fn body_start(response: &ureq::Response, kept: u64, size: u64) -> Result<u64, String> {
    let start = match response.status() {
        200 => 0,
        206 => {
            let range = response.header("content-range").unwrap_or_default();
            match parse_content_range(range) {
                Some((first, last, total))
                    if first == kept && last + 1 == size && total == size =>
                {
                    kept
                }
                _ => {
                    return Err(format!(
                        "asked for bytes {kept}- of {size}, the server sent `{range}`"
                    ))
                }
            }
        }
        status => return Err(format!("unexpected HTTP {status} for the content")),
    };
    if let Some(length) = response.header("content-length") {
        if length.trim().parse::<u64>().ok() != Some(size - start) {
            return Err(format!(
                "the server announced {length} bytes where {} of the file's {size} remain",
                size - start
            ));
        }
    }
    Ok(start)
}

/// `bytes first-last/total` → (first, last, total), with first ≤ last < total.
pub(crate) fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let number = |text: &str| {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<u64>().ok())
            .flatten()
    };
    let (first, last, total) = (number(first)?, number(last)?, number(total)?);
    (first <= last && last < total).then_some((first, last, total))
}

/// The content hash an `ETag` names (quotes and a weak `W/` prefix
/// dropped): 64 hex digits (SHA-256) or 40 (git SHA-1), lower-cased; `None`
/// for anything else, which must never become a file name.
pub(crate) fn parse_etag(value: &str) -> Option<String> {
    let value = value.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    let hex = value.bytes().all(|b| b.is_ascii_hexdigit());
    (hex && matches!(value.len(), 40 | 64)).then(|| value.to_ascii_lowercase())
}

/// A commit hash (40 hex digits), lower-cased; `None` for anything else,
/// which must never become a folder name.
pub(crate) fn parse_commit(value: &str) -> Option<String> {
    is_commit_hash(value.trim()).then(|| value.trim().to_ascii_lowercase())
}

pub(crate) fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// A revision is a branch, tag or commit, and becomes `refs/<revision>` in
/// the cache: parts separated by `/` (`refs/pr/1`), none empty, `.` or `..`,
/// and none of the characters git refuses in a ref name.
pub(crate) fn check_revision(revision: &str) -> Result<(), Error> {
    let part_ok = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && !part
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || "\\:?*[~^#%".contains(c))
    };
    if revision.split('/').all(part_ok) {
        Ok(())
    } else {
        Err(Error::unknown_name(
            "revision",
            revision,
            "a branch, tag or commit hash has no empty, `.` or `..` parts, spaces or any of \\:?*[~^#%",
        ))
    }
}

/// Checks `path` (`size` bytes expected) against `etag`: its SHA-256 for a
/// 64-digit ETag, its git blob SHA-1 for a 40-digit one.
fn verify(path: &Path, etag: &str, size: u64) -> Result<(), String> {
    let mut file = File::open(path).map_err(|error| error.to_string())?;
    let length = file.metadata().map_err(|error| error.to_string())?.len();
    if length != size {
        return Err(format!(
            "the downloaded file has {length} bytes, the Hub's {size}"
        ));
    }
    let (name, actual) = if etag.len() == 64 {
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(|error| error.to_string())?;
        ("SHA-256", format!("{:x}", hasher.finalize()))
    } else {
        let mut hasher = Sha1::new();
        hasher.update(format!("blob {length}\0").as_bytes());
        std::io::copy(&mut file, &mut hasher).map_err(|error| error.to_string())?;
        ("git SHA-1", format!("{:x}", hasher.finalize()))
    };
    if actual == etag {
        Ok(())
    } else {
        Err(format!(
            "the downloaded file's {name} is {actual}, the Hub's is {etag}"
        ))
    }
}

/// Makes `link` a symbolic link to `target` (a copy of the blob where
/// symbolic links are not available), replacing what was there in one rename.
fn replace_with_link(target: &Path, link: &Path) -> std::io::Result<()> {
    let folder = link.parent().expect("a link lies in a folder");
    let name = link
        .file_name()
        .expect("a link has a name")
        .to_string_lossy();
    let temporary = folder.join(format!(".{name}.{}.link", std::process::id()));
    let _ = fs::remove_file(&temporary);
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, &temporary)?;
    #[cfg(not(unix))]
    fs::copy(folder.join(target), &temporary).map(|_| ())?;
    fs::rename(&temporary, link).inspect_err(|_| {
        let _ = fs::remove_file(&temporary);
    })
}

/// Writes `bytes` to `path` through a temporary file in its folder, renamed
/// into place: a reader sees the old ref or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let folder = path.parent().expect("a ref lies in refs/");
    fs::create_dir_all(folder)?;
    let mut temporary = tempfile::NamedTempFile::new_in(folder)?;
    temporary.write_all(bytes)?;
    temporary
        .persist(path)
        .map(|_| ())
        .map_err(|error| error.error)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn etags_are_hashes_and_nothing_else() {
        let sha256 = "a".repeat(64);
        let sha1 = "B".repeat(40);
        assert_eq!(parse_etag(&format!("\"{sha256}\"")), Some(sha256.clone()));
        assert_eq!(parse_etag(&format!("W/\"{sha1}\"")), Some("b".repeat(40)));
        for bad in [
            "",
            "\"\"",
            "/etc/passwd",
            "../../x",
            &"a".repeat(63),
            &"g".repeat(40),
        ] {
            assert_eq!(parse_etag(bad), None, "{bad}");
        }
    }

    #[test]
    fn commits_are_forty_hex_digits() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(parse_commit(commit).as_deref(), Some(commit));
        for bad in [
            "main",
            "../../../../tmp/x",
            &commit[..39],
            &format!("{commit}0"),
        ] {
            assert_eq!(parse_commit(bad), None, "{bad}");
        }
    }

    #[test]
    fn revisions_stay_inside_refs() {
        for good in [
            "main",
            "v1.0",
            "refs/pr/1",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            assert!(check_revision(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            "../x",
            "a/../../b",
            "/abs",
            "a//b",
            "a\\b",
            "a b",
            "x?y",
        ] {
            assert!(check_revision(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_ranges_are_read_strictly() {
        assert_eq!(parse_content_range("bytes 0-0/10"), Some((0, 0, 10)));
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, 9, 10)));
        for bad in [
            "bytes */10",
            "bytes 5-4/10",
            "bytes 0-10/10",
            "0-1/2",
            "bytes -1-2/3",
            "bytes +1-2/3",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_git_blob_is_checked_by_its_sha1() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("config.json");
        std::fs::write(&path, b"hello\n").unwrap();
        // `git hash-object` of "hello\n".
        let etag = "ce013625030ba8dba906f756967f9e9ca394464a";
        assert_eq!(verify(&path, etag, 6), Ok(()));
        let error = verify(&path, &"0".repeat(40), 6).unwrap_err();
        assert!(error.contains("git SHA-1"), "{error}");
        assert!(verify(&path, etag, 7).is_err());
    }

    proptest! {
        #[test]
        fn etag_parsing_accepts_only_hashes(value in ".{0,80}") {
            if let Some(etag) = parse_etag(&value) {
                prop_assert!(matches!(etag.len(), 40 | 64));
                prop_assert!(etag.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            }
        }

        #[test]
        fn hex_etags_of_the_right_length_are_accepted(value in "[0-9a-fA-F]{40}|[0-9a-fA-F]{64}") {
            let quoted = format!("\"{value}\"");
            prop_assert_eq!(parse_etag(&quoted), Some(value.to_ascii_lowercase()));
        }

        #[test]
        fn commit_parsing_accepts_only_commits(value in ".{0,60}") {
            if let Some(commit) = parse_commit(&value) {
                prop_assert!(is_commit_hash(&commit));
                prop_assert!(!commit.contains('/') && !commit.contains('.'));
            }
        }

        #[test]
        fn checked_revisions_never_leave_refs(value in "[a-z./\\\\ ]{0,12}") {
            if check_revision(&value).is_ok() {
                let joined = Path::new("refs").join(&value);
                prop_assert!(joined.components().all(|c| matches!(c, std::path::Component::Normal(_))));
            }
        }

        #[test]
        fn content_ranges_never_panic(value in ".{0,40}") {
            if let Some((first, last, total)) = parse_content_range(&value) {
                prop_assert!(first <= last && last < total);
            }
        }
    }
}
