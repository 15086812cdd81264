//! DiffCut's model half (docs/method.md §9): one self-attention layer's output
//! for an image, and where the model's input lies in the image. What
//! `diffseg features` writes and `diffseg cut` reads.

use std::path::Path;

use diffseg_core::{cut_features, CutOptions, FeatureMap, PlanarImage, MAX_CUT_PIXELS};
use diffseg_sd::{limits::MAX_INPUT_SIZE, TRAIN_TIMESTEPS};
use image::DynamicImage;
use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};
use rand_distr::{Distribution, StandardNormal};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::attention::{
    check_placement, map_safetensors, metadata_placement, writer_metadata, HEADER_SIZE_BYTES,
};
use crate::input::{prepare_image, Fit, ImageLimits, Placement};
use crate::output::write_atomically;
use crate::pipeline::square_to_image;
use crate::segmentation::Segmentation;
use crate::Error;

/// The side of the model input DiffCut uses with SD 1.4 (`img_size`), in pixels.
pub const DIFFCUT_INPUT_SIZE: usize = 1024;
/// The timestep DiffCut noises the latent to and gives the UNet (`step`).
pub const DIFFCUT_TIMESTEP: usize = 50;
/// Our seed for DiffCut's noise ([`seeded_noise`]). DiffCut seeds PyTorch's
/// generator with 42; ours is another generator, so its values differ.
pub const DEFAULT_FEATURE_SEED: u64 = 42;
/// The tensor a features file holds, `[h, w, c]`.
pub const FEATURES_TENSOR: &str = "features";

/// SD 1.x's feature grid is the input side / 32 (VAE / 8, two downsamplers):
/// every input size [`FeatureOptions`] accepts gives a map the cut accepts.
const _: () = assert!((MAX_INPUT_SIZE / 32) * (MAX_INPUT_SIZE / 32) <= MAX_CUT_PIXELS);

/// How DiffCut's features are made: the model input's side, the timestep of
/// the noise and of the UNet pass, and the noise's seed. Built validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureOptions {
    input_size: usize,
    timestep: usize,
    seed: u64,
}

impl Default for FeatureOptions {
    /// DiffCut's SD 1.4 setting: 1024-pixel input, t = 50, our seed.
    fn default() -> Self {
        Self {
            input_size: DIFFCUT_INPUT_SIZE,
            timestep: DIFFCUT_TIMESTEP,
            seed: DEFAULT_FEATURE_SEED,
        }
    }
}

impl FeatureOptions {
    /// Checks that `input_size` is a multiple of 8 (the VAE's downscaling) from
    /// 8 to [`MAX_INPUT_SIZE`] (2048: a 64×64 feature map on SD 1.x, the cut's
    /// [`MAX_CUT_PIXELS`]), and that `timestep` is within the training schedule.
    pub fn new(input_size: usize, timestep: usize, seed: u64) -> Result<Self, Error> {
        if input_size == 0 || input_size % 8 != 0 || input_size > MAX_INPUT_SIZE {
            return Err(Error::FeatureOptions(format!(
                "input size {input_size}: must be a multiple of 8 from 8 to {MAX_INPUT_SIZE}"
            )));
        }
        if timestep >= TRAIN_TIMESTEPS {
            return Err(Error::FeatureOptions(format!(
                "timestep {timestep}: must be below {TRAIN_TIMESTEPS}"
            )));
        }
        Ok(Self {
            input_size,
            timestep,
            seed,
        })
    }

    /// The side of the model's square input in pixels.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// The timestep of the noise and of the UNet pass.
    pub fn timestep(&self) -> usize {
        self.timestep
    }

