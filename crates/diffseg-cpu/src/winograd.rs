//! 3×3 convolutions (stride 1, padding 1) by Winograd's F(2×2, 3×3).
//!
//! Each 2×2 block of outputs ("tile") is `Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A` for its
//! 4×4 input patch `d` and the 3×3 filter `g` (Lavin & Gray, 2016). Summed over
//! input channels, the element-wise products become 16 GEMMs
//! `U_ξ [out, in] · V_ξ [in, tiles]`, 16 multiplications per tile and channel
//! pair instead of im2col's 36: 2.25× fewer FLOPs in the GEMMs, which are most
//! of the VAE encoder's and the UNet's time. The transforms use only ±1 and ½,
//! so the result differs from a direct convolution by a few f32 roundings
//! (the unit test bounds it; the parity tests hold at their tolerances).
//!
//! The tiles are processed in bands of tile rows so that the transformed input
//! and the GEMM outputs together stay under [`BAND_BYTES`].

use rayon::prelude::*;

use super::gemm::{matmul_into_serial, MatRef};

/// Upper bound on one band's transformed input plus GEMM output.
const BAND_BYTES: usize = 32 << 20;

/// Convolution shape of one image: `[in_channels, height, width]` to
/// `[out_channels, height, width]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv3x3 {
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Conv3x3 {
    fn tiles(&self) -> [usize; 2] {
        [self.height.div_ceil(2), self.width.div_ceil(2)]
    }
}

/// Convolves one image (3×3 kernel, stride 1, zero padding 1).
///
/// - `input`: `[in_channels, height, width]`, row-major
/// - `weight`: `[out_channels, in_channels, 3, 3]`, row-major
/// - `bias`: `[out_channels]`
/// - `output`: `[out_channels, height, width]`, overwritten
pub(crate) fn conv3x3(
    shape: &Conv3x3,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) {
    let Conv3x3 {
        in_channels,
        out_channels,
        height,
        width,
    } = *shape;
    assert_eq!(input.len(), in_channels * height * width, "input size");
    assert_eq!(weight.len(), out_channels * in_channels * 9, "weight size");
    assert_eq!(output.len(), out_channels * height * width, "output size");
    if output.is_empty() {
        return;
    }
    let filters = transform_filters(weight, out_channels, in_channels);
    let [tiles_y, tiles_x] = shape.tiles();
    let tile_bytes = 16 * (in_channels + out_channels) * std::mem::size_of::<f32>();
    let band_rows = (BAND_BYTES / (tile_bytes * tiles_x)).clamp(1, tiles_y);
    let mut transformed = vec![0.0f32; in_channels * 16 * band_rows * tiles_x];
    let mut products = vec![0.0f32; 16 * out_channels * band_rows * tiles_x];
    for first_row in (0..tiles_y).step_by(band_rows) {
        let rows = band_rows.min(tiles_y - first_row);
        let band = rows * tiles_x;
        let transformed = &mut transformed[..in_channels * 16 * band];
        transform_input(shape, input, first_row, rows, transformed);
        let products = &mut products[..16 * out_channels * band];
        products
            .par_chunks_mut(out_channels * band)
            .enumerate()
            .for_each(|(xi, product)| {
                let u = MatRef {
                    data: &filters,
                    offset: xi * in_channels,
                    rows: out_channels,
                    cols: in_channels,
                    row_stride: 16 * in_channels,
                    col_stride: 1,
                };
                let v = MatRef {
                    data: transformed,
                    offset: xi * band,
                    rows: in_channels,
                    cols: band,
                    row_stride: 16 * band,
                    col_stride: 1,
                };
                matmul_into_serial(product, band, u, v, false);
            });
        transform_output(shape, products, bias, first_row, rows, output);
    }
}

/// `G g Gᵀ` of every filter, as `[out][16][in]` (rows of the GEMMs' left
/// operands contiguous).
fn transform_filters(weight: &[f32], out_channels: usize, in_channels: usize) -> Vec<f32> {
    let mut filters = vec![0.0f32; out_channels * in_channels * 16];
    filters
        .par_chunks_mut(in_channels * 16)
        .zip(weight.par_chunks(in_channels * 9))
        .for_each(|(out, g)| {
            for (c, g) in g.chunks_exact(9).enumerate() {
                let mut u = [0.0f32; 16];
                // G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]], applied to the rows of g…
                let mut gg = [[0.0f32; 3]; 4];
                for col in 0..3 {
                    let (g0, g1, g2) = (g[col], g[3 + col], g[6 + col]);
                    gg[0][col] = g0;
                    gg[1][col] = 0.5 * (g0 + g1 + g2);
                    gg[2][col] = 0.5 * (g0 - g1 + g2);
                    gg[3][col] = g2;
                }
                // …then to its columns.
                for (row, r) in gg.iter().enumerate() {
                    u[4 * row] = r[0];
                    u[4 * row + 1] = 0.5 * (r[0] + r[1] + r[2]);
                    u[4 * row + 2] = 0.5 * (r[0] - r[1] + r[2]);
                    u[4 * row + 3] = r[2];
                }
                for (xi, value) in u.into_iter().enumerate() {
                    out[xi * in_channels + c] = value;
                }
            }
        });
    filters
}

