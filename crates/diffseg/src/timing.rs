//! Where the time goes: cumulative wall time per pipeline stage.

use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;

/// Wall time spent in each stage since the model was loaded, summed over
/// every image segmented ([`crate::Segmenter::stage_times`]).
///
/// Each stage ends with a device synchronisation, so on asynchronous GPU
/// backends a stage's time includes its queued kernels and no later ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageTimes {
    /// Reading the weights onto the device.
    pub load: Duration,
    /// The empty-prompt text embedding (once per model).
    pub text_encoder: Duration,
    /// Fitting decoded images to the model's input square.
    pub prepare: Duration,
    /// The VAE encoder.
    pub vae: Duration,
    /// The UNet pass with attention capture and aggregation (or, for DiffCut,
    /// up to the hooked layer).
    pub unet: Duration,
    /// Merging (or DiffCut's cut), label maps and mapping them back to the images.
    pub merge: Duration,
    /// Naming segments from a vocabulary: the entries' attention from the kept queries and
    /// every segment's scores (zero without a vocabulary; encoding the vocabulary, once,
    /// counts as `text_encoder`).
    pub naming: Duration,
    /// Images segmented.
    pub images: usize,
}

/// Times `stage` on `device`, waiting for its queued work before stopping the clock.
pub(crate) fn timed<B: Backend, T>(
    device: &B::Device,
    total: &mut Duration,
    stage: impl FnOnce() -> T,
) -> T {
    let start = Instant::now();
    let output = stage();
    // A failed sync surfaces again, with its context, at the next read of the results.
    let _ = B::sync(device);
    *total += start.elapsed();
    output
}
