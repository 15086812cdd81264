//! Which Burn devices can start on this machine.
//!
//! Burn starts a device on first use, and a missing driver then panics deep
//! inside it (or, with some Vulkan loaders, crashes the process). These probes
//! ask first, so that a program gets a typed error naming what is missing and
//! a test suite can say that its GPU tests did not run. With the `wgpu`
//! feature they list the WGPU adapters; with `cuda`, the CUDA GPUs.

// Every dependency a target lists must be used (checked at each build; test builds,
// which also see the dev-dependencies, are exempt).
#![cfg_attr(not(test), deny(unused_crate_dependencies))]
#![warn(missing_docs)]

use burn::tensor::backend::Backend;

/// The environment variable that turns a skipped WGPU test into a failure
/// ([`ready_for_tests`]): CI sets it, so its WGPU tests cannot silently vanish.
pub const REQUIRE_WGPU_ENV: &str = "DIFFSEG_REQUIRE_WGPU";

/// A backend whose device cannot start here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {backend} device: {reason}")]
pub struct NoDevice {
    /// The backend asked for (`wgpu`, `cuda`).
    pub backend: &'static str,
    /// What is missing, and what to install.
    pub reason: String,
}

/// The adapters Burn's WGPU runtime chooses among, in its order: those of
/// the graphics API its `AutoGraphicsApi` picks (Vulkan, or Metal on macOS).
#[cfg(feature = "wgpu")]
fn adapters() -> Vec<wgpu::Adapter> {
    use burn::backend::wgpu::graphics::{AutoGraphicsApi, GraphicsApi};
    let backends = AutoGraphicsApi::backend().into();
    let instance = wgpu::Instance::new(&wgpu::InstanceDescriptor {
        backends,
        ..Default::default()
    });
    instance.enumerate_adapters(backends)
}

#[cfg(feature = "wgpu")]
fn describe(adapter: &wgpu::Adapter) -> String {
    let info = adapter.get_info();
    format!("{} ({:?}, {:?})", info.name, info.device_type, info.backend)
}

/// The WGPU adapters (GPUs, or a software driver such as lavapipe) that Burn
/// could run on, as `name (type, API)`, in the order [`wgpu_device`] numbers
/// them; an error when there is none.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapters() -> Result<Vec<String>, NoDevice> {
    let adapters: Vec<String> = adapters().iter().map(describe).collect();
    if adapters.is_empty() {
        return Err(NoDevice {
            backend: "wgpu",
            reason: "no Vulkan (or, on macOS, Metal) adapter found (on Linux, install a \
                     Vulkan driver: your GPU's, or Mesa's `mesa-vulkan-drivers` for the CPU)"
                .to_string(),
        });
    }
    Ok(adapters)
}

/// Burn's device for adapter `index` of [`wgpu_adapters`]. Burn numbers
/// adapters within their kind (discrete, integrated, virtual GPU, CPU), so
/// the index is translated into that.
#[cfg(feature = "wgpu")]
pub fn wgpu_device(index: usize) -> Result<burn::backend::wgpu::WgpuDevice, NoDevice> {
    use burn::backend::wgpu::WgpuDevice;
    use wgpu::DeviceType;
    let adapters = adapters();
    let listed = || adapters.iter().map(describe).collect::<Vec<_>>().join("; ");
    let Some(chosen) = adapters.get(index) else {
        return Err(NoDevice {
            backend: "wgpu",
            reason: format!(
                "no adapter {index}: {} found ({})",
                adapters.len(),
                listed()
            ),
        });
    };
    let kind = chosen.get_info().device_type;
    let within_kind = adapters[..index]
        .iter()
        .filter(|adapter| adapter.get_info().device_type == kind)
        .count();
    match kind {
        DeviceType::DiscreteGpu => Ok(WgpuDevice::DiscreteGpu(within_kind)),
        DeviceType::IntegratedGpu => Ok(WgpuDevice::IntegratedGpu(within_kind)),
        DeviceType::VirtualGpu => Ok(WgpuDevice::VirtualGpu(within_kind)),
        DeviceType::Cpu if within_kind == 0 => Ok(WgpuDevice::Cpu),
        _ => Err(NoDevice {
            backend: "wgpu",
            reason: format!(
                "adapter {index}, {}, is not one Burn can select by kind ({})",
                describe(chosen),
                listed()
            ),
        }),
    }
}

