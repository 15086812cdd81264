//! The apply layer: a weights file's tensors into a network, under the
//! network's own names, with everything that does not fit reported at once.

use std::collections::{HashMap, HashSet};

use burn::tensor::backend::Backend;
use burn_store::{ApplyError, KeyRemapper, ModuleSnapshot};

use super::dtype::CastingAdapter;
use super::network::sealed::KeyMap;
use super::{KeyRole, LayoutFile, Network, NetworkConfig};
use crate::error::{MismatchReport, ShapeMismatch};
use crate::keys::DIFFUSERS_KEY_REMAP;
use crate::Error;

/// Builds network `N` from `config` and loads into it the tensors of `file`
/// that belong to it: translates the file's keys, applies the tensors, and
/// reports every mismatch and non-finite weight as one error.
pub(super) fn load<B: Backend, N: Network<B>>(
    config: &N::Config,
    file: &LayoutFile,
    device: &B::Device,
) -> Result<N, Error> {
    let LayoutFile { file, layout } = file;
    let component = <N::Config as NetworkConfig>::COMPONENT;
    let mut module = N::init(config, device)?;
    let mut report = MismatchReport::default();
    let mut snapshots = Vec::new();
    // Diffusers key -> file key, to report problems under the file's names.
    let mut file_keys = HashMap::new();
    for key in file.keys() {
        match config.key_role(*layout, key) {
            KeyRole::Load {
                key: diffusers_key,
                conv_to_linear,
            } => {
                snapshots.push(file.snapshot(key, &diffusers_key, conv_to_linear)?);
                file_keys.insert(diffusers_key, key.to_string());
            }
            KeyRole::NotNeeded => {}
            KeyRole::Unexpected => report.unexpected.push(key.to_string()),
        }
    }
    // Diffusers keys -> field paths; remember field path -> file key.
    let (snapshots, renamed) = field_path_remapper().remap(snapshots);
    let file_keys: HashMap<String, String> = renamed
        .into_iter()
        .filter_map(|(field_path, diffusers_key)| {
            file_keys
                .remove(&diffusers_key)
                .map(|file_key| (field_path, file_key))
        })
        .collect();
    let file_key = |path: &str| {
        file_keys
            .get(path)
            .cloned()
            .unwrap_or_else(|| path.to_string())
    };

    let adapter = CastingAdapter::for_backend::<B>();
    // `skip_enum_variants`: `proj_in`/`proj_out` are an enum (conv or linear).
    let result = module.apply(snapshots, None, Some(Box::new(adapter.clone())), true);

    report.applied = result.applied.len();
    report.missing = result.missing.into_iter().map(|(path, _)| path).collect();
    let applied: HashSet<&str> = result.applied.iter().map(String::as_str).collect();
    report.unexpected.extend(
        result
            .unused
            .iter()
            .filter(|path| !applied_under_norm_name(path, &applied))
            .map(|path| file_key(path)),
    );
    for error in result.errors {
        match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => {
                report.shape_mismatches.push(ShapeMismatch {
                    key: file_key(&path),
                    expected,
                    found,
                });
            }
            other => report.unreadable.push(other.to_string()),
        }
    }
    if !report.is_empty() {
        return Err(Error::Mismatch {
            path: file.path().to_path_buf(),
            component,
            report: Box::new(report),
        });
    }
    let non_finite = adapter.non_finite();
    if !non_finite.is_empty() {
        return Err(Error::NonFinite {
            path: file.path().to_path_buf(),
            component,
            dtype: adapter.target(),
            tensors: non_finite
                .into_iter()
                .map(|(path, count)| (file_key(&path), count))
                .collect(),
        });
    }
    Ok(module)
}

/// Whether burn-store applied `path` (`….weight`/`….bias`) to a norm layer's
/// `gamma`/`beta`.
///
/// burn-store 0.20.1 finds norm parameters through the adapter's alternative
/// name but still lists the file key as unused; without this every
/// GroupNorm/LayerNorm would look like an unexpected key.
fn applied_under_norm_name(path: &str, applied: &HashSet<&str>) -> bool {
    let burn_name = |prefix: &str, name: &str| applied.contains(format!("{prefix}{name}").as_str());
    if let Some(prefix) = path.strip_suffix("weight") {
        burn_name(prefix, "gamma")
    } else if let Some(prefix) = path.strip_suffix("bias") {
        burn_name(prefix, "beta")
    } else {
        false
    }
}

/// The [`DIFFUSERS_KEY_REMAP`] patterns, compiled.
fn field_path_remapper() -> KeyRemapper {
    KeyRemapper::from_patterns(DIFFUSERS_KEY_REMAP.to_vec())
        .expect("DIFFUSERS_KEY_REMAP holds valid regexes (checked by a unit test)")
}
