//! `diffseg fetch` and `diffseg segment` download through `HF_ENDPOINT` from a
//! local stand-in for the Hugging Face Hub (on 127.0.0.1; see
//! `diffseg/tests/support/hub_server.rs`), with `HF_HOME` in a temporary
//! folder: the environment variables as the Python hub client reads them.

use crate::common;

#[path = "../../diffseg/tests/support/hub_server.rs"]
mod hub_server;

use common::text;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hub_server::{assert_holds, Access, Fault, HubServer, ServedRepo};

const MODEL: &str = "tiny/sd";

/// `diffseg args` with only the Hub variables given here set.
fn diffseg(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_diffseg"));
    command.args(args);
    for name in [
        "DIFFSEG_WEIGHTS",
        "HF_ENDPOINT",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_DOWNLOAD_TIMEOUT",
        "HF_HUB_ETAG_TIMEOUT",
        "DIFFSEG_HUB_ALLOW_HTTP",
        // ureq ignores NO_PROXY: a proxy would be asked for 127.0.0.1.
        "ALL_PROXY",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "all_proxy",
        "https_proxy",
        "http_proxy",
    ] {
        command.env_remove(name);
    }
    command.envs(vars.iter().copied()).output().unwrap()
}

#[test]
fn fetch_downloads_through_hf_endpoint_then_uses_the_cache() {
    let served = ServedRepo::tiny(MODEL);
    let commit = served.commit.clone();
    let server = HubServer::start(vec![served]);
    let home = tempfile::tempdir().unwrap();
    let vars = [
        ("HF_ENDPOINT", server.endpoint.as_str()),
        ("HF_HOME", home.path().to_str().unwrap()),
    ];

    let first = diffseg(&["fetch", "--model", MODEL], &vars);
    assert!(first.status.success(), "{}", text(&first));
    let snapshot = home
        .path()
        .join("hub/models--tiny--sd/snapshots")
        .join(&commit);
    assert!(String::from_utf8_lossy(&first.stdout).contains("6 files downloaded"));
    assert!(String::from_utf8_lossy(&first.stdout).contains(snapshot.to_str().unwrap()));
    // Progress: a line per file on a non-terminal standard error.
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        stderr.contains("downloading unet/diffusion_pytorch_model.safetensors"),
        "{}",
        text(&first)
    );
    assert_holds(
        &snapshot,
        &[
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors",
        ],
    );

    let before = server.requests().len();
    let second = diffseg(&["fetch", "--model", MODEL], &vars);
    assert!(second.status.success(), "{}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("already in the Hugging Face cache"),
        "{}",
        text(&second)
    );
    assert_eq!(
        server.requests().len(),
        before,
        "the second run made requests"
    );

    // Offline with an empty cache elsewhere: the files to fetch, no request.
    let empty = tempfile::tempdir().unwrap();
    let offline = diffseg(
        &["fetch", "--model", MODEL],
        &[
            ("HF_ENDPOINT", server.endpoint.as_str()),
            ("HF_HUB_CACHE", empty.path().to_str().unwrap()),
            ("HF_HUB_OFFLINE", "yes"),
        ],
    );
    assert!(!offline.status.success(), "{}", text(&offline));
    let stderr = String::from_utf8_lossy(&offline.stderr);
    for expected in [
        "HF_HUB_OFFLINE",
        "unet/config.json",
        "text_encoder/model.safetensors",
    ] {
        assert!(
            stderr.contains(expected),
            "`{expected}` missing: {}",
            text(&offline)
        );
    }
    assert_eq!(server.requests().len(), before);
}

