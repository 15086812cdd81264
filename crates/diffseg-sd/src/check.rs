//! Guarding against NaN/Inf: a reduced-precision pass that overflows must fail
//! loudly instead of turning into garbage segment masks.

use burn::tensor::{backend::Backend, ElementConversion, Tensor};

use crate::Error;

/// Returns [`Error::NonFiniteValues`] naming `what` if `tensor` holds any
/// NaN or ±Inf.
pub fn ensure_finite<B: Backend, const D: usize>(
    tensor: &Tensor<B, D>,
    what: &str,
) -> Result<(), Error> {
    let count = |mask: Tensor<B, D, burn::tensor::Bool>| -> usize {
        mask.int().sum().into_scalar().elem::<i64>() as usize
    };
    let nan = count(tensor.clone().is_nan());
    let infinite = count(tensor.clone().is_inf());
    if nan == 0 && infinite == 0 {
        Ok(())
    } else {
        Err(Error::NonFiniteValues {
            what: what.to_string(),
            nan,
            infinite,
            total: tensor.shape().num_elements(),
        })
    }
}
