//! Naming segments from a vocabulary (issue 20): per-entry cross-attention maps combined over
//! the UNet's layers and resolutions, then scored over each segment's pixels.
//!
//! The per-layer maps (an entry's attention at every query cell of one `attn2` layer) come from
//! the model crate; from there on everything is here: [`entry_maps`] (mean per resolution,
//! [`combine_resolutions`], [`normalise_entry_maps`]), [`segment_entry_scores`] and
//! [`name_segments`].

use burn::tensor::{backend::Backend, DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::resample::{interpolation_taps, resize_bilinear_half_pixel};
use crate::{Error, Segmentation};

/// One vocabulary entry's map per cell of the largest attention grid, for every entry.
#[derive(Debug, Clone)]
pub struct EntryMaps<B: Backend> {
    /// `[entries, height * width]`, row-major over the grid, f32.
    pub maps: Tensor<B, 2>,
    /// Grid rows.
    pub height: usize,
    /// Grid columns.
    pub width: usize,
}

/// One layer's entry maps: `maps` is `[entries, height * width]`, each entry's attention (mean
/// over heads and over its token columns) at every query cell of the layer's grid.
#[derive(Debug, Clone)]
pub struct LayerEntryMaps<B: Backend> {
    /// `[entries, height * width]`.
    pub maps: Tensor<B, 2>,
    /// Rows of the layer's query grid.
    pub height: usize,
    /// Columns of the layer's query grid.
    pub width: usize,
}

/// A segment's vocabulary ranking: the best entries first, with their scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentNames {
    /// `(entry index, score)`, best first, at most `top_k` of them.
    pub ranked: Vec<(usize, f32)>,
}

impl SegmentNames {
    /// The best entry and its score.
    pub fn best(&self) -> Option<(usize, f32)> {
        self.ranked.first().copied()
    }
}

/// The entry maps of an image from its layers' maps: the mean over the layers of each grid
/// ([`mean_per_resolution`]), the grids combined on the largest one
/// ([`combine_resolutions`]), each entry's map L2-normalised ([`normalise_entry_maps`]).
pub fn entry_maps<B: Backend>(layers: &[LayerEntryMaps<B>]) -> Result<EntryMaps<B>, Error> {
    let means = mean_per_resolution(layers)?;
    Ok(normalise_entry_maps(combine_resolutions(&means)))
}

/// The mean of the layers sharing a grid, one per grid in order of first appearance (as the
/// self-attention maps are averaged per resolution, docs/method.md §3).
pub fn mean_per_resolution<B: Backend>(
    layers: &[LayerEntryMaps<B>],
) -> Result<Vec<LayerEntryMaps<B>>, Error> {
    let first = layers
        .first()
        .ok_or_else(|| Error::Maps("no cross-attention layer to name segments from".into()))?;
    let entries = first.maps.dims()[0];
    let mut sums: Vec<(LayerEntryMaps<B>, usize)> = Vec::new();
    for layer in layers {
        let cells = layer.height * layer.width;
        if layer.maps.dims() != [entries, cells] {
            return Err(Error::Shape {
                tensor: format!("entry maps {}x{}", layer.height, layer.width),
                expected: format!("[{entries}, {cells}]"),
                actual: layer.maps.dims().to_vec(),
            });
        }
        let maps = layer.maps.clone().cast(DType::F32);
        match sums
            .iter_mut()
            .find(|(sum, _)| (sum.height, sum.width) == (layer.height, layer.width))
        {
            Some((sum, count)) => {
                sum.maps = sum.maps.clone() + maps;
                *count += 1;
            }
            None => sums.push((
                LayerEntryMaps {
                    maps,
                    height: layer.height,
                    width: layer.width,
                },
                1,
            )),
        }
    }
    Ok(sums
        .into_iter()
        .map(|(sum, count)| LayerEntryMaps {
            maps: sum.maps.div_scalar(count as f64),
            ..sum
        })
        .collect())
}

