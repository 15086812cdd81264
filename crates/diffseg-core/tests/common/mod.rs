//! Fixture loading and the backend-instantiating macro shared by the integration tests.

#![allow(dead_code)] // the fullsize binary and the others use different subsets of these helpers

use std::path::PathBuf;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

/// Instantiates each generic test `fn name<B: Backend>(device: &B::Device)` once per backend:
/// ndarray always, wgpu when the crate's `wgpu` feature is on.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod ndarray {
            $(#[test]
            fn $name() {
                super::$name::<burn::backend::NdArray<f32>>(&Default::default());
            })*
        }
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $(#[test]
            fn $name() {
                if diffseg_device::ready_for_tests::<burn::backend::Wgpu>() {
                    super::$name::<burn::backend::Wgpu>(&Default::default());
                }
            })*
        }
    };
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A safetensors fixture file, read whole.
pub struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    pub fn open(name: &str) -> Self {
        let path = fixture_path(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run tools/reference/diffseg_reference.py)",
                path.display()
            )
        });
        Self { bytes }
    }

    fn raw(&self, name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let tensors = SafeTensors::deserialize(&self.bytes).expect("fixture parses");
        let view = tensors
            .tensor(name)
            .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        (view.dtype(), view.shape().to_vec(), view.data().to_vec())
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.raw(name).1
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        let (dtype, _, data) = self.raw(name);
        assert_eq!(dtype, Dtype::F32, "{name}");
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    pub fn f64(&self, name: &str) -> Vec<f64> {
        let (dtype, _, data) = self.raw(name);
        assert_eq!(dtype, Dtype::F64, "{name}");
        data.chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    pub fn indices(&self, name: &str) -> Vec<usize> {
        let (dtype, _, data) = self.raw(name);
        assert_eq!(dtype, Dtype::I32, "{name}");
        data.chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as usize)
            .collect()
    }

    /// A numpy `packbits` boolean matrix (big-endian bits, rows padded to whole bytes).
    pub fn bits(&self, name: &str, columns: usize) -> Vec<bool> {
        let (dtype, shape, data) = self.raw(name);
        assert_eq!(dtype, Dtype::U8, "{name}");
        let row_bytes = shape[1];
        let mut flags = Vec::with_capacity(shape[0] * columns);
        for row in data.chunks_exact(row_bytes) {
            flags.extend((0..columns).map(|column| row[column / 8] >> (7 - column % 8) & 1 == 1));
        }
        flags
    }
}

/// The synthetic attention of tools/reference/diffseg_reference.py, rebuilt from the
/// committed per-cell features with the same float32 formula:
/// `(1 − ε) softmax_k(−|f_q − f_k|² / T) + ε / n`.
pub fn attention_from_features(
    features: &[f32],
    channels: usize,
    temperature: f32,
    floor: f32,
) -> Vec<f32> {
    let cells = features.len() / channels;
    let mut probs = vec![0f32; cells * cells];
    for query in 0..cells {
        let row = &mut probs[query * cells..(query + 1) * cells];
        for (key, logit) in row.iter_mut().enumerate() {
            let mut distance = 0f32;
            for channel in 0..channels {
                let difference =
                    features[query * channels + channel] - features[key * channels + channel];
                distance += difference * difference;
            }
            *logit = -distance / temperature;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f64;
        for value in row.iter_mut() {
            *value = (*value - max).exp();
            sum += *value as f64;
        }
        let sum = sum as f32;
        for value in row.iter_mut() {
            *value = *value / sum * (1.0 - floor) + floor / cells as f32;
        }
    }
    probs
}

pub fn tensor2<B: Backend>(
    values: Vec<f32>,
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(values, shape).convert::<B::FloatElem>(),
        device,
    )
}

pub fn tensor3<B: Backend>(
    values: Vec<f32>,
    shape: [usize; 3],
    device: &B::Device,
) -> Tensor<B, 3> {
    Tensor::from_data(
        TensorData::new(values, shape).convert::<B::FloatElem>(),
        device,
    )
}

pub fn host<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor.into_data().iter::<f32>().collect()
}
