//! Normalisation and softmax computed to full f32 accuracy whatever the
//! compute precision.
//!
//! - Half precision: convolutions and matrix products run in the compute dtype
//!   (f16 or bf16 on a GPU, if asked), but normalisation statistics and softmax
//!   run in f32, as PyTorch's half-precision kernels do internally. Pure f16
//!   overflows on SD: a group mean sums up to 2²⁰ activations and f16 ends at
//!   65504.
//! - Large groups: the VAE's first GroupNorms reduce 2²⁰ values per group.
//!   Burn's GroupNorm sums them in one running f32 sum on burn-ndarray, which
//!   loses about three digits (4.4e-4 max error on the normalised output of
//!   SD 1.5's first VAE resnet, against 3.9e-6 summed in two levels), enough
//!   to put the first VAE resnet 166× further from diffusers than diffusers' own f32
//!   rounding. Group statistics are therefore summed in chunks of about √n
//!   values and then over the chunk sums.

use crate::cpu;

use burn::{
    module::{Module, ModuleMapper, Param},
    nn::{GroupNorm, LayerNorm},
    tensor::{
        activation::{silu, softmax},
        backend::Backend,
        DType, FloatDType, Tensor,
    },
};

/// Whether `dtype` is a reduced-precision float that needs f32 statistics.
fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// Normalisation layers with accurate statistics (see the module docs).
pub trait StableNorm<B: Backend> {
    /// The layer's forward pass with statistics in f32 (in the input's dtype
    /// if wider); the result has `input`'s dtype.
    fn forward_stable<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D>;
}

impl<B: Backend> StableNorm<B> for GroupNorm<B> {
    fn forward_stable<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        match cpu::try_group_norm(self, input, false) {
            Ok(output) => output,
            Err(input) => in_f32(self, input, group_norm),
        }
    }
}

/// `silu(norm.forward_stable(input))`, the pre-activation of every resnet
/// convolution; one pass over memory on the CPU.
pub(crate) fn group_norm_silu<B: Backend, const D: usize>(
    norm: &GroupNorm<B>,
    input: Tensor<B, D>,
) -> Tensor<B, D> {
    match cpu::try_group_norm(norm, input, true) {
        Ok(output) => output,
        Err(input) => silu(in_f32(norm, input, group_norm)),
    }
}

impl<B: Backend> StableNorm<B> for LayerNorm<B> {
    /// Burn's LayerNorm: its statistics span one token (≤ 1280 values), which
    /// one running sum handles well.
    fn forward_stable<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        in_f32(self, input, |norm, x| norm.forward(x))
    }
}

/// `torch.nn.GroupNorm` (biased variance, per-channel affine) with each
/// group's sums taken in two levels.
///
/// # Shapes
/// - `input`: `[batch, channels, ...]`; output: the same
fn group_norm<B: Backend, const D: usize>(
    norm: &GroupNorm<B>,
    input: Tensor<B, D>,
) -> Tensor<B, D> {
    let dims = input.dims();
    let (batch, channels) = (dims[0], dims[1]);
    let groups = norm.num_groups;
    let size = input.shape().num_elements() / (batch * groups);
    let grouped = input.reshape([batch, groups, size]);
    let centred = grouped.clone() - group_mean(grouped);
    let variance = group_mean(centred.clone().square());
    let normalised = (centred / variance.add_scalar(norm.epsilon).sqrt()).reshape(dims);
    match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) if norm.affine => {
            let mut per_channel = [1; D];
            per_channel[1] = channels;
            normalised * gamma.val().reshape(per_channel) + beta.val().reshape(per_channel)
        }
        _ => normalised,
    }
}

/// Mean over the last axis of `[batch, groups, size]`, summed in chunks of
/// the largest divisor of `size` up to √size, then over the chunk sums.
fn group_mean<B: Backend>(values: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, groups, size] = values.dims();
    let chunk = (1..=size.isqrt())
        .rev()
        .find(|chunk| size % chunk == 0)
        .unwrap_or(1);
    values
        .reshape([batch, groups, size / chunk, chunk])
        .sum_dim(3)
        .sum_dim(2)
        .reshape([batch, groups, 1])
        .div_scalar(size as f64)
}

