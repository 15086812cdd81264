//! The crate's one error type.
//!
//! Every variant about a file names the file (or folder), so a user with a
//! dozen checkpoints on disk can tell which one is wrong and what to do.

use std::fmt;
use std::path::PathBuf;

use burn::tensor::DType;

use crate::weights::Component;

/// How many entries of each list a [`MismatchReport`] prints before
/// summarising the rest as a count.
const SHOWN_PER_LIST: usize = 5;

/// Why weights or a config could not be loaded, or why a computation's
/// result was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file or folder could not be opened or read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying I/O error.
        error: std::io::Error,
    },

    /// The path is neither a diffusers folder nor a `.safetensors` checkpoint.
    #[error("{}: not a Stable Diffusion weights source: {reason}", path.display())]
    UnrecognisedSource {
        /// The path given.
        path: PathBuf,
        /// What the path is instead, e.g. a folder without the expected sub-folders.
        reason: String,
    },

    /// A pickled PyTorch checkpoint (`.ckpt`, `.pt`, `.pth`, `.bin`).
    ///
    /// Unpickling can run arbitrary code and no maintained Rust crate reads
    /// these files safely in this workspace, so they are refused.
    #[error(
        "{}: pickled PyTorch checkpoints are not loaded (unpickling can run arbitrary code); \
         convert it to .safetensors first, e.g. in Python: \
         `safetensors.torch.save_file(torch.load(path, weights_only=True)[\"state_dict\"], \"model.safetensors\")`",
        path.display()
    )]
    PickleNotSupported {
        /// The pickled checkpoint.
        path: PathBuf,
    },

    /// The file is not a valid safetensors file: truncated, corrupt, or not
    /// safetensors at all.
    #[error(
        "{}: not a valid safetensors file ({reason}); it may be truncated or corrupt, download it again",
        path.display()
    )]
    CorruptSafetensors {
        /// The file that failed to parse.
        path: PathBuf,
        /// What is wrong: the safetensors parser's message, or the file's length.
        reason: String,
    },

    /// A diffusers component folder has no `config.json`.
    #[error(
        "{}: missing; every diffusers component folder (unet/, vae/, text_encoder/) needs its config.json",
        path.display()
    )]
    MissingConfig {
        /// The `config.json` that does not exist.
        path: PathBuf,
    },

    /// A config file is not valid JSON or lacks a field the network needs.
    #[error("{}: invalid config: {error}", path.display())]
    BadConfig {
        /// The `config.json` file.
        path: PathBuf,
        /// The JSON error, with line and column.
        error: serde_json::Error,
    },

    /// A config value the networks cannot be built with: zero, out of the
    /// documented bounds, or inconsistent with another value (checked before
    /// anything is allocated; the bounds are [`crate::limits`]).
    #[error(
        "{}: invalid config: `{field}` = {value}: {reason}",
        path.as_ref().map_or("configuration".into(), |path| path.display().to_string())
    )]
    InvalidConfig {
        /// The `config.json` file; `None` for a configuration built in code.
        path: Option<PathBuf>,
        /// The field as the file names it, e.g. `norm_num_groups` or `block_out_channels[2]`.
        field: String,
        /// Its value.
        value: String,
        /// What is wrong with it, e.g. `must divide block_out_channels[0] = 320`.
        reason: String,
    },

    /// A weights file the loaded networks read through a memory map changed
    /// on disk after loading (truncated, grown or rewritten in place).
    #[error(
        "{}: the weights file changed on disk after the model was loaded ({change}); \
         the model reads its tensors from that file, so load it again",
        path.display()
    )]
    WeightsChanged {
        /// The weights file.
        path: PathBuf,
        /// What changed, e.g. `length 934104 -> 100 bytes`.
        change: String,
    },

    /// A config file asks for an architecture the networks do not implement.
    #[error("{}: unsupported model config: {reason}", path.display())]
    UnsupportedConfig {
        /// The `config.json` file.
        path: PathBuf,
        /// The option that was refused and its value, e.g. `hidden_act = gelu_new`.
        reason: String,
    },

    /// A diffusers component folder holds no usable weights file.
    #[error(
        "{}: no {component} weights file; looked for {}",
        folder.display(),
        tried.join(", ")
    )]
    MissingWeights {
        /// The component folder (e.g. `unet/`).
        folder: PathBuf,
        /// The network whose weights are missing.
        component: Component,
        /// The file names looked for, most preferred first.
        tried: Vec<String>,
    },

    /// An original (LDM/CompVis) single-file checkpoint was found where a
    /// diffusers folder or component file was expected.
    #[error(
        "{}: expected diffusers {component} weights, found a single-file LDM checkpoint \
         (keys start with `{ldm_prefix}`); load it with WeightsSource::SingleFile",
        path.display()
    )]
    SingleFileGivenAsDiffusers {
        /// The file.
        path: PathBuf,
        /// The network whose diffusers weights were expected.
        component: Component,
        /// The LDM key prefix found in the file, e.g. `model.diffusion_model.`.
        ldm_prefix: &'static str,
    },

    /// A diffusers folder or component file was given where a single-file
    /// LDM checkpoint was expected.
    #[error(
        "{}: expected a single-file LDM checkpoint, found {found}; load diffusers weights with \
         WeightsSource::Diffusers on the folder that holds unet/, vae/ and text_encoder/",
        path.display()
    )]
    DiffusersGivenAsSingleFile {
        /// The path given.
        path: PathBuf,
        /// What was found instead: a folder, diffusers component keys, or no tensors.
        found: String,
    },

    /// The file's tensors do not fit the network built from the config.
    #[error("{}: {component} weights do not match the network{report}", path.display())]
    Mismatch {
        /// The weights file.
        path: PathBuf,
        /// The network being loaded.
        component: Component,
        /// Boxed: it is large and `Error` travels in every `Result`.
        report: Box<MismatchReport>,
    },

    /// A tensor is stored in a type the loader cannot convert to floats.
    #[error("{}: tensor `{key}` is stored as {dtype}, expected F32, F16 or BF16", path.display())]
    UnsupportedDtype {
        /// The weights file.
        path: PathBuf,
        /// The tensor's key in the file.
        key: String,
        /// The stored type, e.g. `I64`.
        dtype: String,
    },

    /// Weights hold NaN or infinite values after conversion to the compute
    /// type (corrupt file, or f32 weights too large for f16).
    #[error(
        "{}: {component} weights hold NaN or infinite values after conversion to {dtype:?}: {}",
        path.display(),
        shorten(&counted(tensors), SHOWN_PER_LIST)
    )]
    NonFinite {
        /// The weights file.
        path: PathBuf,
        /// The network being loaded.
        component: Component,
        /// The compute type the weights were converted to.
        dtype: DType,
        /// Each offending tensor's key in the file and its count of
        /// non-finite values.
        tensors: Vec<(String, usize)>,
    },

    /// A single-file checkpoint carries no config and its shapes match no
    /// preset: the caller has to pass the configuration.
    #[error(
        "{}: {component} shapes match no known Stable Diffusion preset (`{key}` is {}, SD 1.x has {expected:?}); \
         pass the configuration explicitly",
        path.display(),
        found.as_ref().map_or("absent".to_string(), |shape| format!("{shape:?}"))
    )]
    UnknownArchitecture {
        /// The single-file checkpoint.
        path: PathBuf,
        /// The network whose shapes were checked.
        component: Component,
        /// The probed tensor's key.
        key: String,
        /// Its shape in SD 1.x.
        expected: Vec<usize>,
        /// Its shape in the file; `None` when the file lacks it.
        found: Option<Vec<usize>>,
    },
    /// A tokenizer folder lacks files the CLIP tokenizer is read from (needed to
    /// tokenize vocabulary entries; plain segmentation does without).
    #[error(
        "{}: no CLIP tokenizer: missing {}; a diffusers model keeps it in tokenizer/ \
         (vocab.json and merges.txt); for a single-file checkpoint pass a tokenizer folder",
        folder.display(),
        missing.join(", ")
    )]
    MissingTokenizer {
        /// The folder looked in.
        folder: PathBuf,
        /// The files it lacks, e.g. `merges.txt`.
        missing: Vec<String>,
    },

    /// A tokenizer file cannot be used: unreadable, malformed, too large, or
    /// lacking CLIP's special tokens.
    #[error("{}: invalid CLIP tokenizer: {reason}", path.display())]
    BadTokenizer {
        /// The tokenizer file, or its folder when the library does not say which file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A tensor that should be finite holds NaN or infinite values
    /// ([`crate::ensure_finite`]).
    #[error(
        "{what} holds {nan} NaN and {infinite} infinite values out of {total}; \
         the computation overflowed (reduced-precision compute?) or the weights are corrupt"
    )]
    NonFiniteValues {
        /// What was checked, e.g. `"UNet noise prediction"`.
        what: String,
        /// How many elements are NaN.
        nan: usize,
        /// How many elements are +∞ or −∞.
        infinite: usize,
        /// Number of elements in the tensor.
        total: usize,
    },
    /// A vocabulary prompt chunk that the text encoder cannot take or that names
    /// token columns it does not have.
    #[error("vocabulary prompt chunk {chunk}: {reason}")]
    PromptChunk {
        /// Index of the chunk.
        chunk: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Captured cross-attention queries that do not fit the vocabulary's keys
    /// (captured from another model, or not captured at all).
    #[error("naming segments: {0}")]
    Naming(String),
}

