//! Attention aggregation (docs/method.md §4): every resolution brought to the largest grid and
//! summed with weights proportional to its side.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::attention::AttentionMaps;
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
        let upsampled = resize_bilinear_half_pixel(
            map.probs.clone().reshape([queries, map.height, map.width]),
            height,
            width,
        )
        .reshape([queries, height * width]);
        // Per-row sums of 4096 values keep f32 precision; a global sum would not.
        let normalised = upsampled.clone() / upsampled.sum_dim(1);
        let repeated = if map.height == height && map.width == width {
            normalised
        } else {
            normalised.select(
                0,
                query_cell_index::<B>(map.height, map.width, height, width, &device),
            )
        };
        let term = repeated.mul_scalar(weight);
        total = Some(match total {
            Some(sum) => sum + term,
            None => term,
        });
    }
    Aggregate {
        maps: total.expect("AttentionMaps holds at least one map"),
        height,
        width,
    }
}

/// For each cell of the `height x width` grid, the row of the `small_height x small_width`
/// grid's cell that covers it (nearest repetition of the query axes).
fn query_cell_index<B: Backend>(
    small_height: usize,
    small_width: usize,
    height: usize,
    width: usize,
    device: &B::Device,
) -> Tensor<B, 1, Int> {
    let index: Vec<i64> = (0..height * width)
        .map(|cell| {
            let (row, column) = (cell / width, cell % width);
            ((row * small_height / height) * small_width + column * small_width / width) as i64
        })
        .collect();
    let length = index.len();
    Tensor::from_data(
        TensorData::new(index, [length]).convert::<B::IntElem>(),
        device,
    )
}
