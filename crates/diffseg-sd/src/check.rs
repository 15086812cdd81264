//! Guarding against NaN/Inf: a reduced-precision pass that overflows must fail
//! loudly instead of turning into garbage segment masks.

use burn::tensor::{backend::Backend, ElementConversion, Tensor};

/// A tensor that should be finite holds NaN or infinite values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} holds {nan} NaN and {infinite} infinite values out of {total}; \
     the computation overflowed (reduced-precision compute?) or the weights are corrupt"
)]
pub struct NonFiniteError {
    /// What was checked, e.g. `"UNet noise prediction"`.
    pub what: String,
    /// How many elements are NaN.
    pub nan: usize,
    /// How many elements are +∞ or −∞.
    pub infinite: usize,
    /// Number of elements in the tensor.
    pub total: usize,
}

/// Returns an error naming `what` if `tensor` holds any NaN or ±Inf.
pub fn ensure_finite<B: Backend, const D: usize>(
    tensor: &Tensor<B, D>,
    what: &str,
) -> Result<(), NonFiniteError> {
    let count = |mask: Tensor<B, D, burn::tensor::Bool>| -> usize {
        mask.int().sum().into_scalar().elem::<i64>() as usize
    };
    let nan = count(tensor.clone().is_nan());
    let infinite = count(tensor.clone().is_inf());
    if nan == 0 && infinite == 0 {
        Ok(())
    } else {
        Err(NonFiniteError {
            what: what.to_string(),
            nan,
            infinite,
            total: tensor.shape().num_elements(),
        })
    }
}