/// Runs `forward` on an f32 copy of `module` and `input` when `input` is
/// half precision. The copied parameters are a norm's scale and shift
/// (≤ 1280 values), negligible next to the activations.
fn in_f32<B: Backend, M: Module<B>, const D: usize>(
    module: &M,
    input: Tensor<B, D>,
    forward: impl Fn(&M, Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    let dtype = input.dtype();
    if !is_half(dtype) {
        return forward(module, input);
    }
    let module = module.clone().map(&mut CastFloatParams(FloatDType::F32));
    forward(&module, input.cast(FloatDType::F32)).cast(dtype)
}

/// Casts every float parameter of a module.
struct CastFloatParams(FloatDType);

impl<B: Backend> ModuleMapper<B> for CastFloatParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
    }
}

/// Softmax along `dim`, computed in f32 when `scores` are half precision.
///
/// The probabilities stay in f32 (the caller casts them back for the product
/// with the values): they are what attention capture hands out, and DiffSeg's
/// KL divergences need more than f16's 11 bits for rows of 4096 keys.
pub(crate) fn softmax_in_f32<B: Backend, const D: usize>(
    scores: Tensor<B, D>,
    dim: usize,
) -> Tensor<B, D> {
    if is_half(scores.dtype()) {
        softmax(scores.cast(FloatDType::F32), dim)
    } else if dim + 1 == D {
        cpu::softmax_last(scores)
    } else {
        softmax(scores, dim)
    }
}

/// Half-precision checks, generic over the backend. They run in real f16 arithmetic on the CPU
/// through Burn's Candle backend, everywhere. The WGPU and CUDA runs need a GPU: Burn's WGSL
/// kernels do not compile f16 on Mesa lavapipe (no `SHADER_F16` through wgpu), so there they are
/// ignored; run them with `--ignored` on a GPU.
#[cfg(test)]
mod tests {
    use burn::{nn::GroupNormConfig, tensor::TensorData};

    use super::*;

    /// Activations of a few hundred, as deep SD layers have, summed over a group of 1024
    /// overflow f16 (largest value 65504): Burn's GroupNorm in pure f16 returns non-finite
    /// values. With the statistics in f32 the result is the exact normalisation, rounded to f16.
    fn group_norm_statistics_in_f32_survive_what_overflows_f16<Half: Backend>() {
        let device = Default::default();
        let values: Vec<f32> = (0..8 * 16 * 16).map(|i| 300.0 + (i % 7) as f32).collect();
        let norm = GroupNormConfig::new(2, 8).init::<Half>(&device);
        let input =
            Tensor::<Half, 4>::from_data(TensorData::new(values.clone(), [1, 8, 16, 16]), &device);
        assert_eq!(input.dtype(), DType::F16, "a half-precision backend");
        let to_vec = |t: Tensor<Half, 4>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();

        let plain = to_vec(norm.forward(input.clone()));
        assert!(
            plain.iter().any(|v| !v.is_finite()),
            "premise: pure-f16 GroupNorm overflows on this input"
        );

        let ours = norm.forward_stable(input);
        assert_eq!(
            ours.dtype(),
            DType::F16,
            "the output keeps the compute dtype"
        );
        let ours = to_vec(ours);
        // Exact group statistics in f64 (groups are contiguous halves: 4 channels × 256).
        for (group, (got, x)) in ours.chunks(1024).zip(values.chunks(1024)).enumerate() {
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / 1024.0;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 1024.0;
            for (g, v) in got.iter().zip(x) {
                let expected = (*v as f64 - mean) / (var + 1e-5).sqrt();
                // f16 rounding of values up to ±1.6: ≤ 2⁻¹¹ × 2 ≈ 1e-3.
                assert!(
                    (*g as f64 - expected).abs() <= 1e-3,
                    "group {group}: {g} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn candle_f16_group_norm_statistics_in_f32_survive_what_overflows_f16() {
        group_norm_statistics_in_f32_survive_what_overflows_f16::<
            burn::backend::Candle<half::f16, i64>,
        >();
    }

    #[cfg(feature = "wgpu")]
    #[test]
    #[ignore = "needs f16 kernels: Burn's WGSL f16 does not compile on lavapipe; run on a GPU"]
    fn wgpu_f16_group_norm_statistics_in_f32_survive_what_overflows_f16() {
        group_norm_statistics_in_f32_survive_what_overflows_f16::<
            burn::backend::Wgpu<half::f16, i32>,
        >();
    }

    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA device"]
    fn cuda_f16_group_norm_statistics_in_f32_survive_what_overflows_f16() {
        group_norm_statistics_in_f32_survive_what_overflows_f16::<
            burn::backend::Cuda<half::f16, i32>,
        >();
    }
}
