//! 2-D convolution as blocked im2col + GEMM.
//!
//! The weight `[out, in·kh·kw]` multiplies a column buffer `[in·kh·kw, P]`
//! holding the input patches of `P` output positions. The buffer is built for
//! a band of output rows at a time and kept under [`COLUMN_BUFFER_BYTES`]: the
//! whole buffer of a 3×3 convolution over 128 channels at 512×512 would be
//! 1.2 GB. A 1×1 convolution needs no buffer: the input already is one.
//! Most 3×3 convolutions (stride 1, padding 1) go to [`super::winograd`].

use rayon::prelude::*;

use super::gemm::{matmul_into, MatRef};
use super::winograd::{conv3x3, Conv3x3};

/// Upper bound on one band's column buffer. Large enough that the GEMM of a
/// band re-reads its weight rarely (one band covers most UNet layers whole).
const COLUMN_BUFFER_BYTES: usize = 32 << 20;

/// Below these, a 3×3 convolution runs as im2col + one GEMM (see
/// [`ConvShape::suits_winograd`]; `benches/cpu_ops.rs` measures both sides).
const WINOGRAD_MIN_CHANNELS: usize = 16;
const WINOGRAD_MIN_PIXELS: usize = 32 * 32;

/// A convolution's shape: one image `[in_channels, height, width]` to
/// `[out_channels, out_height, out_width]`, groups and dilation 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvShape {
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl ConvShape {
    /// `[out_height, out_width]` (PyTorch's formula; 0 when the kernel does not fit).
    pub fn out_size(&self) -> [usize; 2] {
        let side = |size: usize, k: usize, s: usize, p: usize| {
            (size + 2 * p).checked_sub(k).map_or(0, |span| span / s + 1)
        };
        [
            side(self.height, self.kernel[0], self.stride[0], self.padding[0]),
            side(self.width, self.kernel[1], self.stride[1], self.padding[1]),
        ]
    }

    fn patch_len(&self) -> usize {
        self.in_channels * self.kernel[0] * self.kernel[1]
    }

    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// Whether Winograd's F(2×2, 3×3) is the faster way: a 3×3 "same"
    /// convolution with enough input channels for its 16 GEMMs (not
    /// `conv_in`'s 3 or 4) and enough pixels for them to be wider than the
    /// filters are large (the UNet's 8×8 and 16×16 levels are not).
    fn suits_winograd(&self) -> bool {
        self.kernel == [3, 3]
            && self.stride == [1, 1]
            && self.padding == [1, 1]
            && self.in_channels >= WINOGRAD_MIN_CHANNELS
            && self.height * self.width >= WINOGRAD_MIN_PIXELS
    }
}

/// Convolves one image.
///
/// - `input`: `[in_channels, height, width]`, row-major
/// - `weight`: `[out_channels, in_channels, kh, kw]`, row-major
/// - `bias`: `[out_channels]`
/// - `output`: `[out_channels, out_height, out_width]`, overwritten
pub(crate) fn conv2d(
    shape: &ConvShape,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) {
    let [out_height, out_width] = shape.out_size();
    let positions = out_height * out_width;
    let patch = shape.patch_len();
    assert_eq!(
        input.len(),
        shape.in_channels * shape.height * shape.width,
        "input size"
    );
    assert_eq!(weight.len(), shape.out_channels * patch, "weight size");
    assert_eq!(output.len(), shape.out_channels * positions, "output size");
    if positions == 0 || shape.out_channels == 0 {
        return;
    }
    if shape.suits_winograd() {
        let shape = Conv3x3 {
            in_channels: shape.in_channels,
            out_channels: shape.out_channels,
            height: shape.height,
            width: shape.width,
        };
        return conv3x3(&shape, input, weight, bias, output);
    }
    let weight = MatRef::row_major(weight, shape.out_channels, patch);
    if let Some(bias) = bias {
        assert_eq!(bias.len(), shape.out_channels, "bias size");
        for (row, &b) in output.chunks_mut(positions).zip(bias) {
            row.fill(b);
        }
    }
    let accumulate = bias.is_some();

    if shape.is_pointwise() {
        let input = MatRef::row_major(input, shape.in_channels, positions);
        matmul_into(output, positions, weight, input, accumulate);
        return;
    }

    let band_rows = (COLUMN_BUFFER_BYTES / (4 * patch * out_width)).clamp(1, out_height);
    let mut columns = vec![0.0f32; patch * band_rows * out_width];
    for first_row in (0..out_height).step_by(band_rows) {
        let rows = band_rows.min(out_height - first_row);
        let band = rows * out_width;
        let columns = &mut columns[..patch * band];
        fill_columns(shape, input, first_row, rows, columns);
        let first = first_row * out_width;
        matmul_into(
            &mut output[first..],
            positions,
            weight,
            MatRef::row_major(columns, patch, band),
            accumulate,
        );
    }
}

