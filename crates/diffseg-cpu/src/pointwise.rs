//! Softmax and GroupNorm(+SiLU) in one pass over memory each, with a
//! vectorisable `exp`.
//!
//! Burn composes these from generic element-wise ops: every step allocates
//! and writes a full tensor (a 64×64 attention head's scores are 64 MiB, a
//! VAE activation at 512×512 is 128 MiB), and its `exp` is the scalar libm
//! call. Here each row or group is read and written in place, and the inner
//! loops are compiled a second time for AVX2+FMA, chosen at run time.

use rayon::prelude::*;

/// Runs `$body` compiled for AVX2+FMA when the CPU has them (the baseline
/// x86-64 target only allows SSE2), otherwise as compiled by default.
macro_rules! with_best_simd {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the features were detected on this CPU.
                unsafe { avx2(|| $body) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}

/// `e^x` to about 2 ulp (Cephes' `expf`: range reduction by ln 2, degree-6
/// polynomial), branch-free so that loops over it vectorise. Arguments below
/// the smallest normal result give 0; above 88 they saturate at e^88.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.336_55, 88.0);
    let n = (clamped * std::f32::consts::LOG2_E + 0.5).floor();
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let e = p * r * r + r + 1.0;
    let scaled = e * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.336_55 {
        0.0
    } else {
        scaled
    }
}

/// Lanes of the partial sums and maxima: the compiler keeps them in one
/// AVX register and the reduction order no longer serialises the loop.
const LANES: usize = 8;

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Replaces `row` by `exp(row - shift)` and returns the sum.
#[inline(always)]
fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, v) in lanes.iter_mut().zip(chunk) {
            *v = exp(*v - shift);
            *s += *v;
        }
    }
    let mut sum: f32 = 0.0;
    for v in chunks.into_remainder() {
        *v = exp(*v - shift);
        sum += *v;
    }
    sum + lanes.iter().sum::<f32>()
}

/// Softmax over each `row_len`-long row of `data`, in place.
///
/// A row whose maximum is -∞ (fully masked) becomes NaN, as in PyTorch; a NaN
/// anywhere in a row makes the whole row NaN.
/// `out[r] (+)= x[s] / Σ x[s] · weight` with `s = rows[r]` (or `r`), row by row on every
/// core: one term of an attention aggregation. The sums are ndarray's (as burn-ndarray's
/// `sum_dim`) and each value is divided, then scaled, then added, so the result is bit for
/// bit that of the composed tensor ops.
pub(crate) fn add_normalized_rows(
    out: &mut [f32],
    x: &[f32],
    n: usize,
    rows: Option<&[usize]>,
    weight: f32,
    accumulate: bool,
) {
    if n == 0 {
        return;
    }
    let sums: Vec<f32> = x
        .par_chunks(n)
        .map(|row| ndarray::ArrayView1::from(row).sum())
        .collect();
    out.par_chunks_mut(n).enumerate().for_each(|(r, out_row)| {
        let source = rows.map_or(r, |rows| rows[r]);
        let (x_row, sum) = (&x[source * n..(source + 1) * n], sums[source]);
        if accumulate {
            for (o, &v) in out_row.iter_mut().zip(x_row) {
                *o += v / sum * weight;
            }
        } else {
            for (o, &v) in out_row.iter_mut().zip(x_row) {
                *o = v / sum * weight;
            }
        }
    });
}

pub(crate) fn softmax_rows(data: &mut [f32], row_len: usize) {
    if row_len == 0 {
        return;
    }
    let rows_per_task = (1 << 15) / row_len + 1;
    data.par_chunks_mut(row_len * rows_per_task)
        .for_each(|rows| {
            with_best_simd!({
                for row in rows.chunks_mut(row_len) {
                    softmax_row(row);
                }
            })
        });
}

/// Softmax of one row in place (see [`softmax_rows`]), inlined into the
/// caller's SIMD context.
#[inline(always)]
pub(crate) fn softmax_row(row: &mut [f32]) {
    let max = row_max(row);
    if row.iter().any(|v| v.is_nan()) || max == f32::NEG_INFINITY {
        row.fill(f32::NAN);
        return;
    }
    let inverse = 1.0 / exp_shifted_sum(row, max);
    for v in row.iter_mut() {
        *v *= inverse;
    }
}

/// `torch.nn.GroupNorm` over `[batch, channels, spatial]` in place, with an
/// optional per-channel affine and an optional SiLU after it.
///
/// Statistics are exact to f32 rounding: sums in f64, variance from the
/// centred values (two passes), as diffusers' f32 result is up to its own
/// rounding.
pub(crate) struct GroupNorm<'a> {
    pub groups: usize,
    pub epsilon: f64,
    /// Per-channel scale and shift.
    pub affine: Option<(&'a [f32], &'a [f32])>,
    pub silu: bool,
}