impl Error {
    /// The same error, naming `path` as the config file an
    /// [`Error::InvalidConfig`] was read from.
    pub(crate) fn in_config_file(self, config_file: &std::path::Path) -> Self {
        match self {
            Error::InvalidConfig {
                path: None,
                field,
                value,
                reason,
            } => Error::InvalidConfig {
                path: Some(config_file.to_path_buf()),
                field,
                value,
                reason,
            },
            other => other,
        }
    }
}

/// What went wrong when a file's tensors were applied to a network.
///
/// Missing keys are the network's parameter paths that the file did not
/// provide; unexpected keys are the file's own key names that the network has
/// no place for; shape mismatches name both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MismatchReport {
    /// Network parameters (Burn module paths) the file does not provide.
    pub missing: Vec<String>,
    /// File keys the network has no parameter for.
    pub unexpected: Vec<String>,
    /// Tensors present on both sides with different shapes.
    pub shape_mismatches: Vec<ShapeMismatch>,
    /// Tensors whose data could not be read (file key and reason).
    pub unreadable: Vec<String>,
    /// How many tensors were loaded fine.
    pub applied: usize,
}

/// One tensor whose stored shape differs from the network's parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShapeMismatch {
    /// Key in the file.
    pub key: String,
    /// Shape the network expects (after any layout conversion).
    pub expected: Vec<usize>,
    /// Shape found in the file (after any layout conversion).
    pub found: Vec<usize>,
}

