//! `diffseg info`: the compiled-in backends, the devices found and where the
//! weights would come from.

use burn::tensor::backend::Backend;
use diffseg::weights::{cache_dir, locate_weights, DEFAULT_MODEL, PAPER_MODEL, WEIGHTS_ENV};
use diffseg::{BackendKind, BackendTask};

use crate::exit::Exit;

/// Print the compiled-in backends, the devices found and where weights were found.
///
/// Each backend compiled in is started with a small computation, so a missing
/// driver or device shows here rather than in a long run; WGPU adapters and
/// CUDA devices are listed with their numbers N, which `diffseg segment --backend
/// wgpu:N` (or `cuda:N`) takes. Then where the weights would come from:
/// `DIFFSEG_WEIGHTS`, the Hugging Face cache.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  diffseg info
  diffseg info --no-probe        # without starting any device")]
pub struct Args {
    /// Do not start the backends' devices (WGPU and CUDA initialise their driver).
    #[arg(long)]
    pub no_probe: bool,
}

/// Starts the backend by making a small tensor on its device.
struct Probe;

impl BackendTask for Probe {
    type Output = String;

    fn run<B: Backend>(self, device: B::Device) -> String {
        // One tiny computation proves the device works.
        burn::tensor::Tensor::<B, 1>::ones([4], &device)
            .sum()
            .into_data();
        format!("{} on {device:?}", B::name(&device))
    }
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    println!("diffseg {}", env!("CARGO_PKG_VERSION"));
    println!("backends compiled in:");
    for kind in BackendKind::compiled_in() {
        if args.no_probe {
            println!("  {kind}");
            continue;
        }
        // The backends probe their driver and device first: a missing one is an error here.
        match kind.run(Probe) {
            Ok(device) => println!("  {kind}: {device}"),
            Err(error) => println!("  {kind}: {error}"),
        }
        #[cfg(feature = "wgpu")]
        if kind == BackendKind::Wgpu {
            for (index, adapter) in diffseg::backend::wgpu_adapters()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                println!("    wgpu:{index}: {adapter}");
            }
        }
        #[cfg(feature = "cuda")]
        if kind == BackendKind::Cuda(0) {
            for (index, name) in diffseg::backend::cuda_devices()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                println!("    cuda:{index}: {name}");
            }
        }
    }
    println!("weights:");
    match std::env::var_os(WEIGHTS_ENV) {
        Some(value) => println!("  {WEIGHTS_ENV} = {}", value.to_string_lossy()),
        None => println!("  {WEIGHTS_ENV} not set"),
    }
    println!("  Hugging Face cache: {}", cache_dir().display());
    for model in [DEFAULT_MODEL, PAPER_MODEL] {
        match locate_weights(None, model) {
            Ok(Some(found)) => println!("  {model}: {} ({})", found.path.display(), found.origin),
            Ok(None) => {
                println!("  {model}: not found (`diffseg fetch --model {model}` downloads it)")
            }
            Err(error) => println!("  {model}: {error}"),
        }
    }
    Ok(Exit::Done)
}
