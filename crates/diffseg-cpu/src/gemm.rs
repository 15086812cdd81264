//! Matrix products on the `gemm` crate: cache-blocked, AVX2/FMA (chosen at run
//! time), multi-threaded on Rayon's pool. burn-ndarray multiplies through
//! `matrixmultiply`, one thread per matrix, at a third of this speed here.

use gemm::Parallelism;

/// A read-only strided matrix inside a slice: element `(i, j)` is
/// `data[offset + i·row_stride + j·col_stride]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows × cols` matrix filling `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "row-major matrix size");
        Self {
            data,
            offset: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transposed view (no copy).
    #[cfg(test)]
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Panics unless every element lies inside `data`.
    fn check(&self) {
        if self.rows == 0 || self.cols == 0 {
            return;
        }
        let last =
            self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
        assert!(last < self.data.len(), "strided matrix exceeds its slice");
    }

    fn ptr(&self) -> *const f32 {
        self.data[self.offset..].as_ptr()
    }
}

/// Products this small run on the calling thread: splitting them costs more
/// than it saves (a CLIP token row, one attention block of a tiny model).
const PARALLEL_MIN_FLOPS: usize = 1 << 22;

/// `dst = lhs · rhs` (or `dst += lhs · rhs` with `accumulate`), `dst` being a
/// row-major `m × n` block whose rows are `dst_row_stride` apart.
pub(crate) fn matmul_into(
    dst: &mut [f32],
    dst_row_stride: usize,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    accumulate: bool,
) {
    let parallel = 2 * lhs.rows * rhs.cols * lhs.cols >= PARALLEL_MIN_FLOPS;
    product(dst, dst_row_stride, lhs, rhs, accumulate, parallel);
}

/// [`matmul_into`] on the calling thread, for callers that already split
/// their work across threads.
pub(crate) fn matmul_into_serial(
    dst: &mut [f32],
    dst_row_stride: usize,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    accumulate: bool,
) {
    product(dst, dst_row_stride, lhs, rhs, accumulate, false);
}

fn product(
    dst: &mut [f32],
    dst_row_stride: usize,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    accumulate: bool,
    parallel: bool,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions");
    lhs.check();
    rhs.check();
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_row_stride + n <= dst.len() && n <= dst_row_stride,
        "destination block exceeds its slice"
    );
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = if parallel {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // SAFETY: `check` and the assertion above keep every element the
    // kernel reads or writes inside the borrowed slices; `dst` is borrowed
    // mutably, so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values as values;

    /// The textbook triple loop, in f64.
    fn naive(lhs: MatRef<'_>, rhs: MatRef<'_>) -> Vec<f64> {
        let at = |m: &MatRef<'_>, i: usize, j: usize| {
            m.data[m.offset + i * m.row_stride + j * m.col_stride] as f64
        };
        let mut out = vec![0.0; lhs.rows * rhs.cols];
        for i in 0..lhs.rows {
            for j in 0..rhs.cols {
                out[i * rhs.cols + j] =
                    (0..lhs.cols).map(|p| at(&lhs, i, p) * at(&rhs, p, j)).sum();
            }
        }
        out
    }

    #[test]
    fn strided_and_transposed_operands_match_the_triple_loop() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (64, 40, 96), (130, 257, 129)] {
            let a = values(m * k + 3, 1);
            let b = values(k * n, 2);
            // lhs at an offset, rhs stored transposed.
            let lhs = MatRef {
                offset: 3,
                ..MatRef::row_major(&a[3..], m, k)
            };
            let lhs = MatRef { data: &a, ..lhs };
            let rhs = MatRef::row_major(&b, n, k).t();
            let expected = naive(lhs, rhs);
            let mut got = vec![7.0; m * (n + 2)];
            matmul_into(&mut got, n + 2, lhs, rhs, false);
            for i in 0..m {
                for j in 0..n {
                    let (g, e) = (got[i * (n + 2) + j] as f64, expected[i * n + j]);
                    assert!(
                        (g - e).abs() <= 1e-5 * (k as f64).sqrt() * 4.0,
                        "({m},{k},{n}) [{i},{j}]: {g} vs {e}"
                    );
                }
                assert_eq!(got[i * (n + 2) + n], 7.0, "padding columns untouched");
            }
            // Accumulating adds the product a second time.
            matmul_into(&mut got, n + 2, lhs, rhs, true);
            let (g, e) = (got[0] as f64, 2.0 * expected[0]);
            assert!(
                (g - e).abs() <= 1e-4 * (k as f64).sqrt(),
                "accumulate: {g} vs {e}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "exceeds its slice")]
    fn an_operand_outside_its_slice_is_refused() {
        let a = vec![0.0; 6];
        let lhs = MatRef::row_major(&a, 2, 3);
        let rhs = MatRef {
            rows: 3,
            cols: 3,
            ..MatRef::row_major(&a, 2, 3)
        };
        matmul_into(&mut [0.0; 6], 3, lhs, rhs, false);
    }
}
