"""Generate the committed DiffCut features fixture for crates/diffseg-sd (docs/method.md §9).

    /work/refvenv/bin/python tools/reference/diffcut_features_reference.py

DiffCut (PaulCouairon/DiffCut, tools/ldm.py) noises the VAE latent to t = 50 with a
DDIMScheduler configured `timestep_spacing="trailing"`, gives the UNet that same t with the
empty prompt, and keeps the output of
`unet.down_blocks[-2].attentions[-1].transformer_blocks[-1].attn1` through a forward hook:
the self-attention after `to_out`, before the block adds its residual.

This script does exactly that with diffusers on the tiny random-weight fixture
(crates/diffseg-sd/tests/fixtures/tiny), starting from the committed `image` and
`text_embedding` of its io.safetensors, with noise drawn here from a fixed torch seed. It
writes diffcut_features.safetensors next to them:

- `noise` [1, 4, 16, 16]: the noise (the Rust test passes it in instead of its own);
- `latent` [1, 4, 16, 16]: VAE posterior mean x 0.18215 of `image`;
- `noisy_latent` [1, 4, 16, 16]: `scheduler.add_noise(latent, noise, 50)`;
- `features` [4, 4, 16]: the hooked output, [h, w, c];
- `alpha_cumprod_50` [1]: the scheduler's alphas_cumprod[50] (f64).

The UNet also runs to the end, as DiffCut's does: the hook must not depend on anything after it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "crates/diffseg-sd/tests/fixtures/tiny"
VAE_SCALING_FACTOR = 0.18215
TIMESTEP = 50
NOISE_SEED = 21


def main() -> None:
    torch.set_grad_enabled(False)
    io = load_file(TINY / "io.safetensors")
    unet = UNet2DConditionModel.from_pretrained(TINY / "unet").eval()
    vae = AutoencoderKL.from_pretrained(TINY / "vae").eval()
    # SD 1.x's scheduler config (scaled_linear 0.00085..0.012 over 1000 steps), made DDIM
    # with trailing spacing as DiffCut's build_ldm_from_cfg does.
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
    )
    scheduler.set_timesteps(50)

    latent = vae.encode(io["image"]).latent_dist.mean * VAE_SCALING_FACTOR
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(NOISE_SEED))
    t = torch.tensor([TIMESTEP])
    noisy = scheduler.scale_model_input(scheduler.add_noise(latent, noise, t), t)

    captured = {}
    attn1 = unet.down_blocks[-2].attentions[-1].transformer_blocks[-1].attn1
    handle = attn1.register_forward_hook(lambda module, inputs, output: captured.setdefault("out", output))
    unet(noisy, t, encoder_hidden_states=io["text_embedding"])
    handle.remove()

    out = captured["out"]  # [1, h*w, c], tokens row-major over the grid
    side = int(round(out.shape[1] ** 0.5))
    features = out.reshape(side, side, out.shape[2]).contiguous()
    save_file(
        {
            "noise": noise.contiguous(),
            "latent": latent.contiguous(),
            "noisy_latent": noisy.contiguous(),
            "features": features,
            "alpha_cumprod_50": scheduler.alphas_cumprod[TIMESTEP : TIMESTEP + 1].double(),
        },
        TINY / "diffcut_features.safetensors",
    )
    print(f"features {tuple(features.shape)}, |max| {features.abs().max().item():.4g}")


if __name__ == "__main__":
    main()
