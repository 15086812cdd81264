//! Multi-head attention that also returns its probabilities averaged over the
//! heads, in query blocks that stay in cache.
//!
//! DiffSeg reads every self-attention layer's head-mean probabilities. Done
//! with separate ops, each head's `[q, k]` scores (64 MiB at 64×64) are
//! written, softmaxed, read for the product with the values and read again to
//! sum the mean: about 400 MB of memory traffic per head. Here a block of 128
//! queries goes through scores, softmax, mean and values while its 2 MiB of
//! scores stay in cache, and the mean is written once per layer.

use rayon::prelude::*;

use super::gemm::{matmul_into_serial, MatRef};
use super::pointwise::softmax_row;

/// Queries per block: `BLOCK × keys` f32 scores (2 MiB for 4096 keys). The
/// GEMM re-packs `kᵀ` for every block, so blocks are as large as the cache
/// allows: one SD 1.5 64×64 layer took 622 ms with 32, 556 ms with 64,
/// 472 ms with 128 and with 256 (`benches/cpu_ops.rs`).
const BLOCK: usize = 128;

/// One attention input `[batch, heads, rows, cols]` as strided matrices.
#[derive(Clone, Copy)]
pub(crate) struct Heads<'a> {
    /// Data and strides of the whole tensor (`MatRef` with rows/cols of one matrix).
    pub matrix: MatRef<'a>,
    pub batch_stride: usize,
    pub head_stride: usize,
}

impl<'a> Heads<'a> {
    fn at(&self, batch: usize, head: usize, first_row: usize, rows: usize) -> MatRef<'a> {
        MatRef {
            offset: self.matrix.offset
                + batch * self.batch_stride
                + head * self.head_stride
                + first_row * self.matrix.row_stride,
            rows,
            ..self.matrix
        }
    }
}