impl GroupNorm<'_> {
    pub(crate) fn apply(&self, data: &mut [f32], channels: usize, spatial: usize) {
        let per_group = channels / self.groups;
        assert_eq!(
            per_group * self.groups,
            channels,
            "channels divisible by groups"
        );
        assert_eq!(data.len() % (channels * spatial).max(1), 0, "whole images");
        if data.is_empty() || spatial == 0 {
            return;
        }
        data.par_chunks_mut(per_group * spatial)
            .enumerate()
            .for_each(|(index, group)| {
                let first_channel = (index % self.groups) * per_group;
                with_best_simd!(self.normalise_group(group, first_channel, spatial))
            });
    }

    #[inline(always)]
    fn normalise_group(&self, group: &mut [f32], first_channel: usize, spatial: usize) {
        let count = group.len() as f64;
        let mean = sum_f64(group.iter().map(|&v| v as f64)) / count;
        let variance = sum_f64(group.iter().map(|&v| (v as f64 - mean).powi(2))) / count;
        let inv_std = 1.0 / (variance + self.epsilon).sqrt();
        for (c, plane) in group.chunks_mut(spatial).enumerate() {
            let (gamma, beta) = self.affine.map_or((1.0, 0.0), |(g, b)| {
                (g[first_channel + c] as f64, b[first_channel + c] as f64)
            });
            // Centred first: folding the mean into the shift would cancel
            // digits when the mean is large next to the spread.
            let (mean, scale, beta) = (mean as f32, (inv_std * gamma) as f32, beta as f32);
            if self.silu {
                for v in plane.iter_mut() {
                    let y = (*v - mean) * scale + beta;
                    *v = y / (1.0 + exp(-y));
                }
            } else {
                for v in plane.iter_mut() {
                    *v = (*v - mean) * scale + beta;
                }
            }
        }
    }
}

/// Sum in four f64 lanes (vectorises; f64 keeps 2²⁰-value groups exact to f32).
#[inline(always)]
fn sum_f64(values: impl Iterator<Item = f64>) -> f64 {
    let mut lanes = [0.0f64; 4];
    for (i, v) in values.enumerate() {
        lanes[i % 4] += v;
    }
    lanes.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_over_the_range_softmax_uses() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.001_7;
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn softmax_matches_the_definition_and_keeps_pytorch_edge_cases() {
        let row_len = 37;
        let mut data: Vec<f32> = (0..row_len * 5)
            .map(|i| ((i * 7919) % 101) as f32 / 7.0 - 6.0)
            .collect();
        data[row_len..2 * row_len].fill(f32::NEG_INFINITY); // fully masked row
        data[2 * row_len + 3] = f32::NEG_INFINITY; // one masked key
        data[3 * row_len + 1] = f32::NAN;
        let original = data.clone();
        softmax_rows(&mut data, row_len);
        for (r, (got, x)) in data
            .chunks(row_len)
            .zip(original.chunks(row_len))
            .enumerate()
        {
            match r {
                1 | 3 => assert!(got.iter().all(|v| v.is_nan()), "row {r} is NaN"),
                _ => {
                    let max = x
                        .iter()
                        .cloned()
                        .fold(f64::NEG_INFINITY, |m, v| m.max(v as f64));
                    let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
                    for (g, &v) in got.iter().zip(x) {
                        let want = (v as f64 - max).exp() / sum;
                        assert!((*g as f64 - want).abs() < 1e-7, "row {r}: {g} vs {want}");
                    }
                }
            }
        }
        assert_eq!(data[2 * row_len + 3], 0.0);
    }

    #[test]
    fn group_norm_silu_matches_the_definition_in_f64() {
        let (batch, channels, spatial, groups) = (2, 6, 50, 3);
        let data: Vec<f32> = (0..batch * channels * spatial)
            .map(|i| 300.0 + ((i * 31) % 17) as f32 * 0.37)
            .collect();
        let gamma: Vec<f32> = (0..channels).map(|c| 0.5 + c as f32 * 0.25).collect();
        let beta: Vec<f32> = (0..channels).map(|c| c as f32 * 0.1 - 0.2).collect();
        for silu in [false, true] {
            let mut got = data.clone();
            GroupNorm {
                groups,
                epsilon: 1e-6,
                affine: Some((&gamma, &beta)),
                silu,
            }
            .apply(&mut got, channels, spatial);
            let per_group = channels / groups * spatial;
            for (g, (out, x)) in got
                .chunks(per_group)
                .zip(data.chunks(per_group))
                .enumerate()
            {
                let mean = x.iter().map(|&v| v as f64).sum::<f64>() / per_group as f64;
                let var =
                    x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / per_group as f64;
                for (i, (o, v)) in out.iter().zip(x).enumerate() {
                    let c = (g % groups) * (channels / groups) + i / spatial;
                    let y =
                        (*v as f64 - mean) / (var + 1e-6).sqrt() * gamma[c] as f64 + beta[c] as f64;
                    let want = if silu { y / (1.0 + (-y).exp()) } else { y };
                    // The inputs (≈ 300) are only known to f32 rounding, ≈ 300·2⁻²³, and
                    // that error is scaled by γ/σ: what any f32 GroupNorm, PyTorch's too, loses.
                    let bound =
                        2.0 * 300.0 * f32::EPSILON as f64 * gamma[c] as f64 / var.sqrt() + 1e-6;
                    assert!(
                        (*o as f64 - want).abs() < bound,
                        "silu {silu} group {g} [{i}]: {o} vs {want}"
                    );
                }
            }
        }
    }
}