/// `Bᵀ d B` of every 4×4 input patch of tile rows `first_row..first_row + rows`,
/// as `[in][16][tiles]` (`transformed`).
///
/// Computed a tile row at a time across its tiles, so that every step is a
/// loop over contiguous slices that vectorises: the patch lines are split
/// into even and odd columns (tile `t` covers columns `2t..2t + 4`: evens `t`
/// and `t + 1`, odds `t` and `t + 1`), `Bᵀ` combines lines, `B` combines
/// those four column sequences.
fn transform_input(
    shape: &Conv3x3,
    input: &[f32],
    first_row: usize,
    rows: usize,
    transformed: &mut [f32],
) {
    let Conv3x3 { height, width, .. } = *shape;
    let tiles_x = shape.tiles()[1];
    let band = rows * tiles_x;
    let n = tiles_x + 1; // even (odd) columns of a zero-padded line
    transformed
        .par_chunks_mut(16 * band)
        .zip(input.par_chunks(height * width))
        .for_each(|(v, plane)| {
            let mut line = vec![0.0f32; 2 * n];
            let mut split = [vec![0.0f32; 4 * n], vec![0.0f32; 4 * n]];
            let mut combined = [vec![0.0f32; 4 * n], vec![0.0f32; 4 * n]];
            with_best_simd!(for r in 0..rows {
                let top = 2 * (first_row + r) as isize - 1;
                for k in 0..4 {
                    let y = top + k as isize;
                    if y < 0 || y as usize >= height {
                        line.fill(0.0);
                    } else {
                        let y = y as usize;
                        line[1..=width].copy_from_slice(&plane[y * width..][..width]);
                    }
                    let [even, odd] = &mut split;
                    let pairs = line.chunks_exact(2);
                    let halves = even[k * n..][..n].iter_mut().zip(&mut odd[k * n..][..n]);
                    for (pair, (e, o)) in pairs.zip(halves) {
                        (*e, *o) = (pair[0], pair[1]);
                    }
                }
                for (lines, out) in split.iter().zip(&mut combined) {
                    apply_bt(lines, out, n);
                }
                let [even, odd] = &combined;
                for i in 0..4 {
                    let (e, o) = (&even[i * n..][..n], &odd[i * n..][..n]);
                    let (e0, e1, o0, o1) = (&e[..tiles_x], &e[1..], &o[..tiles_x], &o[1..]);
                    let out = |j: usize| (4 * i + j) * band + r * tiles_x;
                    combine(&mut v[out(0)..][..tiles_x], e0, e1, |a, c| a - c);
                    combine(&mut v[out(1)..][..tiles_x], o0, e1, |b, c| b + c);
                    combine(&mut v[out(2)..][..tiles_x], o0, e1, |b, c| c - b);
                    combine(&mut v[out(3)..][..tiles_x], o0, o1, |b, d| b - d);
                }
            });
        });
}

/// `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]` applied
/// to four lines of `n` values (`lines`, `[4][n]`), into `out`.
#[inline(always)]
fn apply_bt(lines: &[f32], out: &mut [f32], n: usize) {
    let (l0, l1, l2, l3) = (
        &lines[..n],
        &lines[n..2 * n],
        &lines[2 * n..3 * n],
        &lines[3 * n..],
    );
    let (r0, rest) = out.split_at_mut(n);
    let (r1, rest) = rest.split_at_mut(n);
    let (r2, r3) = rest.split_at_mut(n);
    combine(r0, l0, l2, |a, c| a - c);
    combine(r1, l1, l2, |b, c| b + c);
    combine(r2, l1, l2, |b, c| c - b);
    combine(r3, l1, l3, |b, d| b - d);
}

/// `dst[i] = f(a[i], b[i])`.
#[inline(always)]
fn combine(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for (d, (&a, &b)) in dst.iter_mut().zip(a.iter().zip(b)) {
        *d = f(a, b);
    }
}