/// `softmax(q·kᵀ)·v` per head, and the probabilities' mean over heads.
///
/// - `query`: `[batch, heads, queries, d]` (already scaled), `key_t`:
///   `[batch, heads, d, keys]`, `value`: `[batch, heads, keys, d]`
/// - returns `attended` laid out `[batch, queries, heads, d]` and the mean
///   `[batch, queries, keys]`
pub(crate) fn attention_head_mean(
    query: Heads<'_>,
    key_t: Heads<'_>,
    value: Heads<'_>,
    batch: usize,
    heads: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (queries, dim, keys) = (query.matrix.rows, query.matrix.cols, key_t.matrix.cols);
    let mut attended = vec![0.0f32; batch * queries * heads * dim];
    let mut mean = vec![0.0f32; batch * queries * keys];
    let blocks_per_image = queries.div_ceil(BLOCK);
    let out_rows = |rows: usize| rows * heads * dim;
    // Task i: image i / blocks_per_image, queries from (i % blocks_per_image)·BLOCK.
    let tasks: Vec<(usize, usize)> = (0..batch)
        .flat_map(|b| (0..queries).step_by(BLOCK).map(move |first| (b, first)))
        .collect();
    let mut mean_blocks = Vec::with_capacity(tasks.len());
    let mut out_blocks = Vec::with_capacity(tasks.len());
    for (mean_image, out_image) in mean
        .chunks_mut(queries * keys)
        .zip(attended.chunks_mut(out_rows(queries)))
    {
        let mut mean_rest = mean_image;
        let mut out_rest = out_image;
        for first in (0..queries).step_by(BLOCK) {
            let rows = BLOCK.min(queries - first);
            let (m, mean_tail) = std::mem::take(&mut mean_rest).split_at_mut(rows * keys);
            let (o, out_tail) = std::mem::take(&mut out_rest).split_at_mut(out_rows(rows));
            mean_blocks.push(m);
            out_blocks.push(o);
            mean_rest = mean_tail;
            out_rest = out_tail;
        }
    }
    debug_assert_eq!(mean_blocks.len(), batch * blocks_per_image);
    tasks
        .into_par_iter()
        .zip(mean_blocks)
        .zip(out_blocks)
        .for_each_init(
            || vec![0.0f32; BLOCK * keys],
            |scores, (((b, first), mean), out)| {
                let rows = BLOCK.min(queries - first);
                let scores = &mut scores[..rows * keys];
                with_best_simd!({
                    for head in 0..heads {
                        let q = query.at(b, head, first, rows);
                        matmul_into_serial(scores, keys, q, key_t.at(b, head, 0, dim), false);
                        for row in scores.chunks_mut(keys) {
                            softmax_row(row);
                        }
                        for (m, s) in mean.iter_mut().zip(scores.iter()) {
                            *m += *s;
                        }
                        let probs = MatRef::row_major(scores, rows, keys);
                        matmul_into_serial(
                            &mut out[head * dim..],
                            heads * dim,
                            probs,
                            value.at(b, head, 0, keys),
                            false,
                        );
                    }
                    let heads = heads as f32;
                    for m in mean.iter_mut() {
                        *m /= heads;
                    }
                })
            },
        );
    (attended, mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values;

    /// Contiguous `[batch, heads, rows, cols]`.
    fn heads(data: &[f32], heads: usize, rows: usize, cols: usize) -> Heads<'_> {
        let matrix = MatRef {
            data,
            ..MatRef::row_major(&data[..rows * cols], rows, cols)
        };
        Heads {
            matrix,
            batch_stride: heads * rows * cols,
            head_stride: rows * cols,
        }
    }

    #[test]
    fn matches_softmax_attention_and_the_mean_of_its_probabilities_in_f64() {
        // 300 queries: two full blocks and a partial one.
        let (batch, n_heads, queries, keys, dim) = (2, 3, 300, 45, 8);
        // Scores of a few units, as in real attention.
        let values = |len, seed| {
            test_values(len, seed)
                .iter()
                .map(|v| 2.0 * v)
                .collect::<Vec<f32>>()
        };
        let q = values(batch * n_heads * queries * dim, 1);
        let k_t = values(batch * n_heads * dim * keys, 2);
        let v = values(batch * n_heads * keys * dim, 3);
        let (out, mean) = attention_head_mean(
            heads(&q, n_heads, queries, dim),
            heads(&k_t, n_heads, dim, keys),
            heads(&v, n_heads, keys, dim),
            batch,
            n_heads,
        );
        for b in 0..batch {
            let mut mean_ref = vec![0.0f64; queries * keys];
            for h in 0..n_heads {
                let at = |x: &[f32], rows: usize, cols: usize, r: usize, c: usize| {
                    x[((b * n_heads + h) * rows + r) * cols + c] as f64
                };
                for r in 0..queries {
                    let scores: Vec<f64> = (0..keys)
                        .map(|c| {
                            (0..dim)
                                .map(|i| at(&q, queries, dim, r, i) * at(&k_t, dim, keys, i, c))
                                .sum()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    let probs: Vec<f64> = scores.iter().map(|s| (s - max).exp() / sum).collect();
                    for (c, p) in probs.iter().enumerate() {
                        mean_ref[r * keys + c] += p / n_heads as f64;
                    }
                    for i in 0..dim {
                        let want: f64 = probs
                            .iter()
                            .enumerate()
                            .map(|(c, p)| p * at(&v, keys, dim, c, i))
                            .sum();
                        let got = out[((b * queries + r) * n_heads + h) * dim + i] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "out [{b},{r},{h},{i}]: {got} vs {want}"
                        );
                    }
                }
            }
            for (i, want) in mean_ref.iter().enumerate() {
                let got = mean[b * queries * keys + i] as f64;
                assert!(
                    (got - want).abs() < 1e-6,
                    "mean [{b}, {i}]: {got} vs {want}"
                );
            }
        }
    }
}