/// Every grid's maps upsampled to the largest grid (half-pixel bilinear) and summed with
/// weights proportional to the grid's side, `[64, 32, 16, 8] / 120` for SD 1.x, as the
/// self-attention aggregation weighs them ([`crate::aggregation_weights`]).
///
/// `resolutions` must not be empty ([`mean_per_resolution`] never returns an empty list).
pub fn combine_resolutions<B: Backend>(resolutions: &[LayerEntryMaps<B>]) -> EntryMaps<B> {
    let largest = resolutions
        .iter()
        .max_by_key(|grid| grid.height * grid.width)
        .expect("at least one resolution");
    let (height, width) = (largest.height, largest.width);
    let sides: Vec<f64> = resolutions
        .iter()
        .map(|grid| ((grid.height * grid.width) as f64).sqrt())
        .collect();
    let total: f64 = sides.iter().sum();
    let mut sum: Option<Tensor<B, 2>> = None;
    for (grid, side) in resolutions.iter().zip(sides) {
        let entries = grid.maps.dims()[0];
        let upsampled = resize_bilinear_half_pixel(
            grid.maps
                .clone()
                .reshape([entries, grid.height, grid.width]),
            height,
            width,
        )
        .reshape([entries, height * width])
        .mul_scalar(side / total);
        sum = Some(match sum {
            Some(sum) => sum + upsampled,
            None => upsampled,
        });
    }
    EntryMaps {
        maps: sum.expect("at least one resolution"),
        height,
        width,
    }
}

/// Each entry's map divided by its L2 norm over the grid, as google/diffseg's `get_semantics`
/// normalises each token's map: without it the entry drawing the most attention overall
/// (typically a multi-token one) wins every segment.
pub fn normalise_entry_maps<B: Backend>(maps: EntryMaps<B>) -> EntryMaps<B> {
    let norms = maps
        .maps
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        // Softmax outputs are positive, so a zero norm only comes from underflow.
        .clamp_min(f32::MIN_POSITIVE);
    EntryMaps {
        maps: maps.maps / norms,
        ..maps
    }
}

/// Each segment's score for each entry, `[segments][entries]`: the mean over the segment's
/// pixels of the entry's map resampled (half-pixel bilinear) to the label map's size.
///
/// The resampled maps are never held whole: each pixel's value is mixed from its four grid
/// neighbours on the fly, so memory stays `segments × entries` at any image size.
pub fn segment_entry_scores<B: Backend>(
    maps: &EntryMaps<B>,
    segmentation: &Segmentation,
) -> Result<Vec<Vec<f32>>, Error> {
    let entries = maps.maps.dims()[0];
    let cells = maps.height * maps.width;
    if maps.maps.dims() != [entries, cells] {
        return Err(Error::Shape {
            tensor: "entry maps".into(),
            expected: format!("[entries, {cells}]"),
            actual: maps.maps.dims().to_vec(),
        });
    }
    // Cell-major, so that one cell's values for every entry are contiguous.
    let values: Vec<f32> = maps
        .maps
        .clone()
        .cast(DType::F32)
        .transpose()
        .into_data()
        .iter::<f32>()
        .collect();
    let (width, height) = (segmentation.width(), segmentation.height());
    let rows = interpolation_taps(maps.height, height);
    let columns = interpolation_taps(maps.width, width);
    let mut sums = vec![0f64; segmentation.segment_count() * entries];
    let mut pixel = vec![0f32; entries];
    for (y, row_taps) in rows.iter().enumerate() {
        for (x, column_taps) in columns.iter().enumerate() {
            pixel.fill(0.0);
            for &(row, row_weight) in row_taps {
                for &(column, column_weight) in column_taps {
                    let weight = row_weight * column_weight;
                    let cell = &values[(row * maps.width + column) * entries..][..entries];
                    for (value, source) in pixel.iter_mut().zip(cell) {
                        *value += weight * source;
                    }
                }
            }
            let label = segmentation.label_at(x, y) as usize;
            for (sum, value) in sums[label * entries..][..entries].iter_mut().zip(&pixel) {
                *sum += f64::from(*value);
            }
        }
    }
    Ok(segmentation
        .segments()
        .iter()
        .enumerate()
        .map(|(label, segment)| {
            sums[label * entries..][..entries]
                .iter()
                .map(|sum| (sum / segment.area as f64) as f32)
                .collect()
        })
        .collect())
}