impl MismatchReport {
    /// True when nothing went wrong.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.shape_mismatches.is_empty()
            && self.unreadable.is_empty()
    }
}

impl fmt::Display for MismatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.applied == 0 {
            write!(f, "; no tensor matched at all: is this the right file?")?;
        }
        if !self.missing.is_empty() {
            write!(
                f,
                "\n  {} missing: {}",
                self.missing.len(),
                shorten(&self.missing, SHOWN_PER_LIST)
            )?;
        }
        if !self.unexpected.is_empty() {
            write!(
                f,
                "\n  {} unexpected: {}",
                self.unexpected.len(),
                shorten(&self.unexpected, SHOWN_PER_LIST)
            )?;
        }
        if !self.shape_mismatches.is_empty() {
            let shown: Vec<String> = self
                .shape_mismatches
                .iter()
                .map(|m| format!("{} (network {:?}, file {:?})", m.key, m.expected, m.found))
                .collect();
            write!(
                f,
                "\n  {} with the wrong shape: {}",
                shown.len(),
                shorten(&shown, SHOWN_PER_LIST)
            )?;
        }
        if !self.unreadable.is_empty() {
            write!(
                f,
                "\n  {} unreadable: {}",
                self.unreadable.len(),
                shorten(&self.unreadable, SHOWN_PER_LIST)
            )?;
        }
        Ok(())
    }
}

/// `key (n values)` per tensor.
fn counted(tensors: &[(String, usize)]) -> Vec<String> {
    tensors
        .iter()
        .map(|(key, count)| format!("{key} ({count} values)"))
        .collect()
}

/// `a, b, c and 12 more`.
fn shorten(items: &[String], shown: usize) -> String {
    let head = items
        .iter()
        .take(shown)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    match items.len().saturating_sub(shown) {
        0 => head,
        rest => format!("{head} and {rest} more"),
    }
}
