//! Where the Stable Diffusion weights come from.
//!
//! In order: an explicit path (a diffusers folder or a single-file checkpoint),
//! else the `DIFFSEG_WEIGHTS` environment variable, else the Hugging Face cache
//! (`HF_HOME`, by default `~/.cache/huggingface`), else a download with `hf-hub`
//! of only the files segmentation needs (fp16 variants where the repository has
//! them). Offline with nothing found, the error lists which files to put where.

use std::fmt;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::Cache;

use crate::Error;

/// What [`crate::Pipeline::load`] reads: a diffusers folder or a single-file
/// checkpoint, with the file variant (f32, fp16, bf16) to prefer.
pub use diffseg_sd::weights::{Variant, WeightsSource};

/// The default model: Stable Diffusion 1.5.
pub const DEFAULT_MODEL: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";
/// The model the paper's numbers were measured with.
pub const PAPER_MODEL: &str = "CompVis/stable-diffusion-v1-4";
/// The environment variable naming a weights folder or file.
pub const WEIGHTS_ENV: &str = "DIFFSEG_WEIGHTS";

/// One network's files in the diffusers folder layout.
struct Component {
    folder: &'static str,
    weights_stem: &'static str,
}

/// The three networks segmentation needs (the VAE decoder is never used, but
/// the diffusers VAE file holds both halves).
const COMPONENTS: [Component; 3] = [
    Component {
        folder: "unet",
        weights_stem: "diffusion_pytorch_model",
    },
    Component {
        folder: "vae",
        weights_stem: "diffusion_pytorch_model",
    },
    Component {
        folder: "text_encoder",
        weights_stem: "model",
    },
];

impl Component {
    fn config(&self) -> String {
        format!("{}/config.json", self.folder)
    }

    /// The weight files to look for, preferred first: half the download for
    /// the fp16 variant, converted to the compute precision on load.
    fn weights_candidates(&self) -> [String; 2] {
        [
            format!("{}/{}.fp16.safetensors", self.folder, self.weights_stem),
            format!("{}/{}.safetensors", self.folder, self.weights_stem),
        ]
    }
}

/// The files a diffusers folder needs, as one line per file for messages.
pub fn needed_files() -> Vec<String> {
    COMPONENTS
        .iter()
        .flat_map(|component| {
            let [fp16, full] = component.weights_candidates();
            [component.config(), format!("{full} (or {fp16})")]
        })
        .collect()
}

/// How the weights were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Looks for weights without downloading: explicit path, then `DIFFSEG_WEIGHTS`,
/// then the Hugging Face cache for `model`. `Ok(None)` when there are none; an
/// error when an explicit or environment path does not exist.
pub fn locate_weights(explicit: Option<&Path>, model: &str) -> Result<Option<FoundWeights>, Error> {
    if let Some(path) = explicit {
        return existing(path, WeightsOrigin::Explicit).map(Some);
    }
    if let Some(value) = std::env::var_os(WEIGHTS_ENV).filter(|value| !value.is_empty()) {
        return existing(Path::new(&value), WeightsOrigin::Environment).map(Some);
    }
    Ok(cached_snapshot(model).map(|path| FoundWeights {
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

/// The Hugging Face cache's snapshot folder of `model` if it holds every file
/// segmentation needs.
pub fn cached_snapshot(model: &str) -> Option<PathBuf> {
    let repo = Cache::from_env().model(model.to_string());
    let mut snapshot = None;
    for component in &COMPONENTS {
        let config = repo.get(&component.config())?;
        component
            .weights_candidates()
            .iter()
            .find_map(|file| repo.get(file))?;
        // `<snapshot>/<folder>/config.json`: every file resolves in the same snapshot.
        snapshot = config.parent()?.parent().map(Path::to_path_buf);
    }
    snapshot
}

/// The Hugging Face cache folder in use (for messages and `diffseg info`).
pub fn cache_dir() -> PathBuf {
    Cache::from_env().path().clone()
}

/// Whether downloads are switched off (`HF_HUB_OFFLINE=1`, as the Python hub reads it).
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|value| matches!(value.as_str(), "1" | "true" | "TRUE" | "yes"))
}

/// Downloads the files segmentation needs for `model` into the Hugging Face
/// cache (files already there are not fetched again) and returns the snapshot
/// folder, a diffusers layout. `progress` shows a progress bar per file.
pub fn fetch_weights(model: &str, progress: bool) -> Result<PathBuf, Error> {
    if offline() {
        return Err(not_found(
            model,
            "downloads are off (HF_HUB_OFFLINE is set)".into(),
        ));
    }
    let api = ApiBuilder::from_cache(Cache::from_env())
        .with_progress(progress)
        .build()
        .map_err(|error| not_found(model, format!("cannot start the download client: {error}")))?;
    let repo = api.model(model.to_string());
    let mut snapshot = None;
    for component in &COMPONENTS {
        let config = repo.get(&component.config()).map_err(|error| {
            not_found(
                model,
                format!("download of {} failed: {error}", component.config()),
            )
        })?;
        let [fp16, full] = component.weights_candidates();
        if let Err(fp16_error) = repo.get(&fp16) {
            repo.get(&full).map_err(|error| {
                not_found(
                    model,
                    format!("download of {full} failed: {error} (and of {fp16}: {fp16_error})"),
                )
            })?;
        }
        snapshot = config
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
    }
    snapshot.ok_or_else(|| not_found(model, "the download left no snapshot folder".into()))
}

/// Finds the weights (see [`locate_weights`]), downloading them if allowed and
/// nothing was found.
pub fn resolve_weights(
    explicit: Option<&Path>,
    model: &str,
    allow_download: bool,
) -> Result<FoundWeights, Error> {
    if let Some(found) = locate_weights(explicit, model)? {
        return Ok(found);
    }
    if !allow_download {
        return Err(not_found(model, "downloads are off".into()));
    }
    fetch_weights(model, true).map(|path| FoundWeights {
        path,
        origin: WeightsOrigin::Downloaded,
    })
}

fn not_found(model: &str, reason: String) -> Error {
    Error::WeightsNotFound {
        model: model.to_string(),
        reason,
        cache: cache_dir(),
        files: needed_files(),
    }
}

#[cfg(test)]
mod tests {
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
}