/// The CUDA driver library cudarc loads, as the error names it.
#[cfg(feature = "cuda")]
const CUDA_DRIVER_LIBRARY: &str = if cfg!(windows) {
    "nvcuda.dll"
} else {
    "libcuda.so.1"
};

/// The CUDA GPUs Burn could run on, by name, in the order `cuda:N` numbers
/// them; an error naming what is missing when the CUDA driver, a device, or
/// NVRTC (with which Burn compiles its CUDA kernels) is not there.
///
/// Only the driver API is called, through the library loaded at run time, so
/// a machine without the NVIDIA driver gets the error instead of the panic
/// Burn's CUDA runtime raises.
#[cfg(feature = "cuda")]
pub fn cuda_devices() -> Result<Vec<String>, NoDevice> {
    use cudarc::driver::result;
    let missing = |reason: String| NoDevice {
        backend: "cuda",
        reason,
    };
    // SAFETY: loading the driver library runs its initialisers, as Burn's own
    // first CUDA call would; the handle is dropped again at once.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(missing(format!(
            "no CUDA driver ({CUDA_DRIVER_LIBRARY} not found: install the NVIDIA driver, \
             or add its folder to LD_LIBRARY_PATH)"
        )));
    }
    // cuInit fails with CUDA_ERROR_NO_DEVICE where the driver sees no GPU.
    let count = result::init()
        .and_then(|()| result::device::get_count())
        .map_err(|error| missing(format!("the CUDA driver found no usable GPU ({error})")))?;
    let devices = (0..count)
        .map(|ordinal| {
            result::device::get(ordinal)
                .and_then(result::device::get_name)
                .map_err(|error| missing(format!("CUDA device {ordinal} did not answer ({error})")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if devices.is_empty() {
        return Err(missing("the CUDA driver found no GPU".to_string()));
    }
    // SAFETY: as for the driver library above.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(missing(
            "NVRTC (libnvrtc.so), with which Burn compiles its CUDA kernels, not found: \
             install the CUDA toolkit's runtime compiler, or add its folder to LD_LIBRARY_PATH"
                .to_string(),
        ));
    }
    Ok(devices)
}

/// Burn's device for GPU `index` of [`cuda_devices`], or an error naming
/// what is missing (the driver, or that device).
#[cfg(feature = "cuda")]
pub fn cuda_device(index: usize) -> Result<burn::backend::cuda::CudaDevice, NoDevice> {
    let devices = cuda_devices()?;
    if index >= devices.len() {
        return Err(NoDevice {
            backend: "cuda",
            reason: format!(
                "cuda:{index} requested, {} found ({})",
                match devices.len() {
                    1 => "1 device".to_string(),
                    count => format!("{count} devices"),
                },
                devices
                    .iter()
                    .enumerate()
                    .map(|(index, name)| format!("cuda:{index}: {name}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        });
    }
    Ok(burn::backend::cuda::CudaDevice::new(index))
}

/// Whether a test on backend `B` should run: always on backends that need no
/// driver; on WGPU only where an adapter exists. A WGPU test that cannot run
/// says so on stderr and passes, unless [`REQUIRE_WGPU_ENV`] is set, where it
/// fails with what is missing.
pub fn ready_for_tests<B: Backend>() -> bool {
    #[cfg(feature = "wgpu")]
    if std::any::TypeId::of::<B>() == std::any::TypeId::of::<burn::backend::Wgpu>() {
        return match wgpu_adapters() {
            Ok(_) => true,
            Err(missing) if std::env::var_os(REQUIRE_WGPU_ENV).is_some() => {
                panic!("{missing} ({REQUIRE_WGPU_ENV} is set)")
            }
            Err(missing) => {
                // Straight to stderr: the test harness captures `eprintln!` of passing tests.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "WGPU TEST NOT RUN: {missing}; set {REQUIRE_WGPU_ENV}=1 to fail instead"
                );
                false
            }
        };
    }
    true
}
