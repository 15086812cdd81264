//! Which Burn devices can start on this machine.
//!
//! Burn starts a device on first use, and a missing driver then panics deep
//! inside it (or, with some Vulkan loaders, crashes the process). These probes
//! ask first, so that a program gets a typed error naming what is missing and
//! a test suite can say that its GPU tests did not run.

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

/// The graphics APIs Burn's WGPU kernels run on (its `AutoGraphicsApi`
/// picks one of these; OpenGL and WebGPU lack what they need).
#[cfg(feature = "wgpu")]
fn compute_backends() -> wgpu::Backends {
    wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12
}

/// The WGPU adapters (GPUs, or a software driver such as lavapipe) that Burn
/// could run on, as `name (type, API)`; an error when there is none.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapters() -> Result<Vec<String>, NoDevice> {
    let instance = wgpu::Instance::new(&wgpu::InstanceDescriptor {
        backends: compute_backends(),
        ..Default::default()
    });
    let adapters: Vec<String> = instance
        .enumerate_adapters(compute_backends())
        .iter()
        .map(|adapter| {
            let info = adapter.get_info();
            format!("{} ({:?}, {:?})", info.name, info.device_type, info.backend)
        })
        .collect();
    if adapters.is_empty() {
        return Err(NoDevice {
            backend: "wgpu",
            reason: "no Vulkan, Metal or DX12 adapter found (on Linux, install a Vulkan \
                     driver: your GPU's, or Mesa's `mesa-vulkan-drivers` for the CPU)"
                .to_string(),
        });
    }
    Ok(adapters)
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
