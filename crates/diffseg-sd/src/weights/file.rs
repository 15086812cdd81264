//! A memory-mapped safetensors file whose tensors become lazy burn-store
//! snapshots under any name.
//!
//! The file is mapped once; its header is parsed once. A tensor's data is a
//! window on the mapping, not a copy: on the CPU backend the parameters read
//! the page cache directly (a GPU backend uploads from it), so loading 4 GB of
//! SD weights costs no allocation and no copy. One mapping serves all three
//! networks of a single-file checkpoint.
//!
//! The networks therefore read the file for as long as they live, not only
//! while loading: [`MappedFile`] remembers what the file looked like when it
//! was mapped so that a change on disk can be reported before a pass
//! ([`crate::StableDiffusion::check_weights_unchanged`]).

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use burn::module::ParamId;
use burn::tensor::{AllocationProperty, Bytes, DType, TensorData};
use burn_store::{TensorSnapshot, TensorSnapshotError};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::Error;

/// Length of the little-endian header-size prefix of a safetensors file.
const HEADER_SIZE_PREFIX: usize = 8;

/// One tensor's entry in the header.
#[derive(Debug, Clone)]
struct TensorEntry {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the data section.
    begin: usize,
    end: usize,
}

/// A mapped file as it was when mapped: its open handle, length and
/// modification time.
///
/// The handle is what is checked, so a file replaced by a rename (as
/// downloaders do) is no change: the mapping keeps the old file alive and
/// intact. Truncating or rewriting the mapped file itself is.
#[derive(Debug, Clone)]
pub(crate) struct MappedFile {
    path: PathBuf,
    file: Arc<File>,
    length: u64,
    modified: Option<SystemTime>,
}

impl MappedFile {
    fn new(path: &Path, file: File, stat: &Metadata) -> Self {
        Self {
            path: path.to_path_buf(),
            file: Arc::new(file),
            length: stat.len(),
            modified: stat.modified().ok(),
        }
    }

    /// [`Error::WeightsChanged`] if the file's length or modification time
    /// differs from when it was mapped.
    pub(crate) fn check_unchanged(&self) -> Result<(), Error> {
        let changed = |change: String| Error::WeightsChanged {
            path: self.path.clone(),
            change,
        };
        let stat = self.file.metadata().map_err(|error| Error::Io {
            path: self.path.clone(),
            error,
        })?;
        if stat.len() != self.length {
            return Err(changed(format!(
                "length {} -> {} bytes",
                self.length,
                stat.len()
            )));
        }
        if stat.modified().ok() != self.modified {
            return Err(changed("modified in place".into()));
        }
        Ok(())
    }
}

/// A safetensors file, mapped into memory and with its header parsed.
pub(crate) struct SafetensorsFile {
    path: PathBuf,
    mapped: MappedFile,
    mmap: Arc<Mmap>,
    /// Offset of the data section in the file.
    data_start: usize,
    tensors: BTreeMap<String, TensorEntry>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Maps `path` and validates its header against the file length, so a
    /// truncated download fails here rather than halfway through loading.
    pub(crate) fn open(path: &Path) -> Result<Self, Error> {
        let io_error = |source| Error::Io {
            path: path.to_path_buf(),
            error: source,
        };
        let file = File::open(path).map_err(io_error)?;
        let stat = file.metadata().map_err(io_error)?;
        let length = stat.len();
        if length < HEADER_SIZE_PREFIX as u64 {
            return Err(Error::CorruptSafetensors {
                path: path.to_path_buf(),
                reason: format!("only {length} bytes long"),
            });
        }
        // SAFETY: a mapping is sound only while nobody changes the file:
        // reading a page past a truncated end raises SIGBUS, and an in-place
        // write changes bytes Rust treats as immutable. The mapping is
        // read-only, and the networks read it for as long as they live (their
        // parameters are windows on it), so this is assumed from here until
        // the last network is dropped, as every memory-mapped loader
        // (safetensors, candle, burn-store) assumes it. What is checked: the
        // header against the length now, and the length and modification
        // time before each pass of a `StableDiffusion`
        // (`check_weights_unchanged`, a typed error). A change during
        // loading, or after that check and before the pass ends, is not
        // caught and can still end the process. Replacing the file by a
        // rename is safe: the mapping keeps the old file.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_error)?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::CorruptSafetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let entry = TensorEntry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    begin: info.data_offsets.0,
                    end: info.data_offsets.1,
                };
                (name, entry)
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            mapped: MappedFile::new(path, file, &stat),
            mmap: Arc::new(mmap),
            data_start: HEADER_SIZE_PREFIX + header_len,
            tensors,
        })
    }

    /// The file's path, for error messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The file as it was mapped, to check later that it is unchanged.
    pub(crate) fn mapped(&self) -> &MappedFile {
        &self.mapped
    }

    /// All tensor names, sorted.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Stored shape of `key`.
    pub(crate) fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|t| t.shape.as_slice())
    }

    /// A lazy snapshot of tensor `key` that burn-store will match against the
    /// module parameter at `module_path` (dot-separated).
    ///
    /// With `squeeze_to_matrix`, a `[out, in, 1, 1]` (or `[out, in, 1]`)
    /// 1×1-convolution weight is presented as the `[out, in]` linear weight
    /// it is equivalent to; the bytes are the same.
    pub(crate) fn snapshot(
        &self,
        key: &str,
        module_path: &str,
        squeeze_to_matrix: bool,
    ) -> Result<TensorSnapshot, Error> {
        let entry = self
            .tensors
            .get(key)
            .expect("snapshot() is only called with keys listed by keys()");
        let dtype = float_dtype(entry.dtype).ok_or_else(|| Error::UnsupportedDtype {
            path: self.path.clone(),
            key: key.to_string(),
            dtype: format!("{:?}", entry.dtype),
        })?;
        let mut shape = entry.shape.clone();
        if squeeze_to_matrix && shape.len() > 2 && shape[2..].iter().all(|&d| d == 1) {
            shape.truncate(2);
        }
        let mmap = Arc::clone(&self.mmap);
        let range = self.data_start + entry.begin..self.data_start + entry.end;
        let data_shape = shape.clone();
        let data_fn = Rc::new(move || -> Result<TensorData, TensorSnapshotError> {
            let window = bytes::Bytes::from_owner(MappedRange {
                mmap: Arc::clone(&mmap),
                range: range.clone(),
            });
            Ok(TensorData::from_bytes(
                Bytes::from_shared(window, AllocationProperty::File),
                data_shape.clone(),
                dtype,
            ))
        });
        let path_stack = module_path.split('.').map(str::to_string).collect();
        Ok(TensorSnapshot::from_closure(
            data_fn,
            dtype,
            shape,
            path_stack,
            Vec::new(),
            ParamId::new(),
        ))
    }
}

/// A byte range of a mapped file, kept alive with the mapping.
struct MappedRange {
    mmap: Arc<Mmap>,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for MappedRange {
    fn as_ref(&self) -> &[u8] {
        // `read_metadata` checked every range against the file length.
        &self.mmap[self.range.clone()]
    }
}

/// The Burn type of a stored floating-point dtype; `None` for everything the
/// networks cannot hold as weights.
fn float_dtype(dtype: Dtype) -> Option<DType> {
    match dtype {
        Dtype::F64 => Some(DType::F64),
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}
