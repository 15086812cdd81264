//! Half-pixel bilinear resampling (PyTorch `interpolate(mode="bilinear", align_corners=False)`,
//! TF2 `tf.image.resize` bilinear without antialiasing, Keras `UpSampling2D(interpolation="bilinear")`).
//!
//! Burn's own bilinear `interpolate` aligns corners, which is not what DiffSeg uses. Resampling
//! one axis is a linear map, so it is done here as a product with an interpolation matrix:
//! exact, backend-generic, and fast on every backend.

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use diffseg_cpu::matmul;

/// The `[out_size, in_size]` matrix that resamples one axis with half-pixel bilinear weights.
///
/// Output sample `o` sits at source coordinate `(o + 0.5) * in/out - 0.5`, clamped to `>= 0`
/// (as PyTorch and TF do), and mixes the two nearest source samples (the upper one clamped
/// to the last index). Each row sums to 1.
pub(crate) fn interpolation_matrix(in_size: usize, out_size: usize) -> Vec<f32> {
    let mut matrix = vec![0f32; out_size * in_size];
    for (out, taps) in interpolation_taps(in_size, out_size)
        .into_iter()
        .enumerate()
    {
        for (source, weight) in taps {
            matrix[out * in_size + source] += weight;
        }
    }
    matrix
}

/// The same weights as [`interpolation_matrix`], as each output sample's two
/// `(source index, weight)` pairs (the matrix rows' only non-zero entries).
pub(crate) fn interpolation_taps(in_size: usize, out_size: usize) -> Vec<[(usize, f32); 2]> {
    let scale = in_size as f64 / out_size as f64;
    (0..out_size)
        .map(|out| {
            let source = ((out as f64 + 0.5) * scale - 0.5).max(0.0);
            let lower = (source.floor() as usize).min(in_size - 1);
            let upper = (lower + 1).min(in_size - 1);
            let upper_weight = source - lower as f64;
            [
                (lower, (1.0 - upper_weight) as f32),
                (upper, upper_weight as f32),
            ]
        })
        .collect()
}

/// The interpolation matrix of [`interpolation_matrix`] as a `[out_size, in_size]` tensor of
/// `dtype` (that of the maps it resizes: f32 maps stay f32 on a half-precision backend).
pub(crate) fn interpolation_tensor<B: Backend>(
    in_size: usize,
    out_size: usize,
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, 2> {
    let data = TensorData::new(interpolation_matrix(in_size, out_size), [out_size, in_size]);
    Tensor::from_data_dtype(data, device, dtype)
}

/// Resizes `[n, h, w]` to `[n, out_height, out_width]` with half-pixel bilinear interpolation,
/// equal to PyTorch `interpolate(x[:, None], size, mode="bilinear", align_corners=False)`.
///
/// Two plain 2-D matrix products (columns, then rows); an axis whose size does not change is
/// left untouched.
pub fn resize_bilinear_half_pixel<B: Backend>(
    input: Tensor<B, 3>,
    out_height: usize,
    out_width: usize,
) -> Tensor<B, 3> {
    let [n, height, width] = input.dims();
    let (device, dtype) = (input.device(), input.dtype());
    let mut resized = input;
    if out_width != width {
        let columns = interpolation_tensor::<B>(width, out_width, &device, dtype).transpose();
        resized =
            matmul(resized.reshape([n * height, width]), columns).reshape([n, height, out_width]);
    }
    if out_height != height {
        let rows = interpolation_tensor::<B>(height, out_height, &device, dtype).transpose();
        resized = matmul(
            resized.swap_dims(1, 2).reshape([n * out_width, height]),
            rows,
        )
        .reshape([n, out_width, out_height])
        .swap_dims(1, 2);
    }
    resized
}
