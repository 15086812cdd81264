//! The pipeline on one backend: image tensor → VAE latent → one UNet pass with
//! attention capture → per-resolution self-attention → segments.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::tensor::{backend::Backend, Tensor, TensorData};
use diffseg_core::{
    cut_features, label_map, merge_attention, AttentionAccumulator, AttentionMaps, CutOptions,
    FeatureMap, MergeOptions, PlanarImage, Proposals,
};
use diffseg_sd::{
    add_noise, ensure_finite, prompt_ids_tensor, AttentionLayer, AttentionSink, ClipTokenizer,
    CrossAttentionQueries, OpenedWeights, StableDiffusion, StableDiffusionConfig, WeightsSource,
    EMPTY_PROMPT_IDS, MAX_TOKENS,
};

use image::DynamicImage;

use crate::attention::{SelfAttention, SelfAttentionMap};
use crate::features::{seeded_noise, FeatureOptions, Features};
use crate::input::{prepare_image, Fit, ModelInput, Placement};
use crate::naming::{batch_entry_maps, prompt_chunks, square_names, EncodedVocabulary};
use crate::segmentation::Segmentation;
use crate::timing::{timed, StageTimes};
use crate::vocabulary::Vocabulary;
use crate::Error;

/// docs/method.md §2: the diffusion timestep of the single UNet pass.
pub const TIMESTEP: f32 = 300.0;

/// How far an averaged attention row may sum away from 1 before the model's
/// output is called broken: f16 softmax rows summed over 4096 keys drift by
/// about 1e-3, NaN or garbage is far beyond this. Saved attention read back
/// ([`SelfAttention::load_safetensors`]) is held to the same bound.
pub(crate) const ROW_SUM_TOLERANCE: f32 = 1e-2;

/// The side of SD 1.x's square input in pixels.
pub(crate) const SD1_INPUT_SIZE: usize = 512;

fn load_error(path: &Path, error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Load {
        path: path.to_path_buf(),
        error: Box::new(error),
    }
}

/// The empty prompt's token ids (method section 2): from the model's own
/// tokenizer where its diffusers folder has a `tokenizer/` (SD 2.x pads with
/// another token than SD 1.x), else SD 1.x's: plain segmentation needs no
/// tokenizer. A `tokenizer/` that cannot be read is an error, not ignored.
fn empty_prompt(weights: &Path) -> Result<[i64; MAX_TOKENS], Error> {
    let folder = weights.join(crate::weights::TOKENIZER_DIR);
    if !(weights.is_dir() && folder.is_dir()) {
        return Ok(EMPTY_PROMPT_IDS);
    }
    ClipTokenizer::from_folder(&folder)
        .map(|tokenizer| tokenizer.empty_prompt_ids())
        .map_err(|error| load_error(weights, error))
}

/// DiffSeg on a Burn backend and device of the caller's choosing: the model
/// loaded on `B`, with the empty-prompt text embedding computed once.
///
/// This is the generic layer under [`crate::Segmenter`] (which picks the
/// backend at run time) for programs that already use Burn. A clone is cheap
/// and shares the weights: give each thread its own (`Pipeline` is `Send`;
/// Burn modules are not `Sync`).
///
/// ```no_run
/// use burn::backend::{ndarray::NdArrayDevice, NdArray};
/// use diffseg::{weights::WeightsSource, Fit, MergeOptions, Pipeline};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let source = WeightsSource::detect("/models/stable-diffusion-v1-5")?;
/// let pipeline = Pipeline::<NdArray<f32>>::load(&source, NdArrayDevice::Cpu)?;
/// let image = diffseg::open_image("photo.jpg")?;
/// let segmentation = pipeline.segment(&image, Fit::Pad, &MergeOptions::default())?;
/// println!("{} segments", segmentation.segment_count());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pipeline<B: Backend> {
    model: StableDiffusion<B>,
    /// Where the weights were loaded from, for errors about them.
    weights: PathBuf,
    /// `[1, 77, cross_attention_dim]`: CLIP's output for the empty prompt.
    empty_prompt: Tensor<B, 3>,
    device: B::Device,
    input_size: usize,
    /// The vocabulary segments are named from, encoded once ([`Self::with_vocabulary`]);
    /// `None`: no naming, and no queries kept during the pass.
    vocabulary: Option<EncodedVocabulary<B>>,
    /// Shared by the clones: totals over every copy of the model.
    times: Arc<Mutex<StageTimes>>,
}