    /// The seed of the noise.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// docs/method.md §9: DiffCut's noise, `count` standard normal values from
/// ChaCha8 seeded with `seed` (portable and stable across platforms and
/// versions of rand_chacha 0.9).
pub(crate) fn seeded_noise(seed: u64, count: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect()
}

/// One self-attention layer's output for an image (DiffCut's features), and
/// where the model's input lies in the image.
///
/// Cutting it gives what [`crate::Pipeline::segment_diffcut`] gives, without
/// the model:
///
/// ```no_run
/// use diffseg::{CutOptions, Features};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let features = Features::load_safetensors("photo.features.safetensors")?;
/// let options = CutOptions::new(0.4, 10.0, 128, false, false)?;
/// let segmentation = features.cut(&options, None)?;
/// println!("{} segments", segmentation.segment_count());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// `[h, w, c]`: 32×32×1280 for SD 1.x at a 1024-pixel input.
    pub map: FeatureMap,
    /// Where the model's square input lies in the source image; `None` when
    /// unknown (a file from elsewhere): then cuts label the mask-size square.
    pub placement: Option<Placement>,
}

impl Features {
    /// DiffCut's cut (docs/method.md §9) at the options' mask size, mapped onto
    /// the image's own pixels when the placement is known.
    ///
    /// `image` is the one the features came from; only PAMR reads it (and
    /// needs it): its model-input square, resized to the mask size, when the
    /// placement is known, else the whole image.
    pub fn cut(
        &self,
        options: &CutOptions,
        image: Option<&DynamicImage>,
    ) -> Result<Segmentation, Error> {
        if let Some(placement) = &self.placement {
            check_placement(placement).map_err(|reason| {
                diffseg_core::Error::Size(format!("features placement: {reason}"))
            })?;
        }
        let planar = match image.filter(|_| options.pamr()) {
            Some(image) => Some(self.pamr_image(image, options.mask_size())?),
            None => None,
        };
        let planar = planar
            .as_ref()
            .map(|(values, height, width)| PlanarImage::new(values, 3, *height, *width))
            .transpose()?;
        let square = cut_features(&self.map, options, planar.as_ref())?;
        Ok(match &self.placement {
            Some(placement) => square_to_image(&square, placement)?.into(),
            None => square.into(),
        })
    }

    /// The image PAMR refines against, planar RGB in [0, 1] (as DiffCut reads
    /// it) with its height and width.
    fn pamr_image(
        &self,
        image: &DynamicImage,
        mask_size: usize,
    ) -> Result<(Vec<f32>, usize, usize), Error> {
        match &self.placement {
            Some(placement) => {
                if (placement.image_width, placement.image_height)
                    != (image.width(), image.height())
                {
                    return Err(diffseg_core::Error::Size(format!(
                        "the image for PAMR is {}×{}, the features' placement says {}×{}",
                        image.width(),
                        image.height(),
                        placement.image_width,
                        placement.image_height
                    ))
                    .into());
                }
                let fit = if Placement::new(image.width(), image.height(), Fit::Pad) == *placement {
                    Fit::Pad
                } else {
                    Fit::CenterCrop
                };
                let input = prepare_image(image, mask_size, fit)?;
                let values = input
                    .pixels
                    .iter()
                    .map(|value| (value + 1.0) / 2.0)
                    .collect();
                Ok((values, mask_size, mask_size))
            }
            None => {
                let rgb = image.to_rgb8();
                let (width, height) = (rgb.width() as usize, rgb.height() as usize);
                let mut planar = vec![0f32; 3 * height * width];
                for (pixel, values) in rgb.pixels().enumerate() {
                    for channel in 0..3 {
                        planar[channel * height * width + pixel] = values[channel] as f32 / 255.0;
                    }
                }
                Ok((planar, height, width))
            }
        }
    }

