//! Run-time choice among the Burn backends compiled in with Cargo features.
//!
//! Burn backends are types, but users pick one at run time (`--backend wgpu`).
//! [`BackendKind::run`] bridges the two: it calls a [`BackendTask`]'s generic
//! `run::<B>` with the concrete backend type and device.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::Backend;

/// The CPU backend (burn-ndarray, multi-threaded, SIMD).
#[cfg(feature = "ndarray")]
pub type Cpu = burn::backend::NdArray<f32>;
/// The WGPU backend (Vulkan, Metal, DX12; lavapipe on machines without a GPU).
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu<f32, i32>;
/// The CUDA backend.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;

/// The WGPU adapters Burn can run on, numbered as [`BackendKind::WgpuAdapter`]
/// takes them.
#[cfg(feature = "wgpu")]
pub use diffseg_device::wgpu_adapters;

/// The CUDA GPUs Burn can run on, numbered as [`BackendKind::Cuda`] takes them.
#[cfg(feature = "cuda")]
pub use diffseg_device::cuda_devices;

/// The WGPU backend computing in half precision.
#[cfg(feature = "wgpu")]
pub type WgpuF16 = burn::backend::Wgpu<half::f16, i32>;
/// The CUDA backend computing in half precision.
#[cfg(feature = "cuda")]
pub type CudaF16 = burn::backend::Cuda<half::f16, i32>;

/// The floating-point type the networks compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Precision {
    /// 32-bit floats everywhere (the default, and the only choice on the CPU).
    #[default]
    F32,
    /// 16-bit floats (GPU backends): half the memory, faster on tensor cores.
    F16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        })
    }
}

impl FromStr for Precision {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            _ => Err(crate::Error::unknown_name(
                "precision",
                s,
                "expected f32 or f16",
            )),
        }
    }
}

/// A backend named at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BackendKind {
    /// burn-ndarray on the CPU (Cargo feature `ndarray`, on by default).
    #[default]
    Cpu,
    /// WGPU on the default adapter (Cargo feature `wgpu`).
    Wgpu,
    /// WGPU on the adapter with this index in `diffseg_device::wgpu_adapters`
    /// (`diffseg info` lists them; Cargo feature `wgpu`).
    WgpuAdapter(usize),
    /// CUDA on the GPU with this index (Cargo feature `cuda`).
    Cuda(usize),
}

/// Generic work that [`BackendKind::run`] instantiates for the chosen backend.
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs the task on backend `B` and its `device`.
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// A backend that this build of the crate does not contain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("the {kind} backend is not compiled in: rebuild with the Cargo feature `{feature}` (compiled in: {available})")]
pub struct BackendUnavailable {
    /// The backend asked for.
    pub kind: BackendKind,
    /// The Cargo feature that enables it.
    pub feature: &'static str,
    /// The backends this build has, comma-separated.
    pub available: String,
}

impl BackendKind {
    /// The backends compiled into this build.
    pub fn compiled_in() -> Vec<BackendKind> {
        let mut kinds = Vec::new();
        if cfg!(feature = "ndarray") {
            kinds.push(BackendKind::Cpu);
        }
        if cfg!(feature = "wgpu") {
            kinds.push(BackendKind::Wgpu);
        }
        if cfg!(feature = "cuda") {
            kinds.push(BackendKind::Cuda(0));
        }
        kinds
    }

