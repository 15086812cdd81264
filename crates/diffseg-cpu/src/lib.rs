//! Fast f32 kernels for burn-ndarray (the CPU backend), behind generic entry
//! points. diffseg-sd runs its networks through them and diffseg-core its
//! merge.
//!
//! Each function in this module takes and returns Burn tensors of any backend
//! `B`. When `B` is burn-ndarray and the tensor is f32, it runs a kernel of
//! this crate: GEMM-based convolution, multi-threaded matrix products, a
//! one-pass softmax and GroupNorm(+SiLU). Every other backend (WGPU, CUDA,
//! Candle, Autodiff, a user's own) and every other dtype runs Burn's own op,
//! unchanged. The choice is made by the type of the backend's float tensor,
//! so no trait bound is added to the networks' generic code, and a backend
//! this crate has never heard of still works.
//!
//! Without the `ndarray` feature only Burn's ops exist.
//!
//! Measured on a 2-core AVX2 machine (docs/benchmarks.md): burn-ndarray's
//! direct `conv2d` runs at 9–13 GFLOP/s and its `matmul` uses one thread per
//! matrix; the GEMM here runs at 60+.

// Every dependency a target lists must be used (checked at each build; test builds,
// which also see the dev-dependencies, are exempt).
#![cfg_attr(not(test), deny(unused_crate_dependencies))]
#![warn(missing_docs)]

// First: its `with_best_simd!` macro is used by the modules after it.
#[cfg(feature = "ndarray")]
#[macro_use]
mod pointwise;
#[cfg(feature = "ndarray")]
mod attention;
#[cfg(feature = "ndarray")]
mod conv;
#[cfg(feature = "ndarray")]
mod gemm;
#[cfg(feature = "ndarray")]
mod kl;
#[cfg(feature = "ndarray")]
mod ndarray_bridge;
#[cfg(feature = "ndarray")]
mod winograd;

use burn::{
    nn::{conv::Conv2d, GroupNorm, Linear},
    tensor::{activation, backend::Backend, Tensor},
};

/// `conv.forward(input)`.
pub fn conv2d<B: Backend>(conv: &Conv2d<B>, input: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "ndarray")]
    let input = match ndarray_bridge::conv2d(conv, input) {
        Ok(output) => return output,
        Err(input) => input,
    };
    conv.forward(input)
}

/// `linear.forward(input)`.
pub fn linear<B: Backend, const D: usize>(linear: &Linear<B>, input: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "ndarray")]
    let input = match ndarray_bridge::linear(linear, input) {
        Ok(output) => return output,
        Err(input) => input,
    };
    linear.forward(input)
}

/// `lhs.matmul(rhs)`, batch dimensions broadcast as Burn does.
pub fn matmul<B: Backend, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "ndarray")]
    let (lhs, rhs) = match ndarray_bridge::matmul(lhs, rhs) {
        Ok(output) => return output,
        Err(operands) => operands,
    };
    lhs.matmul(rhs)
}

/// Softmax along the last axis.
pub fn softmax_last<B: Backend, const D: usize>(scores: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "ndarray")]
    let scores = match ndarray_bridge::softmax_last(scores) {
        Ok(output) => return output,
        Err(scores) => scores,
    };
    activation::softmax(scores, D - 1)
}

/// `softmax(q·kᵀ)·v` per head and the probabilities' mean over the heads,
/// for f32 on the CPU (in cache-sized query blocks, the mean written once);
/// the inputs back (`Err`) elsewhere, for the caller's own per-head path.
///
/// # Shapes
/// - `query`: `[batch, heads, queries, d]`, already scaled; `key_t`:
///   `[batch, heads, d, keys]`; `value`: `[batch, heads, keys, d]`
/// - output: attended `[batch, heads, queries, d]`, mean `[batch, queries, keys]`
#[allow(clippy::type_complexity)]
pub fn try_attention_head_mean<B: Backend>(
    query: Tensor<B, 4>,
    key_t: Tensor<B, 4>,
    value: Tensor<B, 4>,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>), (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    #[cfg(feature = "ndarray")]
    return ndarray_bridge::attention_head_mean(query, key_t, value);
    #[cfg(not(feature = "ndarray"))]
    Err((query, key_t, value))
}

/// Symmetric KL divergence between every row of `a [m, n]` and every row of
/// `b [p, n]`, `½ (Σ x ln x + Σ y ln y − x·ln y − y·ln x)` with logs of
/// values clamped to `log_floor`, as `[m, p]`: for f32 on the CPU in one
/// pass over `b` (no `[p, n]` temporaries), bit for bit what the composition
/// of Burn's ops gives there; the inputs back (`Err`) elsewhere, for the
/// caller's own composition.
#[allow(clippy::type_complexity)]
pub fn try_symmetric_kl<B: Backend>(
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    log_floor: f32,
) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 2>)> {
    #[cfg(feature = "ndarray")]
    return ndarray_bridge::symmetric_kl(a, b, log_floor);
    #[cfg(not(feature = "ndarray"))]
    {
        let _ = log_floor;
        Err((a, b))
    }
}

/// One term of an attention aggregation added in one pass: for every output row `r`,
/// `total[r] + x[s] / Σ x[s] · weight` with `s = rows[r]` (`r` itself without `rows`), or
/// the term alone without `total`. `x` is `[sources, n]`, the result `[rows, n]`. For f32
/// on the CPU, written into `total`'s own memory (no temporaries), bit for bit what Burn's
/// `x / x.sum_dim(1)`, `select`, `mul_scalar` and `+` give there; the inputs back (`Err`)
/// elsewhere.
#[allow(clippy::type_complexity)]
pub fn try_add_normalized_rows<B: Backend>(
    total: Option<Tensor<B, 2>>,
    x: Tensor<B, 2>,
    rows: Option<&[usize]>,
    weight: f32,
) -> Result<Tensor<B, 2>, (Option<Tensor<B, 2>>, Tensor<B, 2>)> {
    #[cfg(feature = "ndarray")]
    return ndarray_bridge::add_normalized_rows(total, x, rows, weight);
    #[cfg(not(feature = "ndarray"))]
    {
        let _ = (rows, weight);
        Err((total, x))
    }
}

/// GroupNorm with exact statistics, optionally followed by SiLU, for f32
/// inputs on the CPU; the input back (`Err`) where the caller must use its
/// own generic path.
pub fn try_group_norm<B: Backend, const D: usize>(
    norm: &GroupNorm<B>,
    input: Tensor<B, D>,
    silu: bool,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    #[cfg(feature = "ndarray")]
    return ndarray_bridge::group_norm(norm, input, silu);
    #[cfg(not(feature = "ndarray"))]
    {
        let _ = (norm, silu);
        Err(input)
    }
}

/// Deterministic test inputs in [-1, 1).
#[cfg(all(test, feature = "ndarray"))]
fn test_values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}
