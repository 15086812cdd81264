//! What diffseg-sd's integration tests share: the tiny fixtures and their
//! reference tensors (`io.safetensors`, written by
//! `tools/reference/sd_fixtures.py`), the bounds of outputs checked by more
//! than one test binary, and error measures that cannot hide a NaN.
//!
//! The bounds: both sides compute in f32 but in a different order (Burn's and
//! PyTorch's conv/matmul kernels accumulate differently, softmax/GroupNorm
//! reduce in different orders), so results differ by a few ulps per op which
//! grow through the network. Each bound is an absolute error stated next to
//! the value range it applies to, a few times the error measured on ndarray
//! and wgpu, and orders of magnitude below what any wrong operation
//! (transposed weight, wrong eps, swapped sin/cos, missing residual) produces.

// Every test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use diffseg_sd::StableDiffusion;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

/// Noise prediction: values in [-2.4, 2.0] after ~60 layers of f32 math.
pub const NOISE_PRED_ATOL: f32 = 1e-4;
/// VAE moments: values in [-1.9, 2.4] after ~30 conv layers at 128×128.
pub const MOMENTS_ATOL: f32 = 1e-4;
/// Text embedding: values in [-2.6, 2.7] after 2 layers and 3 LayerNorms.
pub const TEXT_ATOL: f32 = 2e-5;
/// Attention probabilities: values in [0, 0.62], rows of up to 256 entries
/// summing to 1; one softmax after the network prefix up to that layer
/// (measured 1.8e-6 per head on ndarray). A wrong scale or a transposed
/// map is off by > 1e-3.
pub const ATTENTION_ATOL: f32 = 1e-5;

/// The committed tiny fixture folder (a diffusers layout plus LDM single files).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

/// The reference inputs and outputs (`io.safetensors`).
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open() -> Self {
        let bytes = std::fs::read(fixtures().join("io.safetensors")).expect("read io.safetensors");
        Self { bytes }
    }

    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("parse io.safetensors")
    }

    pub fn has(&self, name: &str) -> bool {
        self.view().tensor(name).is_ok()
    }

    pub fn f32<B: Backend, const D: usize>(&self, name: &str, device: &B::Device) -> Tensor<B, D> {
        let (values, shape) = self.values(name);
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// The f32 values of `name`, row-major, and its shape.
    pub fn values(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let view = self.view();
        let tensor = view
            .tensor(name)
            .unwrap_or_else(|_| panic!("{name} in io.safetensors"));
        (f32_values(&tensor, name), tensor.shape().to_vec())
    }

    pub fn i64<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Tensor<B, D, Int> {
        let view = self.view();
        let tensor = view
            .tensor(name)
            .unwrap_or_else(|_| panic!("{name} in io.safetensors"));
        assert_eq!(tensor.dtype(), Dtype::I64, "{name}");
        let values: Vec<i64> = tensor
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        Tensor::from_data(TensorData::new(values, tensor.shape().to_vec()), device)
    }

    /// The UNet's timestep (method step 2: 300).
    pub fn timestep(&self) -> f32 {
        let t: Tensor<burn::backend::NdArray<f32>, 1, Int> =
            self.i64("timestep", &Default::default());
        t.into_scalar() as f32
    }
}

/// The values of an f32 safetensors tensor (`name` for the message), row-major.
pub fn f32_values(tensor: &TensorView<'_>, name: &str) -> Vec<f32> {
    assert_eq!(tensor.dtype(), Dtype::F32, "{name}");
    tensor
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Networks loaded by the crate (`what` says from which files) reproduce the reference's three
/// outputs: VAE moments, empty-prompt text embedding and noise prediction.
pub fn assert_reproduces_reference_outputs<B: Backend>(
    what: &str,
    sd: &StableDiffusion<B>,
    device: &B::Device,
) {
    let reference = Reference::open();
    assert_close(
        &format!("{what}: vae moments"),
        sd.vae.moments(reference.f32("image", device)),
        reference.f32("moments", device),
        MOMENTS_ATOL,
    );
    assert_close(
        &format!("{what}: text embedding"),
        sd.text_encoder
            .forward(diffseg_sd::empty_prompt_ids(device)),
        reference.f32("text_embedding", device),
        TEXT_ATOL,
    );
    let noise = sd.unet.forward(
        reference.f32("latent", device),
        reference.timestep(),
        reference.f32("text_embedding", device),
    );
    assert_close(
        &format!("{what}: noise prediction"),
        noise,
        reference.f32("noise_pred", device),
        NOISE_PRED_ATOL,
    );
}

/// The largest of `errors`, NaN if any is NaN: `f64::max` drops NaN, which
/// would let a broken output pass.
pub fn max_error(errors: impl IntoIterator<Item = f64>) -> f64 {
    errors.into_iter().fold(0.0, |worst, error| {
        if worst.is_nan() || error.is_nan() {
            f64::NAN
        } else {
            worst.max(error)
        }
    })
}

/// Max |actual - expected| over two equally long slices, NaN if any value is NaN.
pub fn max_abs_diff(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "element counts");
    max_error(
        actual
            .iter()
            .zip(expected)
            .map(|(a, b)| f64::from((a - b).abs())),
    ) as f32
}

/// The values of a float tensor as f32, whatever dtype it computes in.
pub fn host<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("float tensor")
}

/// Max |actual - expected| of two tensors of the same shape, NaN if any value is NaN.
pub fn max_abs_error<B: Backend, const D: usize>(
    actual: Tensor<B, D>,
    expected: Tensor<B, D>,
) -> f32 {
    assert_eq!(actual.dims(), expected.dims(), "shape");
    max_abs_diff(&host(actual), &host(expected))
}

/// Prints `error` beside its bound and asserts it is within (a NaN is not).
#[track_caller]
pub fn assert_within(what: &str, error: f32, atol: f32) {
    eprintln!("{what}: max abs error {error:e} (tolerance {atol:e})");
    assert!(error <= atol, "{what}: max abs error {error:e} > {atol:e}");
}

/// Asserts max |actual - expected| <= `atol` over two slices.
#[track_caller]
pub fn assert_close_values(what: &str, actual: &[f32], expected: &[f32], atol: f32) {
    assert_within(what, max_abs_diff(actual, expected), atol);
}

/// Asserts max |actual - expected| <= `atol` over two tensors of the same shape.
#[track_caller]
pub fn assert_close<B: Backend, const D: usize>(
    what: &str,
    actual: Tensor<B, D>,
    expected: Tensor<B, D>,
    atol: f32,
) {
    assert_within(what, max_abs_error(actual, expected), atol);
}
