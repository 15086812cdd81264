//! Attention aggregation (docs/method.md §4): every resolution brought to the largest grid and
//! summed with weights proportional to its side.

use burn::tensor::{backend::Backend, Tensor};

use crate::attention::AttentionMaps;
use crate::merge::index_tensor;
use crate::resample::resize_bilinear_half_pixel;

/// The aggregated attention `[H*W, H*W]` on the largest grid `H x W`: row `i*W + j` is the
/// probability map of query cell `(i, j)` over all key cells.
#[derive(Debug, Clone)]
pub struct Aggregate<B: Backend> {
    /// The maps, one row per query cell.
    pub maps: Tensor<B, 2>,
    /// Grid rows `H`.
    pub height: usize,
    /// Grid columns `W`.
    pub width: usize,
}

/// Aggregation weights: proportional to each grid's side (`sqrt(h*w)`, i.e. `r` for square
/// grids, giving `[64, 32, 16, 8] / 120` for SD 1.x), in the order of [`AttentionMaps::iter`].
pub fn aggregation_weights<B: Backend>(maps: &AttentionMaps<B>) -> Vec<f32> {
    let sides: Vec<f64> = maps
        .iter()
        .map(|map| ((map.height * map.width) as f64).sqrt())
        .collect();
    let total: f64 = sides.iter().sum();
    sides.iter().map(|side| (side / total) as f32).collect()
}

/// Aggregates the maps (docs/method.md §4): for each grid `h x w`, upsample the key axes to `H x W`
/// (half-pixel bilinear), renormalise each query's map to sum to 1, repeat the query axes
/// (nearest: each query cell covers an `H/h x W/w` block) and add it with its weight.
pub fn aggregate<B: Backend>(maps: &AttentionMaps<B>) -> Aggregate<B> {
    let (height, width) = maps.largest_grid();
    let device = maps.device();
    let weights = aggregation_weights(maps);
    let mut total: Option<Tensor<B, 2>> = None;
    for (map, weight) in maps.iter().zip(weights) {
        let queries = map.height * map.width;
        let same_grid = map.height == height && map.width == width;
        // The largest grid is used as it is (resizing to its own size changes nothing).
        let upsampled = if same_grid {
            map.probs.clone()
        } else {
            resize_bilinear_half_pixel(
                map.probs.clone().reshape([queries, map.height, map.width]),
                height,
                width,
            )
            .reshape([queries, height * width])
        };
        let rows = (!same_grid).then(|| query_cells(map.height, map.width, height, width));
        total = Some(add_term(total, upsampled, rows.as_deref(), weight, &device));
    }
    Aggregate {
        maps: total.expect("AttentionMaps holds at least one map"),
        height,
        width,
    }
}

/// One grid's term added to the running sum: each query's map renormalised to sum to 1
/// (per-row sums of 4096 values keep f32 precision; a global sum would not), repeated over
/// the query cells it covers (`rows`), times its weight. In one pass on the CPU (diffseg-cpu,
/// same values bit for bit), else with Burn's ops.
fn add_term<B: Backend>(
    total: Option<Tensor<B, 2>>,
    upsampled: Tensor<B, 2>,
    rows: Option<&[usize]>,
    weight: f32,
    device: &B::Device,
) -> Tensor<B, 2> {
    let (total, upsampled) =
        match diffseg_cpu::try_add_normalized_rows(total, upsampled, rows, weight) {
            Ok(sum) => return sum,
            Err(inputs) => inputs,
        };
    add_term_composed(total, upsampled, rows, weight, device)
}

/// [`add_term`] with Burn's ops, for every backend.
fn add_term_composed<B: Backend>(
    total: Option<Tensor<B, 2>>,
    upsampled: Tensor<B, 2>,
    rows: Option<&[usize]>,
    weight: f32,
    device: &B::Device,
) -> Tensor<B, 2> {
    let normalised = upsampled.clone() / upsampled.sum_dim(1);
    let repeated = match rows {
        Some(rows) => normalised.select(0, index_tensor::<B>(rows, device)),
        None => normalised,
    };
    let term = repeated.mul_scalar(weight);
    match total {
        Some(sum) => sum + term,
        None => term,
    }
}

/// For each cell of the `height x width` grid, the row of the `small_height x small_width`
/// grid's cell that covers it (nearest repetition of the query axes).
fn query_cells(small_height: usize, small_width: usize, height: usize, width: usize) -> Vec<usize> {
    (0..height * width)
        .map(|cell| {
            let (row, column) = (cell / width, cell % width);
            (row * small_height / height) * small_width + column * small_width / width
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// The one-pass CPU term and Burn's composition agree bit for bit, with and without a
    /// running sum and a row repetition, so the aggregate does not depend on the path.
    #[test]
    fn one_pass_term_equals_the_composition_bit_for_bit() {
        type Cpu = burn::backend::NdArray<f32>;
        let device = Default::default();
        let values = |rows: usize, columns: usize, seed: u32| {
            let data: Vec<f32> = (0..rows * columns)
                .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) % 10_000 / 7)
                .map(|v| v as f32 / 1e4 + 1e-6)
                .collect();
            Tensor::<Cpu, 2>::from_data(TensorData::new(data, [rows, columns]), &device)
        };
        let rows = query_cells(4, 4, 16, 16);
        let bits = |tensor: Tensor<Cpu, 2>| -> Vec<u32> {
            let values = tensor.into_data().to_vec::<f32>().unwrap();
            values.iter().map(|v| v.to_bits()).collect()
        };
        for (total, x, rows, weight) in [
            (None, values(256, 256, 1), None, 64.0 / 120.0),
            (
                Some(values(256, 256, 2)),
                values(16, 256, 3),
                Some(&rows[..]),
                0.3,
            ),
            (
                Some(values(256, 256, 4)),
                values(256, 256, 5),
                None,
                8.0 / 120.0,
            ),
        ] {
            let fused = add_term(total.clone(), x.clone(), rows, weight, &device);
            let composed = add_term_composed(total, x, rows, weight, &device);
            assert_eq!(bits(fused), bits(composed));
        }
    }
}
