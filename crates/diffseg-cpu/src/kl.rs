//! Symmetric KL divergence between every row of `a [m, n]` and every row of
//! `b [p, n]`, with `b` streamed once in blocks of rows.
//!
//! Composed from Burn's ops, the merge's iteration 0 (256 anchors against
//! 4096 maps of 4096) writes three 64 MiB temporaries (`log b`, `b·log b`,
//! and the clamped copy) and reads `b` five times; here each block of `b`'s
//! rows is clamped, logged, summed and multiplied while it is in cache, on
//! every core.
//!
//! Every value is the one the composition gives, bit for bit: the same
//! `f32::ln` (burn-ndarray's `log`), the same row sums (ndarray's `sum`, as
//! burn-ndarray's `sum_dim` runs them), the same GEMM (a block of rows of a
//! product accumulates each element exactly as the whole product does: the
//! k-blocking depends only on k) and the same order of the final
//! additions. Merge results therefore do not change with the path taken.

use ndarray::ArrayView1;
use rayon::prelude::*;

use super::gemm::{matmul_into_serial, MatRef};

/// Rows of `b` per task: a 64×4096 f32 block and its logs (2 MiB) stay in
/// cache between the row sums and the two products.
const BLOCK_ROWS: usize = 64;

/// `ln(max(x, floor))`, as `clamp_min(floor).log()` on burn-ndarray.
#[inline]
fn clamped_log(x: f32, floor: f32) -> f32 {
    (if x < floor { floor } else { x }).ln()
}

/// `Σ x·ln x` of one row, with its logs written to `logs`: the products are
/// summed by ndarray's `sum`, the reduction burn-ndarray's `sum_dim` uses.
fn logs_and_self_term(row: &[f32], logs: &mut [f32], products: &mut [f32], floor: f32) -> f32 {
    for ((log, product), &x) in logs.iter_mut().zip(products.iter_mut()).zip(row) {
        *log = clamped_log(x, floor);
        *product = x * *log;
    }
    ArrayView1::from(&*products).sum()
}

/// `KL[i, j] = ½ (Σ a_i ln a_i + Σ b_j ln b_j − b_j·ln a_i − ln b_j·a_i)`,
/// logs of values clamped to `floor`; `a` and `b` row-major with `n`
/// columns (`m` and `p` rows). Returns `[m, p]` row-major.
pub(crate) fn symmetric_kl(
    a: &[f32],
    m: usize,
    b: &[f32],
    p: usize,
    n: usize,
    floor: f32,
) -> Vec<f32> {
    if n == 0 || m == 0 || p == 0 {
        return vec![0.0; m * p];
    }
    let mut log_a = vec![0f32; a.len()];
    let mut products = vec![0f32; n];
    let self_a: Vec<f32> = a
        .chunks_exact(n)
        .zip(log_a.chunks_exact_mut(n))
        .map(|(row, logs)| logs_and_self_term(row, logs, &mut products, floor))
        .collect();
    // ln aᵀ and aᵀ as the products' right operands, viewed transposed as the
    // composed path's `transpose()` does.
    fn transposed(data: &[f32], rows: usize, cols: usize) -> MatRef<'_> {
        MatRef {
            data,
            offset: 0,
            rows: cols,
            cols: rows,
            row_stride: 1,
            col_stride: cols,
        }
    }
    let (log_a_t, a_t) = (transposed(&log_a, m, n), transposed(a, m, n));
    // [p, m]: row j holds KL(a_i, b_j) for every i; transposed at the end.
    let mut by_map = vec![0f32; p * m];
    by_map
        .par_chunks_mut(BLOCK_ROWS * m)
        .zip(b.par_chunks(BLOCK_ROWS * n))
        .for_each(|(out, block)| {
            let rows = block.len() / n;
            let mut log_block = vec![0f32; block.len()];
            let mut products = vec![0f32; n];
            let self_b: Vec<f32> = block
                .chunks_exact(n)
                .zip(log_block.chunks_exact_mut(n))
                .map(|(row, logs)| logs_and_self_term(row, logs, &mut products, floor))
                .collect();
            let mut cross_log_b = vec![0f32; rows * m];
            matmul_into_serial(out, m, MatRef::row_major(block, rows, n), log_a_t, false);
            matmul_into_serial(
                &mut cross_log_b,
                m,
                MatRef::row_major(&log_block, rows, n),
                a_t,
                false,
            );
            for ((row, &self_j), cross_row) in out
                .chunks_exact_mut(m)
                .zip(&self_b)
                .zip(cross_log_b.chunks_exact(m))
            {
                for ((value, &self_i), &second) in row.iter_mut().zip(&self_a).zip(cross_row) {
                    let cross = *value + second;
                    *value = ((self_i + self_j) - cross) * 0.5;
                }
            }
        });
    let mut kl = vec![0f32; m * p];
    for (j, row) in by_map.chunks_exact(m).enumerate() {
        for (i, &value) in row.iter().enumerate() {
            kl[i * p + j] = value;
        }
    }
    kl
}