impl<B: Backend> std::fmt::Debug for Pipeline<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("backend", &B::name(&self.device))
            .field("device", &self.device)
            .field("input_size", &self.input_size)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Pipeline<B> {
    /// Loads the three networks from `source` onto `device`.
    pub fn load(source: &WeightsSource, device: B::Device) -> Result<Self, Error> {
        let config = source
            .config()
            .map_err(|error| load_error(source.path(), error))?;
        Self::load_networks(source.path(), &config, device, |device| {
            StableDiffusion::<B>::load(source, Some(&config), device)
        })
    }

    /// Loads the three networks onto `device` from weights opened before
    /// (by [`crate::weights::ResolvedWeights`]): nothing is looked up,
    /// opened or read again.
    pub fn load_opened(weights: &OpenedWeights, device: B::Device) -> Result<Self, Error> {
        Self::load_networks(
            weights.source().path(),
            weights.config(),
            device,
            |device| StableDiffusion::<B>::load_opened(weights, device),
        )
    }

    /// The pipeline around the networks `load` makes (timed) from the
    /// weights at `path`, of the architectures `config`.
    fn load_networks(
        path: &Path,
        config: &StableDiffusionConfig,
        device: B::Device,
        load: impl FnOnce(&B::Device) -> Result<StableDiffusion<B>, diffseg_sd::Error>,
    ) -> Result<Self, Error> {
        let input_size = config.input_size();
        let mut times = StageTimes::default();
        let model = timed::<B, _>(&device, &mut times.load, || load(&device))
            .map_err(|error| load_error(path, error))?;
        let prompt = empty_prompt(path)?;
        let empty_prompt = timed::<B, _>(&device, &mut times.text_encoder, || {
            model
                .text_encoder
                .forward(prompt_ids_tensor::<B>(&[prompt], &device))
        });
        ensure_finite(&empty_prompt, "the empty-prompt text embedding")
            .map_err(|error| Error::Model(error.to_string()))?;
        Ok(Self {
            model,
            weights: path.to_path_buf(),
            empty_prompt,
            device,
            input_size,
            vocabulary: None,
            times: Arc::new(Mutex::new(times)),
        })
    }

    /// The same pipeline naming every DiffSeg segment from `vocabulary` (docs/method.md §10),
    /// keeping each segment's `top_k` best entries: the entries are tokenized with
    /// `tokenizer` (the model's own CLIP tokenizer) and encoded here, once, by the model's
    /// text encoder (timed as its stage); every later pass keeps its cross-attention queries
    /// to score them.
    pub fn with_vocabulary(
        mut self,
        vocabulary: &Vocabulary,
        tokenizer: &ClipTokenizer,
        top_k: usize,
    ) -> Result<Self, Error> {
        let chunks = prompt_chunks(vocabulary, tokenizer)?;
        let mut spent = std::time::Duration::ZERO;
        let encoded = timed::<B, _>(&self.device, &mut spent, || {
            EncodedVocabulary::new(
                &self.model,
                vocabulary.entries(),
                &chunks,
                top_k,
                &self.device,
            )
        })?;
        self.times().text_encoder += spent;
        self.vocabulary = Some(encoded);
        Ok(self)
    }

    /// The side of the model's square input in pixels (512 for SD 1.x).
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// The device the model runs on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Segments one image; the result has the image's own size.
    pub fn segment(
        &self,
        image: &DynamicImage,
        fit: Fit,
        options: &MergeOptions,
    ) -> Result<Segmentation, Error> {
        Ok(self
            .segment_batch(std::slice::from_ref(image), fit, options)?
            .remove(0))
    }

    /// Segments images as one batch on the device; each result has its
    /// image's own size.
    pub fn segment_batch(
        &self,
        images: &[DynamicImage],
        fit: Fit,
        options: &MergeOptions,
    ) -> Result<Vec<Segmentation>, Error> {
        self.segment_images(images, fit, options, Target::Image)
    }

    /// Segments images on the model's square input grid (e.g. 512×512) of
    /// the fitted images, without mapping back (with [`Fit::CenterCrop`]: the
    /// paper's evaluation protocol).
    pub fn segment_model_input_batch(
        &self,
        images: &[DynamicImage],
        fit: Fit,
        options: &MergeOptions,
    ) -> Result<Vec<Segmentation>, Error> {
        self.segment_images(images, fit, options, Target::ModelInput)
    }

    /// The image's self-attention averaged over heads and layers per
    /// resolution, before any merging.
    pub fn attention(&self, image: &DynamicImage, fit: Fit) -> Result<SelfAttention, Error> {
        let input = prepare_image(image, self.input_size, fit)?;
        self.attention_of(&input)
    }

    /// DiffCut's features of one image (docs/method.md §9): the image fitted
    /// and resized to `options.input_size()`, its VAE latent (posterior mean ×
    /// scaling) noised to `options.timestep()` with the seeded noise, and the
    /// output of the self-attention DiffCut hooks, from one empty-prompt UNet
    /// pass that stops there.
    pub fn features(
        &self,
        image: &DynamicImage,
        fit: Fit,
        options: &FeatureOptions,
    ) -> Result<Features, Error> {
        let start = std::time::Instant::now();
        let input = prepare_image(image, options.input_size(), fit)?;
        self.times().prepare += start.elapsed();
        let map = self.diffcut_features(&input, options)?;
        Ok(Features {
            map,
            placement: Some(input.placement),
        })
    }

    /// Segments one image with DiffCut (docs/method.md §9): [`Self::features`]
    /// cut at the mask size, then mapped onto the image's own pixels as
    /// [`Self::segment`] maps its labels.
    pub fn segment_diffcut(
        &self,
        image: &DynamicImage,
        fit: Fit,
        feature_options: &FeatureOptions,
        cut_options: &CutOptions,
    ) -> Result<Segmentation, Error> {
        self.segment_diffcut_to(image, fit, feature_options, cut_options, Target::Image)
    }

    /// [`Self::segment_diffcut`] on `target`'s grid. On the model's input, the
    /// labels are the mask-size square itself and PAMR refines them against the
    /// model's input resized to the mask size, as `eval_diffcut.py` does.
    pub(crate) fn segment_diffcut_to(
        &self,
        image: &DynamicImage,
        fit: Fit,
        feature_options: &FeatureOptions,
        cut_options: &CutOptions,
        target: Target,
    ) -> Result<Segmentation, Error> {
        let start = std::time::Instant::now();
        let input = prepare_image(image, feature_options.input_size(), fit)?;
        self.times().prepare += start.elapsed();
        let map = self.diffcut_features(&input, feature_options)?;
        let start = std::time::Instant::now();
        let segmentation = match target {
            Target::Image => Features {
                map,
                placement: Some(input.placement),
            }
            .cut(cut_options, Some(image))?,
            Target::ModelInput => cut_model_input(&map, cut_options, &input)?,
        };
        let mut total = self.times();
        total.merge += start.elapsed();
        total.images += 1;
        Ok(segmentation)
    }

    /// Wall time per stage since the model was loaded (loading included),
    /// summed over every call on this pipeline and its clones.
    pub fn stage_times(&self) -> StageTimes {
        *self.times()
    }

    pub(crate) fn segment_images(
        &self,
        images: &[DynamicImage],
        fit: Fit,
        options: &MergeOptions,
        target: Target,
    ) -> Result<Vec<Segmentation>, Error> {
        options.validate()?;
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let start = std::time::Instant::now();
        let inputs = images
            .iter()
            .map(|image| prepare_image(image, self.input_size, fit))
            .collect::<Result<Vec<_>, Error>>()?;
        self.times().prepare += start.elapsed();
        self.segment_inputs(&inputs, options, target)
    }

    /// The running stage times (a poisoned lock only means a panic elsewhere
    /// mid-update: the totals are still usable).
    fn times(&self) -> std::sync::MutexGuard<'_, StageTimes> {
        self.times
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// docs/method.md §1–3 for a batch: the VAE latent (posterior mean × scaling), one
    /// UNet pass at t = 300 with the empty prompt, and per image the
    /// self-attention averaged over heads and layers per resolution.
    ///
    /// With `keep_queries`, also every cross-attention layer's queries for naming; else
    /// none are kept and the pass is exactly the plain one.
    fn attention_maps(
        &self,
        inputs: &[ModelInput],
        keep_queries: bool,
    ) -> Result<(Vec<AttentionMaps<B>>, Option<CrossAttentionQueries<B>>), Error> {
        // The parameters read the mapped weights files: a truncated one
        // would end the process mid-pass.
        self.model
            .check_weights_unchanged()
            .map_err(|error| load_error(&self.weights, error))?;
        let batch = inputs.len();
        let size = self.input_size;
        let mut pixels = Vec::with_capacity(batch * 3 * size * size);
        for input in inputs {
            if input.size != size {
                return Err(Error::InvalidInputSize(input.size));
            }
            pixels.extend_from_slice(&input.pixels);
        }
        let images = Tensor::<B, 4>::from_data(
            TensorData::new(pixels, [batch, 3, size, size]).convert::<B::FloatElem>(),
            &self.device,
        );
        let mut times = StageTimes::default();
        let latent = timed::<B, _>(&self.device, &mut times.vae, || {
            self.model.vae.encode_latent(images)
        });
        let context = self.empty_prompt.clone().repeat_dim(0, batch);
        let mut sink = BatchSink {
            accumulators: (0..batch)
                .map(|_| AttentionAccumulator::new(&self.device))
                .collect(),
            queries: keep_queries.then(CrossAttentionQueries::default),
            error: None,
        };
        timed::<B, _>(&self.device, &mut times.unet, || {
            self.model
                .unet
                .capture_attention(latent, TIMESTEP, context, &mut sink)
        });
        {
            let mut total = self.times();
            total.vae += times.vae;
            total.unet += times.unet;
        }
        if let Some(error) = sink.error {
            return Err(Error::Model(error.to_string()));
        }
        let maps = sink
            .accumulators
            .into_iter()
            .map(|accumulator| {
                let maps = accumulator
                    .finish()
                    .map_err(|error| Error::Model(error.to_string()))?;
                maps.check_distributions(ROW_SUM_TOLERANCE)
                    .map_err(|error| Error::Model(error.to_string()))?;
                Ok(maps)
            })
            .collect::<Result<_, Error>>()?;
        Ok((maps, sink.queries))
    }

    /// The model half of [`Self::features`] for a prepared input: latent,
    /// noise, and the hooked UNet pass, timed as the VAE and UNet stages.
    fn diffcut_features(
        &self,
        input: &ModelInput,
        options: &FeatureOptions,
    ) -> Result<FeatureMap, Error> {
        self.model
            .check_weights_unchanged()
            .map_err(|error| load_error(&self.weights, error))?;
        let size = input.size;
        let image = Tensor::<B, 4>::from_data(
            TensorData::new(input.pixels.clone(), [1, 3, size, size]).convert::<B::FloatElem>(),
            &self.device,
        );
        let mut times = StageTimes::default();
        let latent = timed::<B, _>(&self.device, &mut times.vae, || {
            self.model.vae.encode_latent(image)
        });
        let shape = latent.dims();
        let noise = Tensor::<B, 4>::from_data(
            TensorData::new(seeded_noise(options.seed(), shape.iter().product()), shape)
                .convert::<B::FloatElem>(),
            &self.device,
        );
        let timestep = options.timestep();
        let features = timed::<B, _>(&self.device, &mut times.unet, || {
            let noisy = add_noise(latent, noise, timestep)
                .ok_or_else(|| Error::FeatureOptions(format!("timestep {timestep}")))?;
            self.model
                .unet
                .diffcut_features(noisy, timestep as f32, self.empty_prompt.clone())
                .map_err(|error| Error::Model(error.to_string()))
        });
        {
            let mut total = self.times();
            total.vae += times.vae;
            total.unet += times.unet;
        }
        let features = features?;
        let [_, height, width, channels] = features.dims();
        let values = features
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|error| Error::Model(format!("features: {error:?}")))?;
        FeatureMap::new(values, height, width, channels)
            .map_err(|error| Error::Model(format!("the hooked self-attention: {error}")))
    }

    /// Segments a batch; each result covers its image at `Target`'s size and, with a
    /// vocabulary, names its segments.
    fn segment_inputs(
        &self,
        inputs: &[ModelInput],
        options: &MergeOptions,
        target: Target,
    ) -> Result<Vec<Segmentation>, Error> {
        let (maps, queries) = self.attention_maps(inputs, self.vocabulary.is_some())?;
        let start = std::time::Instant::now();
        let squares = maps
            .iter()
            .zip(inputs)
            .map(|(maps, input)| {
                let proposals = merge_attention(maps, options)?;
                let side = match target {
                    Target::ModelInput => self.input_size,
                    Target::Image => label_side(&input.placement),
                };
                Ok(label_map(
                    proposals.maps,
                    proposals.height,
                    proposals.width,
                    side,
                    side,
                )?)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let segmentations = squares
            .iter()
            .zip(inputs)
            .map(|(square, input)| match target {
                Target::ModelInput => Ok(Segmentation::from(square.clone())),
                Target::Image => Ok(square_to_image(square, &input.placement)?.into()),
            })
            .collect::<Result<Vec<_>, Error>>()?;
        {
            let mut total = self.times();
            total.merge += start.elapsed();
            total.images += inputs.len();
        }
        match (&self.vocabulary, queries) {
            (Some(vocabulary), Some(queries)) => self.name(
                vocabulary,
                &queries,
                &squares,
                inputs,
                target,
                segmentations,
            ),
            _ => Ok(segmentations),
        }
    }

    /// Names the segments of a batch (docs/method.md §10) from its kept queries: each image's
    /// entry maps scored over the segments of its label map on the model's input square
    /// (`squares`), whose maps lie there; an image's segment takes the names of the square's
    /// segment it was mapped from.
    fn name(
        &self,
        vocabulary: &EncodedVocabulary<B>,
        queries: &CrossAttentionQueries<B>,
        squares: &[diffseg_core::Segmentation],
        inputs: &[ModelInput],
        target: Target,
        segmentations: Vec<Segmentation>,
    ) -> Result<Vec<Segmentation>, Error> {
        let mut spent = std::time::Duration::ZERO;
        let named = timed::<B, _>(&self.device, &mut spent, || {
            let maps = batch_entry_maps(queries, vocabulary, inputs.len())?;
            maps.iter()
                .zip(squares)
                .zip(inputs)
                .zip(segmentations)
                .map(|(((maps, square), input), segmentation)| {
                    let by_square_label = square_names(maps, square, vocabulary)?;
                    let names = match target {
                        Target::ModelInput => by_square_label,
                        Target::Image => kept_square_labels(square, &input.placement)
                            .into_iter()
                            .map(|label| by_square_label[label as usize].clone())
                            .collect(),
                    };
                    segmentation.with_names(names)
                })
                .collect::<Result<Vec<_>, Error>>()
        });
        self.times().naming += spent;
        named
    }

    /// The per-resolution self-attention of one image, copied off the device.
    fn attention_of(&self, input: &ModelInput) -> Result<SelfAttention, Error> {
        let maps = self
            .attention_maps(std::slice::from_ref(input), false)?
            .0
            .remove(0);
        let maps = maps
            .iter()
            .map(|map| {
                let probs = map
                    .probs
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|error| {
                        Error::Model(format!("attention {}x{}: {error:?}", map.height, map.width))
                    })?;
                Ok(SelfAttentionMap {
                    height: map.height,
                    width: map.width,
                    probs,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(SelfAttention {
            maps,
            placement: Some(input.placement),
        })
    }
}

/// DiffCut's cut of `map` on its mask-size square, PAMR (when asked) against the
/// model's `input` in [0, 1] (DiffCut reads images as `x / 255`; `cut_features`
/// resizes it to the mask size).
fn cut_model_input(
    map: &FeatureMap,
    options: &CutOptions,
    input: &ModelInput,
) -> Result<Segmentation, Error> {
    let unit: Option<Vec<f32>> = options.pamr().then(|| {
        input
            .pixels
            .iter()
            .map(|value| (value + 1.0) / 2.0)
            .collect()
    });
    let image = unit
        .as_deref()
        .map(|values| PlanarImage::new(values, 3, input.size, input.size))
        .transpose()?;
    Ok(cut_features(map, options, image.as_ref())?.into())
}

/// Labels the model's `side`×`side` input square from the final proposals.
pub(crate) fn label_square<B: Backend>(
    proposals: Proposals<B>,
    side: usize,
) -> Result<Segmentation, Error> {
    Ok(label_map(
        proposals.maps,
        proposals.height,
        proposals.width,
        side,
        side,
    )?
    .into())
}

/// Labels the image the model's input came from: the fitted square at the
/// image's own scale (capped by [`MAX_LABEL_SIDE`]: 64×64 proposals hold no
/// detail finer than that), mapped onto the image's pixels.
pub(crate) fn label_image<B: Backend>(
    proposals: Proposals<B>,
    placement: &Placement,
) -> Result<Segmentation, Error> {
    let side = label_side(placement);
    let square = label_map(
        proposals.maps,
        proposals.height,
        proposals.width,
        side,
        side,
    )?;
    Ok(square_to_image(&square, placement)?.into())
}

/// The side of the square label map an image's labels are taken from
/// ([`label_image`]): the fitted square at the image's scale, at most [`MAX_LABEL_SIDE`].
fn label_side(placement: &Placement) -> usize {
    (placement.side as usize).min(MAX_LABEL_SIDE)
}

/// The largest square label map computed for [`Target::Image`]: 32 times the
/// 64×64 proposals. Bigger images take labels from it by nearest neighbour,
/// which keeps memory bounded for huge images.
const MAX_LABEL_SIDE: usize = 2048;

/// Which pixel grid a segmentation is returned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The input image's own pixels.
    Image,
    /// The model's square input (e.g. 512×512): the evaluation protocol's grid.
    ModelInput,
}

/// Maps a label map of the fitted square onto the image: with padding the
/// image is a window of the square; with a centre crop, pixels outside the
/// square take the label of the nearest square pixel. The square's label map
/// may be coarser than the image (see [`MAX_LABEL_SIDE`]): then each image
/// pixel takes the label under its centre.
pub(crate) fn square_to_image(
    square: &diffseg_core::Segmentation,
    placement: &Placement,
) -> Result<diffseg_core::Segmentation, diffseg_core::Error> {
    diffseg_core::Segmentation::from_labels(
        square_labels_of_pixels(square, placement),
        placement.image_width as usize,
        placement.image_height as usize,
    )
}

/// The square's labels that [`square_to_image`] keeps, in increasing order: image label `i`
/// is the square's label `kept[i]` (renumbering keeps the order).
fn kept_square_labels(square: &diffseg_core::Segmentation, placement: &Placement) -> Vec<u32> {
    let mut kept = square_labels_of_pixels(square, placement);
    kept.sort_unstable();
    kept.dedup();
    kept
}

/// Each image pixel's label in the square, before renumbering ([`square_to_image`]).
fn square_labels_of_pixels(square: &diffseg_core::Segmentation, placement: &Placement) -> Vec<u32> {
    let labelled = square.width() as i64;
    let side = placement.side as i64;
    // Square pixel (in image units) → label-map pixel, by the pixel centre.
    let to_map = |offset: i64| -> usize {
        let clamped = offset.clamp(0, side - 1);
        (((2 * clamped + 1) * labelled) / (2 * side)).min(labelled - 1) as usize
    };
    let (width, height) = (
        placement.image_width as usize,
        placement.image_height as usize,
    );
    let columns: Vec<usize> = (0..width as i64)
        .map(|x| to_map(x - placement.left))
        .collect();
    let mut labels = Vec::with_capacity(width * height);
    for y in 0..height as i64 {
        let row = to_map(y - placement.top);
        labels.extend(columns.iter().map(|&column| square.label_at(column, row)));
    }
    labels
}

/// Feeds each image's slice of the batch into its own running mean.
struct BatchSink<B: Backend> {
    accumulators: Vec<AttentionAccumulator<B>>,
    /// The cross-attention queries of the whole batch, kept only when naming segments.
    queries: Option<CrossAttentionQueries<B>>,
    /// The first error (the sink interface cannot return one).
    error: Option<diffseg_core::Error>,
}

impl<B: Backend> AttentionSink<B> for BatchSink<B> {
    fn self_attention(
        &mut self,
        layer: &AttentionLayer,
        _head: Option<usize>,
        probs: Tensor<B, 3>,
    ) {
        if self.error.is_some() {
            return;
        }
        let [_, queries, keys] = probs.dims();
        for (index, accumulator) in self.accumulators.iter_mut().enumerate() {
            let image = probs
                .clone()
                .slice([index..index + 1, 0..queries, 0..keys])
                .reshape([queries, keys]);
            if let Err(error) = accumulator.add_mean(image, layer.height, layer.width) {
                self.error = Some(error);
                return;
            }
        }
    }

    fn cross_attention_queries(&mut self, layer: &AttentionLayer, queries: Tensor<B, 3>) {
        if let Some(kept) = &mut self.queries {
            kept.push(layer, queries);
        }
    }

    fn wants_cross_attention_queries(&self) -> bool {
        self.queries.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Fit;

    #[test]
    fn padding_maps_back_to_the_image_window() {
        // A 4×4 square whose rows are labels 0..4; the image is 4 wide, 2 high,
        // padded by one row above and below.
        let labels: Vec<u32> = (0..16).map(|i| i / 4).collect();
        let square = diffseg_core::Segmentation::from_labels(labels, 4, 4).unwrap();
        let placement = Placement::new(4, 2, Fit::Pad);
        let image = square_to_image(&square, &placement).unwrap();
        assert_eq!((image.width(), image.height()), (4, 2));
        // Rows 1 and 2 of the square, renumbered to 0 and 1.
        assert_eq!(image.labels(), &[0, 0, 0, 0, 1, 1, 1, 1]);
    }

    #[test]
    fn a_coarser_square_is_sampled_at_pixel_centres() {
        // A 2×2 label map standing for a 4×4 square (a 4×4 image, no padding).
        let square = diffseg_core::Segmentation::from_labels(vec![0, 1, 2, 3], 2, 2).unwrap();
        let placement = Placement::new(4, 4, Fit::Pad);
        let image = square_to_image(&square, &placement).unwrap();
        assert_eq!(
            image.labels(),
            &[0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
        );
    }

    #[test]
    fn centre_crop_extends_the_border_labels() {
        // A 2×2 square (columns labelled 0, 1) cropped from a 4×2 image.
        let square = diffseg_core::Segmentation::from_labels(vec![0, 1, 0, 1], 2, 2).unwrap();
        let placement = Placement::new(4, 2, Fit::CenterCrop);
        let image = square_to_image(&square, &placement).unwrap();
        assert_eq!(image.labels(), &[0, 0, 1, 1, 0, 0, 1, 1]);
    }
}
