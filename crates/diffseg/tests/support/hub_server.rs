//! A local stand-in for the Hugging Face Hub, on 127.0.0.1, serving the tiny
//! fixture model as the Hub's resolve endpoint serves a repository:
//!
//! - `GET /{repo}/resolve/{revision}/{file}` answers small files itself
//!   (`ETag`, `X-Repo-Commit`, `Accept-Ranges`, `Content-Range` for a range)
//!   and redirects large (LFS) files with `302` to a content store at
//!   `/cdn/{sha256}`, with `X-Linked-Etag` (the SHA-256), `X-Linked-Size` and
//!   `X-Repo-Commit`, as the Hub does;
//! - a renamed repository answers `307` with a relative `Location`;
//! - errors carry the Hub's `X-Error-Code` / `X-Error-Message`: 404
//!   `RepoNotFound`, `RevisionNotFound` or `EntryNotFound`; 401 for a private
//!   repository without its token; 403 for a gated one;
//! - `Range: bytes=a-` / `bytes=a-b` answer `206`.
//!
//! Every request is logged, so tests can tell that a run made none. Small
//! files are named by their git blob SHA-1, as on the Hub.
//!
//! Hostile modes, to test that the client trusts nothing:
//!
//! - per file, its next content transfer ([`Fault`]): cut midway (headers
//!   promise the whole file, half comes, the connection closes), garbled,
//!   stalled midway, short or long (a body consistent with its own
//!   `Content-Length`, not with the file), or a `200` with the whole file
//!   answered to a range request;
//! - every answer's ETag or commit replaced ([`HubServer::forge_etag`],
//!   [`HubServer::forge_commit`]), e.g. by a path;
//! - the content store on a second listener under another host name
//!   (`localhost` rather than `127.0.0.1`; [`HubServer::start_with_content_host`]),
//!   as the Hub redirects to another host.
//!
//! One request per connection (`Connection: close`).

#![allow(dead_code)] // Each test binary uses a part of it.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The tiny random-weight model in the diffusers layout.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffseg-sd/tests/fixtures/tiny")
}

/// The files of the fixture's diffusers layout, by path in the repository.
pub fn fixture_files() -> BTreeMap<String, Vec<u8>> {
    let root = fixture_dir();
    let mut files = BTreeMap::new();
    files.insert(
        "model_index.json".to_string(),
        std::fs::read(root.join("model_index.json")).unwrap(),
    );
    for folder in ["unet", "vae", "text_encoder"] {
        for entry in std::fs::read_dir(root.join(folder)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap();
            files.insert(format!("{folder}/{name}"), std::fs::read(&path).unwrap());
        }
    }
    files
}

/// Checks that `snapshot` holds exactly the served bytes of `files`.
pub fn assert_holds(snapshot: &Path, files: &[&str]) {
    let served = fixture_files();
    for file in files {
        let bytes = std::fs::read(snapshot.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            bytes == served[*file],
            "{file} differs from the served file"
        );
    }
}

/// Who may read a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Only with this token (`Authorization: Bearer <token>`).
    Private(String),
    /// Never: 401 without a token, 403 with one (conditions not accepted).
    Gated,
}

/// A repository the server holds.
#[derive(Debug, Clone)]
pub struct ServedRepo {
    pub id: String,
    /// The commit hash `main` points at.
    pub commit: String,
    pub files: BTreeMap<String, Vec<u8>>,
    pub access: Access,
    /// An old id that redirects here.
    pub renamed_from: Option<String>,
}

impl ServedRepo {
    /// The whole fixture, public.
    pub fn tiny(id: &str) -> ServedRepo {
        ServedRepo {
            id: id.to_string(),
            commit: format!("{:x}", Sha256::digest(id.as_bytes()))[..40].to_string(),
            files: fixture_files(),
            access: Access::Public,
            renamed_from: None,
        }
    }

    /// Without the files `drop` picks.
    pub fn without(mut self, drop: impl Fn(&str) -> bool) -> ServedRepo {
        self.files.retain(|path, _| !drop(path));
        self
    }

    pub fn with_access(mut self, access: Access) -> ServedRepo {
        self.access = access;
        self
    }

    pub fn renamed_from(mut self, old_id: &str) -> ServedRepo {
        self.renamed_from = Some(old_id.to_string());
        self
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The `Host` header (`127.0.0.1:port` or `localhost:port`).
    pub host: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct State {
    repos: Vec<ServedRepo>,
    /// LFS content by SHA-256, as the content store serves it: (repo file, bytes).
    blobs: HashMap<String, (String, Vec<u8>)>,
    log: Mutex<Vec<Logged>>,
    /// Repository files whose next body transfer goes wrong, and how.
    faults: Mutex<HashMap<String, Fault>>,
    /// Replaces the `ETag` and `X-Linked-Etag` of every answer.
    forged_etag: Mutex<Option<String>>,
    /// Replaces the `X-Repo-Commit` of every answer.
    forged_commit: Mutex<Option<String>>,
}

/// How a file's next content transfer goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Half the promised bytes, then the connection closes.
    Cut,
    /// Every byte changed, the length kept.
    Garble,
    /// Half the promised bytes, then nothing for a minute.
    Stall,
    /// Half the file, with a `Content-Length` of half.
    Short,
    /// The file and 100 bytes more, with a `Content-Length` of all of it.
    Long,
    /// A range request answered `200` with the whole file.
    IgnoreRange,
}

/// The running server (its threads live as long as the test process).
pub struct HubServer {
    /// `http://127.0.0.1:<port>`, for `HF_ENDPOINT`.
    pub endpoint: String,
    state: Arc<State>,
}

impl HubServer {
    pub fn start(repos: Vec<ServedRepo>) -> HubServer {
        HubServer::start_on(repos, None)
    }

