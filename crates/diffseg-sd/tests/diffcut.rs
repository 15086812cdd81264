//! DiffCut's features equal diffusers' hooked output on the tiny fixture
//! (`tests/fixtures/tiny/diffcut_features.safetensors`, written by
//! `tools/reference/diffcut_features_reference.py`, PyTorch f32 on CPU).
//!
//! Tolerance: the features are one attention's output after the network
//! prefix up to `down_blocks.2`, values in [-1.4, 1.4]; both sides compute in
//! f32 in different orders, which stays far below the noise prediction's
//! bound ([`NOISE_PRED_ATOL`], 60 layers against ~25 here). A wrong layer,
//! a missing residual or an off-by-one timestep is off by > 1e-2.

use crate::common;

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use diffseg_sd::{add_noise, alpha_cumprod, StableDiffusion, WeightsSource};
use safetensors::{Dtype, SafeTensors};

use common::*;

type B = NdArray<f32>;

/// The reference's tensors.
struct DiffCutReference {
    bytes: Vec<u8>,
}

impl DiffCutReference {
    fn open() -> Self {
        let path = fixtures().join("diffcut_features.safetensors");
        Self {
            bytes: std::fs::read(&path).expect("read diffcut_features.safetensors"),
        }
    }

    fn tensor<const D: usize>(&self, name: &str) -> Tensor<B, D> {
        let view = SafeTensors::deserialize(&self.bytes).expect("parse the fixture");
        let tensor = view.tensor(name).expect("tensor in the fixture");
        let values = f32_values(&tensor, name);
        Tensor::from_data(
            TensorData::new(values, tensor.shape().to_vec()),
            &Default::default(),
        )
    }

    fn alpha_cumprod_50(&self) -> f64 {
        let view = SafeTensors::deserialize(&self.bytes).expect("parse the fixture");
        let tensor = view.tensor("alpha_cumprod_50").expect("alpha_cumprod_50");
        assert_eq!(tensor.dtype(), Dtype::F64);
        f64::from_le_bytes(tensor.data().try_into().expect("one f64"))
    }
}

/// `[1, h, w, c]` → `[h, w, c]`.
fn drop_batch(features: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, height, width, channels] = features.dims();
    assert_eq!(batch, 1);
    features.reshape([height, width, channels])
}

fn model() -> StableDiffusion<B> {
    WeightsSource::detect(fixtures())
        .and_then(|source| StableDiffusion::load(&source, None, &Default::default()))
        .unwrap_or_else(|error| panic!("load the fixtures: {error}"))
}

#[test]
fn timestep_50_uses_the_training_schedule() {
    // diffusers multiplies the 51 factors in f32: up to 51 roundings of 6e-8
    // (measured 2.7e-7); t = 49 or 51 is off by 5e-4.
    let expected = DiffCutReference::open().alpha_cumprod_50();
    let got = alpha_cumprod(50).unwrap();
    assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
}

#[test]
fn hooked_self_attention_matches_diffusers() {
    let reference = DiffCutReference::open();
    let model = model();
    let context = Reference::open().f32::<B, 3>("text_embedding", &Default::default());
    let features = model
        .unet
        .diffcut_features(reference.tensor("noisy_latent"), 50.0, context)
        .unwrap();
    let expected: Tensor<B, 3> = reference.tensor("features");
    assert_close(
        "hooked attn1 output",
        drop_batch(features),
        expected,
        NOISE_PRED_ATOL,
    );
}

#[test]
fn whole_features_path_matches_diffusers_with_its_noise() {
    let reference = DiffCutReference::open();
    let model = model();
    let io = Reference::open();
    let latent = model
        .vae
        .encode_latent(io.f32::<B, 4>("image", &Default::default()));
    assert_close(
        "latent",
        latent.clone(),
        reference.tensor("latent"),
        MOMENTS_ATOL,
    );
    let noisy = add_noise(latent, reference.tensor("noise"), 50).unwrap();
    let context = io.f32::<B, 3>("text_embedding", &Default::default());
    let features = model.unet.diffcut_features(noisy, 50.0, context).unwrap();
    assert_close(
        "features from the image",
        drop_batch(features),
        reference.tensor("features"),
        NOISE_PRED_ATOL,
    );
}
