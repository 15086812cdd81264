//! From proposals to a label map (docs/method.md §6).

use burn::tensor::{backend::Backend, Tensor};
use diffseg_cpu::matmul;

use crate::resample::interpolation_tensor;
use crate::segmentation::Segmentation;
use crate::Error;

/// Largest intermediate buffer (bytes) the label map computes at once: proposals upsampled
/// for a band of output rows. Keeps every tensor far below WGPU's 128 MiB-per-buffer limit.
const BAND_BYTES: usize = 32 << 20;

/// Upsamples each proposal `[K, grid_height*grid_width]` to `out_height x out_width`
/// (half-pixel bilinear), takes per pixel the index of the largest (first one on ties, as
/// `argmax` does in the reference), and renumbers the labels 0..K'−1 in order so that no
/// label is empty.
pub fn label_map<B: Backend>(
    proposals: Tensor<B, 2>,
    grid_height: usize,
    grid_width: usize,
    out_height: usize,
    out_width: usize,
) -> Result<Segmentation, Error> {
    let [count, cells] = proposals.dims();
    if count == 0 || cells != grid_height * grid_width {
        return Err(Error::Shape {
            tensor: "proposals".into(),
            expected: format!("[K >= 1, {}]", grid_height * grid_width),
            actual: vec![count, cells],
        });
    }
    if out_height == 0 || out_width == 0 {
        return Err(Error::Size(format!(
            "label map size {out_width}x{out_height} is empty"
        )));
    }
    let (device, dtype) = (proposals.device(), proposals.dtype());
    let columns = interpolation_tensor::<B>(grid_width, out_width, &device, dtype).transpose();
    // [K * gh, gw] · [gw, ow] → laid out as [gh, K * ow] so each band of output rows is a
    // single matrix product with its rows of the row-interpolation matrix.
    let wide = matmul(
        proposals.reshape([count * grid_height, grid_width]),
        columns,
    )
    .reshape([count, grid_height, out_width])
    .swap_dims(0, 1)
    .reshape([grid_height, count * out_width]);
    let rows = interpolation_tensor::<B>(grid_height, out_height, &device, dtype);
    let band = (BAND_BYTES / (4 * count * out_width)).clamp(1, out_height);
    let mut labels: Vec<u32> = Vec::with_capacity(out_height * out_width);
    for first in (0..out_height).step_by(band) {
        let last = (first + band).min(out_height);
        let winners = matmul(
            rows.clone().slice([first..last, 0..grid_height]),
            wide.clone(),
        )
        .reshape([last - first, count, out_width])
        .argmax(1);
        labels.extend(winners.into_data().iter::<i64>().map(|label| label as u32));
    }
    Segmentation::from_labels(labels, out_width, out_height)
}