    /// The Cargo feature that compiles this backend in.
    pub fn feature(&self) -> &'static str {
        match self {
            BackendKind::Cpu => "ndarray",
            BackendKind::Wgpu | BackendKind::WgpuAdapter(_) => "wgpu",
            BackendKind::Cuda(_) => "cuda",
        }
    }

    /// Runs `task` on this backend, or says why it cannot: the backend is not
    /// compiled in ([`crate::Error::Backend`]), or its device cannot start
    /// here ([`crate::Error::NoDevice`]: asked before Burn would panic, or
    /// crash, on a missing driver).
    pub fn run<T: BackendTask>(&self, task: T) -> Result<T::Output, crate::Error> {
        match *self {
            #[cfg(feature = "ndarray")]
            BackendKind::Cpu => Ok(task.run::<Cpu>(burn::backend::ndarray::NdArrayDevice::Cpu)),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => {
                diffseg_device::wgpu_adapters()?;
                Ok(task.run::<Wgpu>(burn::backend::wgpu::WgpuDevice::DefaultDevice))
            }
            #[cfg(feature = "wgpu")]
            BackendKind::WgpuAdapter(index) => {
                Ok(task.run::<Wgpu>(diffseg_device::wgpu_device(index)?))
            }
            #[cfg(feature = "cuda")]
            BackendKind::Cuda(index) => Ok(task.run::<Cuda>(diffseg_device::cuda_device(index)?)),
            #[allow(unreachable_patterns)]
            kind => Err(kind.unavailable().into()),
        }
    }
}

impl BackendKind {
    /// Runs `task` on this backend computing in `precision`, or says why it cannot.
    pub fn run_in<T: BackendTask>(
        &self,
        precision: Precision,
        task: T,
    ) -> Result<T::Output, crate::Error> {
        match (precision, *self) {
            (Precision::F32, _) => Ok(self.run(task)?),
            #[cfg(feature = "wgpu")]
            (Precision::F16, BackendKind::Wgpu) => {
                diffseg_device::wgpu_adapters()?;
                Ok(task.run::<WgpuF16>(burn::backend::wgpu::WgpuDevice::DefaultDevice))
            }
            #[cfg(feature = "wgpu")]
            (Precision::F16, BackendKind::WgpuAdapter(index)) => {
                Ok(task.run::<WgpuF16>(diffseg_device::wgpu_device(index)?))
            }
            #[cfg(feature = "cuda")]
            (Precision::F16, BackendKind::Cuda(index)) => {
                Ok(task.run::<CudaF16>(diffseg_device::cuda_device(index)?))
            }
            (Precision::F16, backend) => {
                // Not compiled in at all: say so first, it is the actionable part.
                if !BackendKind::compiled_in()
                    .iter()
                    .any(|kind| kind.feature() == backend.feature())
                {
                    self.run(NoTask)?;
                }
                Err(crate::Error::PrecisionUnavailable { precision, backend })
            }
        }
    }
}

/// A task that does nothing: used to ask [`BackendKind::run`] whether a backend exists.
struct NoTask;