/// Each segment's `top_k` entries by score, best first (ties: the earlier entry first).
pub fn name_segments(scores: &[Vec<f32>], top_k: usize) -> Vec<SegmentNames> {
    scores
        .iter()
        .map(|segment| {
            let mut ranked: Vec<(usize, f32)> = segment.iter().copied().enumerate().collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            ranked.truncate(top_k);
            SegmentNames { ranked }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    type B = NdArray<f32>;

    fn tensor(values: Vec<f32>, shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    #[test]
    fn one_entry_names_every_segment_with_it() {
        let layers = [
            LayerEntryMaps {
                maps: tensor((0..16).map(|i| i as f32 + 1.0).collect(), [1, 16]),
                height: 4,
                width: 4,
            },
            LayerEntryMaps {
                maps: tensor(vec![0.1, 0.7, 0.1, 0.1], [1, 4]),
                height: 2,
                width: 2,
            },
        ];
        let maps = entry_maps(&layers).unwrap();
        let labels = (0..30u32).map(|i| i % 5).collect();
        let segmentation = Segmentation::from_labels(labels, 6, 5).unwrap();
        let names = name_segments(&segment_entry_scores(&maps, &segmentation).unwrap(), 3);
        assert_eq!(names.len(), 5);
        assert!(names
            .iter()
            .all(|name| name.ranked.len() == 1 && name.best().unwrap().0 == 0));
    }

    #[test]
    fn maps_are_unit_norm_and_weighted_by_side() {
        // Two constant grids: 4x4 of 1 (weight 4/6) and 2x2 of 4 (weight 2/6) give
        // 4/6 + 8/6 = 2 everywhere before normalisation, 1/4 after (16 cells).
        let layers = [
            LayerEntryMaps {
                maps: tensor(vec![1.0; 16], [1, 16]),
                height: 4,
                width: 4,
            },
            LayerEntryMaps {
                maps: tensor(vec![4.0; 4], [1, 4]),
                height: 2,
                width: 2,
            },
        ];
        let combined = combine_resolutions(&mean_per_resolution(&layers).unwrap());
        let values: Vec<f32> = combined.maps.clone().into_data().iter::<f32>().collect();
        assert!(values.iter().all(|v| (v - 2.0).abs() < 1e-6), "{values:?}");
        let normalised = normalise_entry_maps(combined);
        let values: Vec<f32> = normalised.maps.into_data().iter::<f32>().collect();
        assert!(values.iter().all(|v| (v - 0.25).abs() < 1e-6), "{values:?}");
    }

    #[test]
    fn layers_with_other_entry_counts_are_an_error() {
        let layers = [
            LayerEntryMaps {
                maps: tensor(vec![1.0; 8], [2, 4]),
                height: 2,
                width: 2,
            },
            LayerEntryMaps {
                maps: tensor(vec![1.0; 4], [1, 4]),
                height: 2,
                width: 2,
            },
        ];
        assert!(matches!(entry_maps(&layers), Err(Error::Shape { .. })));
        assert!(matches!(entry_maps::<B>(&[]), Err(Error::Maps(_))));
    }

    #[test]
    fn ranking_keeps_top_k_best_first() {
        let names = name_segments(&[vec![0.1, 0.5, 0.3, 0.5]], 3);
        assert_eq!(names[0].ranked, vec![(1, 0.5), (3, 0.5), (2, 0.3)]);
    }
}