/// `Aᵀ m A` of every tile's 16 GEMM outputs (`products`, `[16][out][tiles]`),
/// plus the bias, written to the tile's 2×2 outputs inside the image.
///
/// As [`transform_input`], across the tiles of a tile row: `Aᵀ` combines
/// the 16 product sequences into 8, `A` into the even and odd columns of the
/// two output lines, which are then interleaved.
fn transform_output(
    shape: &Conv3x3,
    products: &[f32],
    bias: Option<&[f32]>,
    first_row: usize,
    rows: usize,
    output: &mut [f32],
) {
    let Conv3x3 {
        out_channels,
        height,
        width,
        ..
    } = *shape;
    let tiles_x = shape.tiles()[1];
    let band = rows * tiles_x;
    output
        .par_chunks_mut(height * width)
        .enumerate()
        .for_each(|(o, plane)| {
            let bias = bias.map_or(0.0, |bias| bias[o]);
            let mut lines = [vec![0.0f32; 4 * tiles_x], vec![0.0f32; 4 * tiles_x]];
            let mut even = vec![0.0f32; tiles_x];
            let mut odd = vec![0.0f32; tiles_x];
            with_best_simd!(for r in 0..rows {
                let m = |xi: usize| {
                    &products[(xi * out_channels + o) * band + r * tiles_x..][..tiles_x]
                };
                // Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]] over the product rows…
                let [top, bottom] = &mut lines;
                for j in 0..4 {
                    let (m0, m1, m2, m3) = (m(j), m(4 + j), m(8 + j), m(12 + j));
                    let top = &mut top[j * tiles_x..][..tiles_x];
                    let bottom = &mut bottom[j * tiles_x..][..tiles_x];
                    for ((t, b), ((&m0, &m1), (&m2, &m3))) in top
                        .iter_mut()
                        .zip(bottom.iter_mut())
                        .zip(m0.iter().zip(m1).zip(m2.iter().zip(m3)))
                    {
                        *t = m0 + m1 + m2;
                        *b = m1 - m2 - m3;
                    }
                }
                // …and A over the product columns, one output line at a time.
                for (dy, sums) in lines.iter().enumerate() {
                    let y = 2 * (first_row + r) + dy;
                    if y >= height {
                        break;
                    }
                    let column = |j: usize| &sums[j * tiles_x..][..tiles_x];
                    let (s0, s1, s2, s3) = (column(0), column(1), column(2), column(3));
                    for (e, ((&s0, &s1), &s2)) in even.iter_mut().zip(s0.iter().zip(s1).zip(s2)) {
                        *e = s0 + s1 + s2 + bias;
                    }
                    for (d, ((&s1, &s2), &s3)) in odd.iter_mut().zip(s1.iter().zip(s2).zip(s3)) {
                        *d = s1 - s2 - s3 + bias;
                    }
                    let line = &mut plane[y * width..][..width];
                    let mut pairs = line.chunks_exact_mut(2);
                    for (pair, (&e, &d)) in (&mut pairs).zip(even.iter().zip(&odd)) {
                        (pair[0], pair[1]) = (e, d);
                    }
                    if let [last] = pairs.into_remainder() {
                        *last = even[tiles_x - 1];
                    }
                }
            });
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values as values;

    /// Direct 3×3 convolution (stride 1, padding 1) in f64.
    fn direct(shape: &Conv3x3, input: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f64> {
        let Conv3x3 {
            in_channels,
            out_channels,
            height,
            width,
        } = *shape;
        let mut out = vec![0.0; out_channels * height * width];
        for o in 0..out_channels {
            for y in 0..height {
                for x in 0..width {
                    let mut acc = bias[o] as f64;
                    for c in 0..in_channels {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (y + ky, x + kx);
                                if iy == 0 || ix == 0 || iy > height || ix > width {
                                    continue;
                                }
                                let v = input[(c * height + iy - 1) * width + ix - 1] as f64;
                                acc += v * weight[(o * in_channels + c) * 9 + ky * 3 + kx] as f64;
                            }
                        }
                    }
                    out[(o * height + y) * width + x] = acc;
                }
            }
        }
        out
    }

    /// Odd and even sizes, one pixel, and enough channels for several bands
    /// (5000 channels × 16 × 4 bytes = 320 KB a tile: bands of 1–2 tile rows).
    /// The bound: values and weights are O(1), so each output sums
    /// `9·in_channels` O(1) products; Winograd's transforms add a few f32
    /// roundings of such sums, far below 1e-4 relative to them.
    #[test]
    fn matches_the_direct_convolution() {
        for (in_channels, out_channels, height, width) in [
            (3, 5, 8, 8),
            (4, 3, 7, 9),
            (2, 2, 1, 1),
            (6, 4, 2, 5),
            (5000, 3, 6, 70),
        ] {
            let shape = Conv3x3 {
                in_channels,
                out_channels,
                height,
                width,
            };
            let input = values(in_channels * height * width, 3);
            let weight = values(out_channels * in_channels * 9, 5);
            let bias = values(out_channels, 7);
            let mut got = vec![f32::NAN; out_channels * height * width];
            conv3x3(&shape, &input, &weight, Some(&bias), &mut got);
            let expected = direct(&shape, &input, &weight, &bias);
            let scale = (9 * in_channels) as f64;
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (*g as f64 - e).abs() <= 1e-5 * scale,
                    "{shape:?}: [{i}] {g} vs {e}"
                );
            }
        }
    }
}