    /// With the content store on a second listener, redirected to as
    /// `http://localhost:<port>`: another host than the endpoint's 127.0.0.1.
    pub fn start_with_content_host(repos: Vec<ServedRepo>) -> HubServer {
        let content = TcpListener::bind("127.0.0.1:0").unwrap();
        HubServer::start_on(repos, Some(content))
    }

    fn start_on(repos: Vec<ServedRepo>, content: Option<TcpListener>) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let content_base = match &content {
            Some(content) => format!("http://localhost:{}", content.local_addr().unwrap().port()),
            None => endpoint.clone(),
        };
        let blobs = repos
            .iter()
            .flat_map(|repo| &repo.files)
            .filter(|(path, _)| is_lfs(path))
            .map(|(path, bytes)| (sha256(bytes), (path.clone(), bytes.clone())))
            .collect();
        let state = Arc::new(State {
            repos,
            blobs,
            ..State::default()
        });
        for listener in std::iter::once(listener).chain(content) {
            let served = Arc::clone(&state);
            let base = content_base.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let state = Arc::clone(&served);
                    let base = base.clone();
                    std::thread::spawn(move || serve(stream, &state, &base));
                }
            });
        }
        HubServer { endpoint, state }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    /// Cuts the next transfer of `file`'s content midway.
    pub fn cut_once(&self, file: &str) {
        self.fault_once(file, Fault::Cut);
    }

    /// Garbles the next transfer of `file`'s content (same length).
    pub fn garble_once(&self, file: &str) {
        self.fault_once(file, Fault::Garble);
    }

    /// Makes the next transfer of `file`'s content go wrong this way.
    pub fn fault_once(&self, file: &str, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap()
            .insert(file.to_string(), fault);
    }

    /// Every answer names its content by `etag` from now on.
    pub fn forge_etag(&self, etag: &str) {
        *self.state.forged_etag.lock().unwrap() = Some(etag.to_string());
    }

    /// Every answer names `commit` as the revision's from now on.
    pub fn forge_commit(&self, commit: &str) {
        *self.state.forged_commit.lock().unwrap() = Some(commit.to_string());
    }
}

/// The git blob SHA-1 the Hub names a small file by.
pub fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
    hasher.update(bytes);
    format!("{:x}", hasher.finalize())
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Weights go through Git LFS on the Hub, configs do not.
fn is_lfs(path: &str) -> bool {
    path.ends_with(".safetensors")
}

struct Request {
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    Some(Request { path, headers })
}

/// What to send back.
struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Send only this many bytes of the body, then close.
    cut_at: Option<usize>,
    /// After `cut_at`, wait this long before closing.
    stall: Option<Duration>,
}

impl Response {
    fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut_at: None,
            stall: None,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    fn hub_error(status: u16, code: &str, message: &str) -> Response {
        let mut response = Response::new(status)
            .header("X-Error-Message", message)
            .header("Content-Type", "application/json");
        if !code.is_empty() {
            response = response.header("X-Error-Code", code);
        }
        response.body = format!("{{\"error\":\"{message}\"}}").into_bytes();
        response
    }
}

