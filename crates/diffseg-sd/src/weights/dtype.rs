//! Converting stored tensors to the network's float type while loading.
//!
//! burn-store 0.20 hands a tensor to the module in the dtype it was stored in:
//! an fp16 file would give an f32 network f16 parameters (which the ndarray
//! backend rejects and wgpu mis-sizes). [`CastingAdapter`] wraps
//! [`PyTorchToBurnAdapter`] (norm gamma/beta names; Linear weights keep the
//! file's layout, see [`crate::torch_linear`])
//! and converts every float tensor to the backend's float type on the way in.

use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element, TensorData};
use burn_store::{ModuleAdapter, PyTorchToBurnAdapter, TensorSnapshot};
use rayon::prelude::*;

/// Loads PyTorch-layout tensors into Burn modules, converting f16, bf16, f32
/// and f64 data to one target float type, and counting non-finite values.
///
/// NaN and ±∞ are counted after conversion, so f32 weights too large for an
/// f16 network are caught as well as corrupt files.
#[derive(Debug, Clone)]
pub(crate) struct CastingAdapter {
    target: DType,
    non_finite: Arc<Mutex<Vec<(String, usize)>>>,
}

impl CastingAdapter {
    /// Converts to `target` (`DType::F32`, `DType::F16`, ...).
    pub(crate) fn new(target: DType) -> Self {
        Self {
            target,
            non_finite: Arc::default(),
        }
    }

    /// Converts to the float element type of backend `B`.
    pub(crate) fn for_backend<B: Backend>() -> Self {
        Self::new(<B::FloatElem as Element>::dtype())
    }

    /// The dtype every float tensor is converted to.
    pub(crate) fn target(&self) -> DType {
        self.target
    }

    /// Module paths of the tensors loaded so far that held NaN or ±∞ after
    /// conversion, with how many such values each had.
    pub(crate) fn non_finite(&self) -> Vec<(String, usize)> {
        self.non_finite
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ModuleAdapter for CastingAdapter {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        let adapted = PyTorchToBurnAdapter.adapt(snapshot);
        if !adapted.dtype.is_float() {
            return adapted;
        }
        // Linear weights keep the file's `[out, in]` layout: the networks
        // build every Linear with `LinearLayout::Col`, whose load mapper
        // transposes by view, so the mapped file bytes are used as they are
        // (burn-store's adapter would copy each weight transposed).
        let keep_layout = snapshot.shape.len() == 2
            && snapshot.module_type().as_deref() == Some("Struct:Linear")
            && snapshot
                .path_stack
                .as_ref()
                .and_then(|path| path.last())
                .is_some_and(|name| name == "weight");
        let target = self.target;
        let (inner, shape) = if keep_layout {
            (snapshot.clone_data_fn(), snapshot.shape.clone())
        } else {
            (adapted.clone_data_fn(), adapted.shape.clone())
        };
        let module_path = adapted.full_path();
        let non_finite = Arc::clone(&self.non_finite);
        let convert = Rc::new(move || {
            let data = inner()?.convert_dtype(target);
            let count = count_non_finite(&data);
            if count > 0 {
                non_finite
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((module_path.clone(), count));
            }
            Ok(data)
        });
        TensorSnapshot::from_closure(
            convert,
            target,
            shape,
            adapted.path_stack.clone().unwrap_or_default(),
            adapted.container_stack.clone().unwrap_or_default(),
            adapted.tensor_id.unwrap_or_default(),
        )
    }

    fn get_alternative_param_name(&self, param_name: &str, container_type: &str) -> Option<String> {
        PyTorchToBurnAdapter.get_alternative_param_name(param_name, container_type)
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Number of NaN or infinite values in float `data` (f32, the usual case, is
/// scanned in place on every core: 4 GB of SD weights in well under a second).
fn count_non_finite(data: &TensorData) -> usize {
    match data.as_slice::<f32>() {
        Ok(values) => values
            .par_chunks(1 << 16)
            .map(|chunk| chunk.iter().filter(|v| !v.is_finite()).count())
            .sum(),
        Err(_) => data.iter::<f64>().filter(|v| !v.is_finite()).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::ParamId;
    use half::{bf16, f16};

    fn snapshot_of(data: TensorData, path: &str) -> TensorSnapshot {
        TensorSnapshot::from_data(
            data,
            path.split('.').map(str::to_string).collect(),
            vec!["Struct:Conv2d".to_string()],
            ParamId::new(),
        )
    }

    #[test]
    fn f16_and_bf16_become_f32_with_their_values() {
        let values = [0.5f32, -1.25, 3.0, 1.0e-3];
        let adapter = CastingAdapter::new(DType::F32);
        let as_f16 = TensorData::new(values.map(f16::from_f32).to_vec(), [4]);
        let as_bf16 = TensorData::new(values.map(bf16::from_f32).to_vec(), [4]);
        for stored in [as_f16, as_bf16] {
            let adapted = adapter.adapt(&snapshot_of(stored.clone(), "conv.weight"));
            assert_eq!(adapted.dtype, DType::F32);
            let loaded = adapted.to_data().unwrap();
            assert_eq!(loaded.dtype, DType::F32);
            let expected: Vec<f32> = stored.iter::<f32>().collect();
            assert_eq!(loaded.to_vec::<f32>().unwrap(), expected);
        }
        assert!(adapter.non_finite().is_empty());
    }

    #[test]
    fn f32_too_large_for_f16_is_reported_as_non_finite() {
        let adapter = CastingAdapter::new(DType::F16);
        let stored = TensorData::new(vec![1.0f32, 1.0e6, f32::NAN], [3]);
        let adapted = adapter.adapt(&snapshot_of(stored, "block.conv.weight"));
        assert_eq!(adapted.dtype, DType::F16);
        adapted.to_data().unwrap();
        assert_eq!(
            adapter.non_finite(),
            vec![("block.conv.weight".to_string(), 2)]
        );
    }

    /// Linear weights reach the module in the file's `[out, in]` layout
    /// (square ones too, where a wrong transpose could not show in the shape);
    /// [`crate::torch_linear`] transposes them by view.
    #[test]
    fn linear_weights_keep_the_file_layout() {
        let adapter = CastingAdapter::new(DType::F32);
        for (rows, cols) in [(2, 3), (3, 3)] {
            let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let stored = TensorData::new(
                values.iter().map(|&v| f16::from_f32(v)).collect(),
                [rows, cols],
            );
            let snapshot = TensorSnapshot::from_data(
                stored,
                vec!["fc".to_string(), "weight".to_string()],
                vec!["Struct:Linear".to_string()],
                ParamId::new(),
            );
            let adapted = adapter.adapt(&snapshot);
            assert_eq!(adapted.shape, vec![rows, cols]);
            assert_eq!(adapted.to_data().unwrap().to_vec::<f32>().unwrap(), values);
        }
    }
}
