//! The noise schedule SD 1.x was trained with, for noising a latent as DiffCut does
//! (docs/method.md §9).

use burn::tensor::{backend::Backend, Tensor};

/// Timesteps of SD 1.x's training schedule (`num_train_timesteps`).
pub const TRAIN_TIMESTEPS: usize = 1000;
/// First β of SD 1.x's `scaled_linear` schedule (`beta_start`).
const BETA_START: f64 = 0.00085;
/// Last β of SD 1.x's `scaled_linear` schedule (`beta_end`).
const BETA_END: f64 = 0.012;

/// ᾱ_t of SD 1.x's training schedule: βs spaced linearly in √β from
/// [`BETA_START`] to [`BETA_END`] over [`TRAIN_TIMESTEPS`] steps, and
/// ᾱ_t = Π_{i≤t} (1 − β_i). `None` for `timestep ≥ TRAIN_TIMESTEPS`.
///
/// This is the table diffusers' `DDIMScheduler.add_noise` indexes by the timestep
/// itself: the "trailing" spacing DiffCut sets only changes the sampling timesteps,
/// which one noising never uses. Computed in f64 (diffusers: f32; the two differ by
/// 3e-7 relative at t = 50).
pub fn alpha_cumprod(timestep: usize) -> Option<f64> {
    if timestep >= TRAIN_TIMESTEPS {
        return None;
    }
    let (first, last) = (BETA_START.sqrt(), BETA_END.sqrt());
    let step = (last - first) / (TRAIN_TIMESTEPS - 1) as f64;
    Some(
        (0..=timestep)
            .map(|i| 1.0 - (first + step * i as f64).powi(2))
            .product(),
    )
}

/// The latent noised to `timestep` (diffusers' `add_noise`):
/// √ᾱ_t · latent + √(1 − ᾱ_t) · noise. `None` for a timestep past the schedule.
///
/// # Shapes
/// - `latent`, `noise`, output: the same shape
pub fn add_noise<B: Backend, const D: usize>(
    latent: Tensor<B, D>,
    noise: Tensor<B, D>,
    timestep: usize,
) -> Option<Tensor<B, D>> {
    let alpha = alpha_cumprod(timestep)?;
    Some(latent.mul_scalar(alpha.sqrt()) + noise.mul_scalar((1.0 - alpha).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_diffusers_table() {
        // diffusers 0.42.1 DDIMScheduler(beta_schedule="scaled_linear",
        // beta_start=0.00085, beta_end=0.012).alphas_cumprod, a product of f32
        // factors: its rounding (3e-7 at t = 50) bounds the agreement.
        for (t, expected) in [
            (0, 0.999_149_978_160_858_2f64),
            (50, 0.951_576_650_142_669_7),
            (999, 0.004_660_095_088_183_88),
        ] {
            let got = alpha_cumprod(t).unwrap();
            assert!((got - expected).abs() < 1e-6, "t {t}: {got} vs {expected}");
        }
        assert_eq!(alpha_cumprod(TRAIN_TIMESTEPS), None);
    }
}
