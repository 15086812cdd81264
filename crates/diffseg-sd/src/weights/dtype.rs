//! Converting stored tensors to the network's float type while loading.
//!
//! burn-store 0.20 hands a tensor to the module in the dtype it was stored in:
//! an fp16 file would give an f32 network f16 parameters (which the ndarray
//! backend rejects and wgpu mis-sizes). [`CastingAdapter`] wraps
//! [`PyTorchToBurnAdapter`] (linear-weight transpose, norm gamma/beta names)
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
pub struct CastingAdapter {
    target: DType,
    non_finite: Arc<Mutex<Vec<(String, usize)>>>,
}

impl CastingAdapter {
    /// Converts to `target` (`DType::F32`, `DType::F16`, ...).
    pub fn new(target: DType) -> Self {
        Self {
            target,
            non_finite: Arc::default(),
        }
    }

    /// Converts to the float element type of backend `B`.
    pub fn for_backend<B: Backend>() -> Self {
        Self::new(<B::FloatElem as Element>::dtype())
    }

    /// The dtype every float tensor is converted to.
    pub fn target(&self) -> DType {
        self.target
    }

    /// Module paths of the tensors loaded so far that held NaN or ±∞ after
    /// conversion, with how many such values each had.
    pub fn non_finite(&self) -> Vec<(String, usize)> {
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
        // burn-store's adapter transposes Linear weights one element at a
        // time (1.6 s of SD 1.5's load); the same transpose is done here by
        // blocks, after the conversion, from the untransposed data. (Its
        // test, as burn-store 0.20 words it: a 2-D `weight` of a Linear.)
        let transpose = snapshot.shape.len() == 2
            && snapshot.module_type().as_deref() == Some("Struct:Linear")
            && snapshot
                .path_stack
                .as_ref()
                .and_then(|path| path.last())
                .is_some_and(|name| name == "weight");
        let target = self.target;
        let inner = if transpose {
            snapshot.clone_data_fn()
        } else {
            adapted.clone_data_fn()
        };
        let module_path = adapted.full_path();
        let non_finite = Arc::clone(&self.non_finite);
        let convert = Rc::new(move || {
            let data = inner()?.convert_dtype(target);
            let data = if transpose { transposed(data) } else { data };
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
            adapted.shape.clone(),
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

/// The transpose of a 2-D float tensor.
fn transposed(data: TensorData) -> TensorData {
    fn blocked<T: Copy + Element>(data: &TensorData, rows: usize, cols: usize) -> TensorData {
        const BLOCK: usize = 32;
        let values = data.as_slice::<T>().expect("the dtype matched");
        let Some(&first) = values.first() else {
            return TensorData::new(Vec::<T>::new(), [cols, rows]);
        };
        let mut out = vec![first; values.len()];
        // Each task writes BLOCK output rows (input columns), in BLOCK×BLOCK tiles.
        out.par_chunks_mut(BLOCK * rows)
            .enumerate()
            .for_each(|(index, band)| {
                let col_block = index * BLOCK;
                for row_block in (0..rows).step_by(BLOCK) {
                    for row in row_block..(row_block + BLOCK).min(rows) {
                        for (c, col) in (col_block..(col_block + BLOCK).min(cols)).enumerate() {
                            band[c * rows + row] = values[row * cols + col];
                        }
                    }
                }
            });
        TensorData::new(out, [cols, rows])
    }
    let [rows, cols] = [data.shape[0], data.shape[1]];
    match data.dtype {
        DType::F32 => blocked::<f32>(&data, rows, cols),
        DType::F16 => blocked::<half::f16>(&data, rows, cols),
        DType::BF16 => blocked::<half::bf16>(&data, rows, cols),
        DType::F64 => blocked::<f64>(&data, rows, cols),
        other => unreachable!("float tensors only, got {other:?}"),
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

    #[test]
    fn linear_weights_are_still_transposed() {
        let adapter = CastingAdapter::new(DType::F32);
        let stored = TensorData::new(
            [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
                .map(f16::from_f32)
                .to_vec(),
            [2, 3],
        );
        let snapshot = TensorSnapshot::from_data(
            stored,
            vec!["fc".to_string(), "weight".to_string()],
            vec!["Struct:Linear".to_string()],
            ParamId::new(),
        );
        let adapted = adapter.adapt(&snapshot);
        assert_eq!(adapted.shape, vec![3, 2]);
        let loaded = adapted.to_data().unwrap();
        assert_eq!(
            loaded.to_vec::<f32>().unwrap(),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }

    /// Square weights (320×320 in the UNet) keep their shape and must still be transposed;
    /// sizes that are no multiple of the transpose's 32-wide blocks lose no edge.
    #[test]
    fn square_and_odd_sized_linear_weights_are_transposed() {
        let adapter = CastingAdapter::new(DType::F32);
        for (rows, cols) in [(3, 3), (37, 70), (64, 64)] {
            let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let snapshot = TensorSnapshot::from_data(
                TensorData::new(values.clone(), [rows, cols]),
                vec!["fc".to_string(), "weight".to_string()],
                vec!["Struct:Linear".to_string()],
                ParamId::new(),
            );
            let adapted = adapter.adapt(&snapshot);
            assert_eq!(adapted.shape, vec![cols, rows]);
            let loaded = adapted.to_data().unwrap().to_vec::<f32>().unwrap();
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        loaded[c * rows + r],
                        values[r * cols + c],
                        "{rows}x{cols} [{r},{c}]"
                    );
                }
            }
        }
    }
}
