//! Timestep embeddings of the UNet: the sinusoidal projection (`time_proj`,
//! no weights) and the two-layer MLP (`time_embedding`).

use crate::cpu;

use burn::{
    config::Config,
    module::Module,
    nn::Linear,
    tensor::{activation::silu, backend::Backend, Tensor, TensorData},
};

/// diffusers `get_timestep_embedding`: sinusoidal features of the timesteps.
///
/// Frequencies are `exp(-ln(10000) · i / (half − freq_shift))` for
/// `i = 0..half` with `half = channels / 2`; the features are `[sin, cos]`,
/// or `[cos, sin]` when `flip_sin_to_cos` (SD 1.x). Computed in f32 in the
/// same operation order as diffusers so the values match bit for bit up to
/// the platform's `exp`/`sin`/`cos` rounding.
///
/// # Shapes
/// - output: `[timesteps.len(), channels]`
pub(crate) fn timestep_embedding<B: Backend>(
    timesteps: &[f32],
    channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
    device: &B::Device,
) -> Tensor<B, 2> {
    let half = channels / 2;
    let frequencies: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = -(10000f32.ln()) * i as f32;
            (exponent / (half as f32 - freq_shift)).exp()
        })
        .collect();
    let mut values = Vec::with_capacity(timesteps.len() * channels);
    for &t in timesteps {
        let angles = frequencies.iter().map(|f| t * f);
        let sin = angles.clone().map(f32::sin);
        let cos = angles.map(f32::cos);
        if flip_sin_to_cos {
            values.extend(cos.chain(sin));
        } else {
            values.extend(sin.chain(cos));
        }
        // An odd channel count is zero-padded, as in diffusers.
        values.extend(std::iter::repeat_n(0.0, channels - 2 * half));
    }
    Tensor::from_data(TensorData::new(values, [timesteps.len(), channels]), device)
}

/// Configuration of [`TimestepEmbedding`].
#[derive(Config, Debug)]
pub(crate) struct TimestepEmbeddingConfig {
    /// Width of the sinusoidal features (`block_out_channels[0]`).
    pub in_channels: usize,
    /// Width of the embedding (`4 · block_out_channels[0]` for SD).
    pub time_embed_dim: usize,
}

impl TimestepEmbeddingConfig {
    /// Builds the module with random weights.
    pub(crate) fn init<B: Backend>(&self, device: &B::Device) -> TimestepEmbedding<B> {
        TimestepEmbedding {
            linear_1: crate::torch_linear(self.in_channels, self.time_embed_dim).init(device),
            linear_2: crate::torch_linear(self.time_embed_dim, self.time_embed_dim).init(device),
        }
    }
}

/// diffusers `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    /// `in_channels` → `time_embed_dim` (diffusers `linear_1`).
    pub linear_1: Linear<B>,
    /// `time_embed_dim` → `time_embed_dim`, after a SiLU (diffusers `linear_2`).
    pub linear_2: Linear<B>,
}

impl<B: Backend> TimestepEmbedding<B> {
    /// # Shapes
    /// - `features`: `[batch, in_channels]`; output: `[batch, time_embed_dim]`
    pub fn forward(&self, features: Tensor<B, 2>) -> Tensor<B, 2> {
        cpu::linear(&self.linear_2, silu(cpu::linear(&self.linear_1, features)))
    }
}