#[test]
fn fetch_takes_a_revision_and_a_variant_into_hf_hub_cache() {
    let served = ServedRepo::tiny(MODEL);
    let commit = served.commit.clone();
    let server = HubServer::start(vec![served]);
    let cache = tempfile::tempdir().unwrap();
    let output = diffseg(
        &[
            "fetch",
            "--model",
            MODEL,
            "--revision",
            &commit,
            "--variant",
            "fp16",
        ],
        &[
            ("HF_ENDPOINT", server.endpoint.as_str()),
            ("HF_HUB_CACHE", cache.path().to_str().unwrap()),
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    let snapshot = cache
        .path()
        .join("models--tiny--sd/snapshots")
        .join(&commit);
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

    let unknown = diffseg(
        &["fetch", "--model", "nobody/nothing"],
        &[
            ("HF_ENDPOINT", server.endpoint.as_str()),
            ("HF_HUB_CACHE", cache.path().to_str().unwrap()),
        ],
    );
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("nobody/nothing") && stderr.contains("404"),
        "{}",
        text(&unknown)
    );
}

#[test]
fn a_private_model_is_fetched_with_hf_token_or_the_token_file() {
    let private = ServedRepo::tiny(MODEL).with_access(Access::Private("hf_secret".into()));
    let server = HubServer::start(vec![private]);
    let home = tempfile::tempdir().unwrap();
    let vars = [
        ("HF_ENDPOINT", server.endpoint.as_str()),
        ("HF_HOME", home.path().to_str().unwrap()),
    ];

    let refused = diffseg(&["fetch", "--model", MODEL], &vars);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    for expected in ["tiny/sd", "401", "HF_TOKEN"] {
        assert!(
            stderr.contains(expected),
            "`{expected}` missing: {}",
            text(&refused)
        );
    }

    let with_env = diffseg(
        &["fetch", "--model", MODEL],
        &[vars[0], vars[1], ("HF_TOKEN", "hf_secret")],
    );
    assert!(with_env.status.success(), "{}", text(&with_env));

    // The token file `huggingface-cli login` writes, into a fresh cache.
    let cache = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), "hf_secret\n").unwrap();
    let with_file = diffseg(
        &["fetch", "--model", MODEL],
        &[
            vars[0],
            vars[1],
            ("HF_HUB_CACHE", cache.path().to_str().unwrap()),
        ],
    );
    assert!(with_file.status.success(), "{}", text(&with_file));
    assert!(String::from_utf8_lossy(&with_file.stdout).contains("6 files downloaded"));
}

#[test]
fn segment_downloads_the_model_it_needs_through_hf_endpoint() {
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/images/coffee.png");
    let output = diffseg(
        &[
            "segment",
            image.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
            "--model",
            MODEL,
            "--variant",
            "fp16",
        ],
        &[
            ("HF_ENDPOINT", server.endpoint.as_str()),
            ("HF_HOME", home.path().to_str().unwrap()),
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    let requests = server.requests();
    let weights: Vec<_> = requests
        .iter()
        .filter(|request| {
            request.path.contains("/resolve/") && request.path.ends_with(".safetensors")
        })
        .collect();
    assert!(!weights.is_empty());
    assert!(
        weights
            .iter()
            .all(|request| request.path.ends_with(".fp16.safetensors")),
        "{weights:#?}"
    );
}

#[test]
fn hf_token_is_not_sent_to_the_content_host_the_hub_redirects_to() {
    let private = ServedRepo::tiny(MODEL).with_access(Access::Private("hf_secret".into()));
    let server = HubServer::start_with_content_host(vec![private]);
    let home = tempfile::tempdir().unwrap();
    let output = diffseg(
        &["fetch", "--model", MODEL],
        &[
            ("HF_ENDPOINT", server.endpoint.as_str()),
            ("HF_HOME", home.path().to_str().unwrap()),
            ("HF_TOKEN", "hf_secret"),
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    let requests = server.requests();
    let content: Vec<_> = requests
        .iter()
        .filter(|request| request.host.starts_with("localhost:"))
        .collect();
    assert!(!content.is_empty(), "{requests:#?}");
    assert!(
        content
            .iter()
            .all(|request| request.authorization.is_none()),
        "{content:#?}"
    );
}

#[test]
fn fetch_gives_up_on_a_stalled_server_after_hf_hub_download_timeout_and_resumes() {
    const STALLED: &str = "unet/diffusion_pytorch_model.safetensors";
    let server = HubServer::start(vec![ServedRepo::tiny(MODEL)]);
    server.fault_once(STALLED, Fault::Stall);
    let home = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = diffseg(
        &["fetch", "--model", MODEL],
        &[
            ("HF_ENDPOINT", server.endpoint.as_str()),
            ("HF_HOME", home.path().to_str().unwrap()),
            ("HF_HUB_DOWNLOAD_TIMEOUT", "1"),
        ],
    );
    // The server stalls for a minute; one second of silence ends the attempt.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("downloading {STALLED} failed")) && stderr.contains("resuming"),
        "{}",
        text(&output)
    );
}