/// Writes the patches of output rows `first_row..first_row + rows` into
/// `columns` (`[in·kh·kw, rows·out_width]`), zeros where a patch overlaps
/// the padding.
fn fill_columns(
    shape: &ConvShape,
    input: &[f32],
    first_row: usize,
    rows: usize,
    columns: &mut [f32],
) {
    let [kh, kw] = shape.kernel;
    let [stride_y, stride_x] = shape.stride;
    let [pad_y, pad_x] = shape.padding;
    let (height, width) = (shape.height, shape.width);
    let out_width = shape.out_size()[1];
    columns
        .par_chunks_mut(rows * out_width)
        .enumerate()
        .for_each(|(r, column)| {
            let (channel, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
            let plane = &input[channel * height * width..][..height * width];
            // Output columns whose input column `ox·stride + kx - pad` is inside the image.
            let first_x = pad_x.saturating_sub(kx).div_ceil(stride_x).min(out_width);
            let end_x = (width + pad_x)
                .checked_sub(kx)
                .map_or(0, |span| span.div_ceil(stride_x))
                .clamp(first_x, out_width);
            for (i, dst) in column.chunks_mut(out_width).enumerate() {
                let iy = ((first_row + i) * stride_y + ky) as isize - pad_y as isize;
                if iy < 0 || iy as usize >= height {
                    dst.fill(0.0);
                    continue;
                }
                let src = &plane[iy as usize * width..][..width];
                dst[..first_x].fill(0.0);
                dst[end_x..].fill(0.0);
                let x0 = first_x * stride_x + kx - pad_x;
                if stride_x == 1 {
                    dst[first_x..end_x].copy_from_slice(&src[x0..x0 + end_x - first_x]);
                } else {
                    for (d, s) in dst[first_x..end_x]
                        .iter_mut()
                        .zip(src[x0..].iter().step_by(stride_x))
                    {
                        *d = *s;
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values as values;

    /// Direct convolution in f64, PyTorch's definition (cross-correlation).
    fn naive(shape: &ConvShape, input: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
        let [oh, ow] = shape.out_size();
        let [kh, kw] = shape.kernel;
        let mut out = vec![0.0; shape.out_channels * oh * ow];
        for o in 0..shape.out_channels {
            for y in 0..oh {
                for x in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[o] as f64);
                    for c in 0..shape.in_channels {
                        for dy in 0..kh {
                            for dx in 0..kw {
                                let iy =
                                    (y * shape.stride[0] + dy) as isize - shape.padding[0] as isize;
                                let ix =
                                    (x * shape.stride[1] + dx) as isize - shape.padding[1] as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy as usize >= shape.height
                                    || ix as usize >= shape.width
                                {
                                    continue;
                                }
                                let v = input
                                    [(c * shape.height + iy as usize) * shape.width + ix as usize];
                                let w = weight[((o * shape.in_channels + c) * kh + dy) * kw + dx];
                                acc += v as f64 * w as f64;
                            }
                        }
                    }
                    out[(o * oh + y) * ow + x] = acc;
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_direct_convolution_for_the_shapes_sd_uses_and_odd_ones() {
        let cases = [
            // (in, h, w, out, kernel, stride, padding)
            (3, 9, 11, 5, [3, 3], [1, 1], [1, 1]), // conv_in / resnet convs
            (4, 8, 8, 6, [3, 3], [2, 2], [1, 1]),  // UNet downsampler
            (4, 9, 9, 3, [3, 3], [2, 2], [0, 0]),  // VAE downsampler (after its own pad)
            (7, 5, 6, 4, [1, 1], [1, 1], [0, 0]),  // shortcut / proj_in
            (2, 4, 5, 3, [2, 3], [1, 2], [2, 1]),  // asymmetric everything
            (2, 2, 2, 3, [3, 3], [1, 1], [3, 3]),  // padding wider than the image
            (16, 33, 32, 4, [3, 3], [1, 1], [1, 1]), // Winograd's share of resnet convs
        ];
        for (in_channels, height, width, out_channels, kernel, stride, padding) in cases {
            let shape = ConvShape {
                in_channels,
                height,
                width,
                out_channels,
                kernel,
                stride,
                padding,
            };
            let input = values(in_channels * height * width, 3);
            let weight = values(out_channels * in_channels * kernel[0] * kernel[1], 5);
            let bias = values(out_channels, 7);
            let [oh, ow] = shape.out_size();
            for bias in [None, Some(bias.as_slice())] {
                let mut got = vec![f32::NAN; out_channels * oh * ow];
                conv2d(&shape, &input, &weight, bias, &mut got);
                let expected = naive(&shape, &input, &weight, bias);
                for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                    assert!(
                        (*g as f64 - e).abs() < 1e-5,
                        "{shape:?} bias {}: [{i}] {g} vs {e}",
                        bias.is_some()
                    );
                }
            }
        }
    }

    #[test]
    fn bands_of_rows_give_the_same_result_as_one_band() {
        // 600 channels × 9 taps × 4 bytes × 512 columns = 11 MiB per row:
        // the 32 MiB budget splits these 7 output rows into bands of 2.
        let shape = ConvShape {
            in_channels: 600,
            height: 7,
            width: 512,
            out_channels: 2,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
        };
        let input = values(600 * 7 * 512, 11);
        let weight = values(2 * 600 * 9, 13);
        let mut got = vec![0.0; 2 * 7 * 512];
        conv2d(&shape, &input, &weight, None, &mut got);
        let expected = naive(&shape, &input, &weight, None);
        let worst = got
            .iter()
            .zip(&expected)
            .map(|(g, e)| (*g as f64 - e).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-3, "worst error {worst}");
    }
}