impl BackendTask for NoTask {
    type Output = ();
    fn run<B: Backend>(self, _device: B::Device) {}
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendKind::Cpu => write!(f, "cpu"),
            BackendKind::Wgpu => write!(f, "wgpu"),
            BackendKind::WgpuAdapter(index) => write!(f, "wgpu:{index}"),
            BackendKind::Cuda(0) => write!(f, "cuda"),
            BackendKind::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl BackendKind {
    /// The first WGPU adapter whose description (as `diffseg info` and
    /// [`wgpu_adapters`](crate::backend) list them, e.g. `llvmpipe (LLVM …)
    /// (Cpu, Vulkan)`) contains `name`, ignoring case.
    pub(crate) fn wgpu_adapter_named(name: &str) -> Result<BackendKind, crate::Error> {
        #[cfg(feature = "wgpu")]
        {
            let adapters = diffseg_device::wgpu_adapters()?;
            let wanted = name.to_lowercase();
            adapters
                .iter()
                .position(|adapter| adapter.to_lowercase().contains(&wanted))
                .map(BackendKind::WgpuAdapter)
                .ok_or_else(|| {
                    diffseg_device::NoDevice {
                        backend: "wgpu",
                        reason: format!(
                            "no adapter named like `{name}`; the adapters here: {}",
                            adapters.join("; ")
                        ),
                    }
                    .into()
                })
        }
        #[cfg(not(feature = "wgpu"))]
        {
            let _ = name;
            Err(BackendKind::Wgpu.unavailable().into())
        }
    }

    /// Why this backend is not compiled in.
    fn unavailable(self) -> BackendUnavailable {
        BackendUnavailable {
            kind: self,
            feature: self.feature(),
            available: BackendKind::compiled_in()
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

impl FromStr for BackendKind {
    type Err = crate::Error;

    /// Parses a backend name: `cpu`, `wgpu`, `wgpu:N`, `wgpu:NAME` (the first
    /// adapter whose description contains NAME, looked up now), `cuda` or
    /// `cuda:N`; anything else is [`crate::Error::UnknownName`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = |reason: String| crate::Error::unknown_name("backend", s, reason);
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "ndarray" => Ok(BackendKind::Cpu),
            "wgpu" => Ok(BackendKind::Wgpu),
            "cuda" => Ok(BackendKind::Cuda(0)),
            other => {
                let indexed = |prefix: &str| other.strip_prefix(prefix)?.parse().ok();
                if let Some(kind) = indexed("cuda:")
                    .map(BackendKind::Cuda)
                    .or_else(|| indexed("wgpu:").map(BackendKind::WgpuAdapter))
                {
                    return Ok(kind);
                }
                match s.get(5..).filter(|_| other.starts_with("wgpu:")) {
                    Some(name) if !name.is_empty() => BackendKind::wgpu_adapter_named(name)
                        .map_err(|error| unknown(error.to_string())),
                    _ => Err(unknown(
                        "expected cpu, wgpu, wgpu:N, wgpu:NAME, cuda or cuda:N".into(),
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_names() {
        assert_eq!("cpu".parse::<BackendKind>().unwrap(), BackendKind::Cpu);
        assert_eq!("WGPU".parse::<BackendKind>().unwrap(), BackendKind::Wgpu);
        assert_eq!("cuda".parse::<BackendKind>().unwrap(), BackendKind::Cuda(0));
        assert_eq!(
            "cuda:3".parse::<BackendKind>().unwrap(),
            BackendKind::Cuda(3)
        );
        assert_eq!(
            "wgpu:1".parse::<BackendKind>().unwrap(),
            BackendKind::WgpuAdapter(1)
        );
        assert_eq!(BackendKind::WgpuAdapter(1).to_string(), "wgpu:1");
        assert!("tpu".parse::<BackendKind>().is_err());
        assert!("cuda:x".parse::<BackendKind>().is_err());
        let error = "wgpu:".parse::<BackendKind>().unwrap_err().to_string();
        assert!(error.contains("wgpu:NAME"), "{error}");
    }

    struct DeviceName;
    impl BackendTask for DeviceName {
        type Output = String;
        fn run<B: Backend>(self, device: B::Device) -> String {
            format!("{}:{device:?}", B::name(&device))
        }
    }

    /// Where no CUDA driver or GPU is found (as on CI), `cuda:0` is the probe's typed
    /// error, in either precision, where Burn would panic; where GPUs are found, an index
    /// past them is refused with the count.
    #[cfg(feature = "cuda")]
    #[test]
    fn a_missing_cuda_device_is_a_typed_error() {
        let (kind, expected) = match cuda_devices() {
            Err(missing) => (BackendKind::Cuda(0), missing.to_string()),
            Ok(devices) => (
                BackendKind::Cuda(devices.len()),
                format!("cuda:{} requested, {}", devices.len(), devices.len()),
            ),
        };
        for precision in [Precision::F32, Precision::F16] {
            let error = kind.run_in(precision, DeviceName).unwrap_err();
            assert!(matches!(error, crate::Error::NoDevice(_)), "{error}");
            assert!(error.to_string().contains(&expected), "{error}");
        }
    }

    #[test]
    fn runs_on_the_cpu_backend() {
        let name = BackendKind::Cpu.run(DeviceName).unwrap();
        assert!(name.to_lowercase().contains("ndarray"), "{name}");
    }
}