    /// Writes the map as the f32 tensor `features` `[h, w, c]`, and the
    /// placement as metadata (the keys [`crate::SelfAttention`] files use),
    /// durably and atomically.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let write_error = |reason: String| Error::Write {
            path: path.to_path_buf(),
            reason,
        };
        let bytes: Vec<u8> = self
            .map
            .values()
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        let shape = vec![self.map.height(), self.map.width(), self.map.channels()];
        let view = TensorView::new(Dtype::F32, shape, &bytes)
            .map_err(|error| write_error(error.to_string()))?;
        let bytes = safetensors::serialize(
            [(FEATURES_TENSOR, view)],
            Some(writer_metadata(self.placement)),
        )
        .map_err(|error| write_error(error.to_string()))?;
        write_atomically(path, &bytes)
    }

    /// Reads the tensor `features` `[h, w, c]` (f32, f16 or bf16) of a
    /// safetensors file, and the placement when its metadata holds one (with
    /// the image held to the default [`ImageLimits`]). At most
    /// [`MAX_CUT_PIXELS`] pixels, every value finite.
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::load_safetensors_with_limits(path, &ImageLimits::default())
    }

    /// [`Features::load_safetensors`] with the placement's image held to `limits`.
    pub fn load_safetensors_with_limits(
        path: impl AsRef<Path>,
        limits: &ImageLimits,
    ) -> Result<Self, Error> {
        let path = path.as_ref();
        let problem = |reason: String| Error::Features {
            path: path.to_path_buf(),
            reason,
        };
        let (bytes, header_len, header) = map_safetensors(path).map_err(problem)?;
        let info = header
            .info(FEATURES_TENSOR)
            .ok_or_else(|| problem(format!("no tensor `{FEATURES_TENSOR}` [h, w, c]")))?;
        let [height, width, channels] = info.shape[..] else {
            return Err(problem(format!(
                "`{FEATURES_TENSOR}` has shape {:?}, expected [h, w, c]",
                info.shape
            )));
        };
        // Bounded before anything is allocated for it.
        if height.saturating_mul(width) > MAX_CUT_PIXELS {
            return Err(problem(format!(
                "`{FEATURES_TENSOR}` is {height}×{width}: at most {MAX_CUT_PIXELS} pixels"
            )));
        }
        // read_metadata validated the offsets against the buffer.
        let (start, end) = info.data_offsets;
        let data = &bytes[HEADER_SIZE_BYTES + header_len..][start..end];
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(problem(format!(
                    "`{FEATURES_TENSOR}` is {other:?}, expected f32, f16 or bf16"
                )))
            }
        };
        let map = FeatureMap::new(values, height, width, channels)
            .map_err(|error| problem(format!("`{FEATURES_TENSOR}`: {error}")))?;
        let placement = metadata_placement(header.metadata(), limits).map_err(problem)?;
        Ok(Self { map, placement })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_refuse_absurd_values() {
        for (size, timestep) in [
            (0, 50),
            (12, 50),
            (MAX_INPUT_SIZE + 8, 50),
            (usize::MAX, 50),
            (1024, 1000),
        ] {
            assert!(
                matches!(
                    FeatureOptions::new(size, timestep, 0),
                    Err(Error::FeatureOptions(_))
                ),
                "size {size} timestep {timestep}"
            );
        }
        assert_eq!(
            FeatureOptions::new(1024, 50, 42).unwrap(),
            FeatureOptions::default()
        );
    }

    #[test]
    fn noise_is_fixed_by_its_seed() {
        let noise = seeded_noise(7, 4096);
        assert_eq!(noise, seeded_noise(7, 4096));
        assert_ne!(noise, seeded_noise(8, 4096));
        // Standard normal: the mean of 4096 draws is within 4 standard errors (1/64) of 0.
        let mean = noise.iter().sum::<f32>() / 4096.0;
        assert!(mean.abs() < 4.0 / 64.0, "mean {mean}");
    }

    #[test]
    fn files_round_trip_with_their_placement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.safetensors");
        let features = Features {
            map: FeatureMap::new((0..24).map(|v| v as f32).collect(), 2, 3, 4).unwrap(),
            placement: Some(Placement::new(40, 30, Fit::Pad)),
        };
        features.save_safetensors(&path).unwrap();
        assert_eq!(Features::load_safetensors(&path).unwrap(), features);
    }
}
