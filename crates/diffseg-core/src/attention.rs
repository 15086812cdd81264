//! Per-resolution self-attention maps: collected layer by layer, averaged, then aggregated.

use burn::tensor::{backend::Backend, Tensor};

use crate::Error;

/// One averaged self-attention map `[h*w, h*w]` (rows: query cells, columns: key cells,
/// both row-major over the `height x width` latent grid).
#[derive(Debug, Clone)]
pub struct AttentionMap<B: Backend> {
    /// The map, every row a distribution over the key cells.
    pub probs: Tensor<B, 2>,
    /// Latent grid rows.
    pub height: usize,
    /// Latent grid columns.
    pub width: usize,
}

/// The averaged self-attention of each latent resolution (e.g. 64, 32, 16 and 8 for SD 1.x
/// at 512 px), largest first. Grids may be rectangular; every grid must divide the largest.
#[derive(Debug, Clone)]
pub struct AttentionMaps<B: Backend> {
    maps: Vec<AttentionMap<B>>,
}

impl<B: Backend> AttentionMaps<B> {
    /// Builds the set from `(probs [h*w, h*w], height, width)` triples in any order.
    ///
    /// Checks shapes only; see [`AttentionMaps::check_distributions`] for the values.
    pub fn from_maps(maps: Vec<(Tensor<B, 2>, usize, usize)>) -> Result<Self, Error> {
        let mut checked = Vec::with_capacity(maps.len());
        for (probs, height, width) in maps {
            let cells = height * width;
            if cells == 0 || probs.dims() != [cells, cells] {
                return Err(Error::Shape {
                    tensor: format!("attention {height}x{width}"),
                    expected: format!("[{cells}, {cells}]"),
                    actual: probs.dims().to_vec(),
                });
            }
            if checked
                .iter()
                .any(|map: &AttentionMap<B>| map.height == height && map.width == width)
            {
                return Err(Error::Maps(format!(
                    "two maps for the {height}x{width} grid"
                )));
            }
            checked.push(AttentionMap {
                probs,
                height,
                width,
            });
        }
        checked.sort_by_key(|map| std::cmp::Reverse(map.height * map.width));
        let largest = checked
            .first()
            .ok_or_else(|| Error::Maps("no attention maps".into()))?;
        let (top_height, top_width) = (largest.height, largest.width);
        for map in &checked {
            if top_height % map.height != 0 || top_width % map.width != 0 {
                return Err(Error::Maps(format!(
                    "the {}x{} grid does not divide the largest grid {top_height}x{top_width}",
                    map.height, map.width
                )));
            }
        }
        Ok(Self { maps: checked })
    }

    /// The maps, largest grid first.
    pub fn iter(&self) -> impl Iterator<Item = &AttentionMap<B>> {
        self.maps.iter()
    }

    /// `(height, width)` of the largest grid: the size of the aggregate.
    pub fn largest_grid(&self) -> (usize, usize) {
        (self.maps[0].height, self.maps[0].width)
    }

    /// The device the maps live on.
    pub fn device(&self) -> B::Device {
        self.maps[0].probs.device()
    }

    /// Checks that every row is a distribution: finite, non-negative, summing to 1 within
    /// `tolerance` (fp16 attention summed over 4096 keys is off by ~1e-3).
    pub fn check_distributions(&self, tolerance: f32) -> Result<(), Error> {
        for map in &self.maps {
            let tensor = format!("attention {}x{}", map.height, map.width);
            let sums = map.probs.clone().sum_dim(1).into_data();
            let minima = map.probs.clone().min_dim(1).into_data();
            for (row, (sum, min)) in sums.iter::<f32>().zip(minima.iter::<f32>()).enumerate() {
                let problem = if !sum.is_finite() || !min.is_finite() {
                    Some("it holds NaN or infinite values".to_string())
                } else if min < 0.0 {
                    Some(format!("it holds a negative value {min}"))
                } else if (sum - 1.0).abs() > tolerance {
                    Some(format!("it sums to {sum}"))
                } else {
                    None
                };
                if let Some(problem) = problem {
                    return Err(Error::NotDistribution {
                        tensor,
                        row,
                        problem,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Running mean of self-attention per resolution, so a model adds one layer at a time and
/// never holds all 16 layers' `[heads, r², r²]` probabilities.
#[derive(Debug)]
pub struct AttentionAccumulator<B: Backend> {
    device: B::Device,
    /// Per grid: sum of the layer means and the number of layers added.
    sums: Vec<(Tensor<B, 2>, usize, usize, usize)>,
}

impl<B: Backend> AttentionAccumulator<B> {
    /// An empty accumulator whose sums live on `device`.
    pub fn new(device: &B::Device) -> Self {
        Self {
            device: device.clone(),
            sums: Vec::new(),
        }
    }

    /// Adds one layer's per-head probabilities `[heads, h*w, h*w]`; heads are averaged.
    pub fn add_heads(
        &mut self,
        probs: Tensor<B, 3>,
        height: usize,
        width: usize,
    ) -> Result<(), Error> {
        let [heads, queries, keys] = probs.dims();
        let cells = height * width;
        if heads == 0 || queries != cells || keys != cells {
            return Err(Error::Shape {
                tensor: format!("attention layer {height}x{width}"),
                expected: format!("[heads, {cells}, {cells}]"),
                actual: vec![heads, queries, keys],
            });
        }
        let mean = probs.mean_dim(0).reshape([cells, cells]);
        self.add_mean(mean, height, width)
    }

    /// Adds one layer's probabilities `[h*w, h*w]`, already averaged over heads.
    pub fn add_mean(
        &mut self,
        probs: Tensor<B, 2>,
        height: usize,
        width: usize,
    ) -> Result<(), Error> {
        let cells = height * width;
        if cells == 0 || probs.dims() != [cells, cells] {
            return Err(Error::Shape {
                tensor: format!("attention layer {height}x{width}"),
                expected: format!("[{cells}, {cells}]"),
                actual: probs.dims().to_vec(),
            });
        }
        let probs = probs.to_device(&self.device);
        match self
            .sums
            .iter_mut()
            .find(|(_, h, w, _)| *h == height && *w == width)
        {
            Some((sum, _, _, layers)) => {
                *sum = sum.clone() + probs;
                *layers += 1;
            }
            None => self.sums.push((probs, height, width, 1)),
        }
        Ok(())
    }

    /// The mean over the layers added for each resolution.
    pub fn finish(self) -> Result<AttentionMaps<B>, Error> {
        AttentionMaps::from_maps(
            self.sums
                .into_iter()
                .map(|(sum, height, width, layers)| (sum.div_scalar(layers as f32), height, width))
                .collect(),
        )
    }
}