fn serve(mut stream: TcpStream, state: &State, base: &str) {
    let Some(request) = read_request(&stream) else {
        return;
    };
    let response = forge(respond(&request, state, base), state);
    state.log.lock().unwrap().push(Logged {
        host: request.headers.get("host").cloned().unwrap_or_default(),
        path: request.path.clone(),
        range: request.headers.get("range").cloned(),
        authorization: request.headers.get("authorization").cloned(),
        status: response.status,
    });
    let mut head = format!("HTTP/1.1 {} Hub\r\n", response.status);
    for (name, value) in &response.headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        response.body.len()
    );
    let body = &response.body[..response.cut_at.unwrap_or(response.body.len())];
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
    if let Some(stall) = response.stall {
        std::thread::sleep(stall);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// The answer with the forged ETag and commit, if any.
fn forge(mut response: Response, state: &State) -> Response {
    let etag = state.forged_etag.lock().unwrap().clone();
    let commit = state.forged_commit.lock().unwrap().clone();
    for (name, value) in &mut response.headers {
        match (*name, &etag, &commit) {
            ("ETag" | "X-Linked-Etag", Some(etag), _) => *value = format!("\"{etag}\""),
            ("X-Repo-Commit", _, Some(commit)) => *value = commit.clone(),
            _ => {}
        }
    }
    response
}

fn respond(request: &Request, state: &State, base: &str) -> Response {
    if let Some(sha) = request.path.strip_prefix("/cdn/") {
        // The content store: no commit header, only bytes (and ranges of them).
        return match state.blobs.get(sha) {
            Some((file, bytes)) => content(request, state, file, bytes),
            None => Response::hub_error(404, "", "no such object"),
        };
    }
    let Some((repo_id, rest)) = split_repo(&request.path) else {
        return Response::hub_error(404, "", "not found");
    };
    let Some((revision, file)) = rest
        .strip_prefix("resolve/")
        .and_then(|r| r.split_once('/'))
    else {
        return Response::hub_error(404, "", "not found");
    };
    if let Some(repo) = state
        .repos
        .iter()
        .find(|repo| repo.renamed_from.as_deref() == Some(repo_id.as_str()))
    {
        return Response::new(307).header(
            "Location",
            format!("/{}/resolve/{revision}/{file}", repo.id),
        );
    }
    let Some(repo) = state.repos.iter().find(|repo| repo.id == repo_id) else {
        return Response::hub_error(404, "RepoNotFound", "Repository not found");
    };
    let authorization = request.headers.get("authorization");
    match (&repo.access, authorization) {
        (Access::Public, _) => {}
        (Access::Private(token), Some(given)) if *given == format!("Bearer {token}") => {}
        (Access::Private(_) | Access::Gated, None) => {
            return Response::hub_error(401, "RepoNotFound", "Repository not found")
        }
        (Access::Private(_), Some(_)) => {
            return Response::hub_error(401, "", "Invalid credentials in Authorization header")
        }
        (Access::Gated, Some(_)) => {
            return Response::hub_error(
                403,
                "GatedRepo",
                "Access to this model is restricted: you must accept its conditions",
            )
        }
    }
    if revision != "main" && revision != repo.commit {
        return Response::hub_error(
            404,
            "RevisionNotFound",
            &format!("Invalid rev id: {revision}"),
        );
    }
    let Some(bytes) = repo.files.get(file) else {
        return Response::hub_error(404, "EntryNotFound", "Entry not found");
    };
    if is_lfs(file) {
        let sha = sha256(bytes);
        Response::new(302)
            .header("Location", format!("{base}/cdn/{sha}"))
            .header("X-Repo-Commit", repo.commit.clone())
            .header("ETag", format!("\"{}\"", &sha256(file.as_bytes())[..40]))
            .header("X-Linked-Etag", format!("\"{sha}\""))
            .header("X-Linked-Size", bytes.len().to_string())
    } else {
        content(request, state, file, bytes)
            .header("X-Repo-Commit", repo.commit.clone())
            .header("ETag", format!("\"{}\"", git_blob_sha1(bytes)))
    }
}

/// `/{org}/{name}/rest` → (`org/name`, `rest`).
fn split_repo(path: &str) -> Option<(String, &str)> {
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    let (org, name, rest) = (parts.next()?, parts.next()?, parts.next()?);
    Some((format!("{org}/{name}"), rest))
}

/// The bytes of `file`, or the range asked for.
fn content(request: &Request, state: &State, file: &str, bytes: &[u8]) -> Response {
    let total = bytes.len();
    let range = request.headers.get("range").map(|range| {
        let spec = range.trim_start_matches("bytes=");
        let (start, end) = spec.split_once('-').unwrap();
        let start: usize = start.parse().unwrap();
        let end = if end.is_empty() {
            total.saturating_sub(1)
        } else {
            end.parse::<usize>().unwrap().min(total - 1)
        };
        (start, end)
    });
    // A transfer of content, not the one-byte probe for the headers.
    let probe = request.headers.get("range").map(String::as_str) == Some("bytes=0-0");
    let fault = if probe {
        None
    } else {
        state.faults.lock().unwrap().remove(file)
    };
    let range = range.filter(|_| fault != Some(Fault::IgnoreRange));
    let mut response = match range {
        Some((start, _)) if start >= total => {
            return Response::hub_error(416, "", "Range Not Satisfiable")
                .header("Content-Range", format!("bytes */{total}"))
        }
        Some((start, end)) => {
            let mut response =
                Response::new(206).header("Content-Range", format!("bytes {start}-{end}/{total}"));
            response.body = bytes[start..=end].to_vec();
            response
        }
        None => {
            let mut response = Response::new(200);
            response.body = bytes.to_vec();
            response
        }
    };
    match fault {
        Some(Fault::Cut) => response.cut_at = Some(response.body.len() / 2),
        Some(Fault::Stall) => {
            response.cut_at = Some(response.body.len() / 2);
            response.stall = Some(Duration::from_secs(60));
        }
        Some(Fault::Garble) => {
            for byte in &mut response.body {
                *byte ^= 0x5a;
            }
        }
        Some(Fault::Short) => response.body.truncate(response.body.len() / 2),
        Some(Fault::Long) => response.body.extend_from_slice(&[b' '; 100]),
        Some(Fault::IgnoreRange) | None => {}
    }
    response.header("Accept-Ranges", "bytes")
}
