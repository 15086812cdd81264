"""diffusers' side of tools/gpu/run.sh: the forward work DiffSeg needs, timed per batch size.

    python3 bench_diffusers.py --weights DIR --image IMAGE --json OUT.json
                               [--device cuda] [--dtype fp16] [--batches 1,8] [--repeats 3]

The same work as tools/bench/side_by_side.py's PyTorch side, on any device and batch size: the
VAE, UNet and CLIP text encoder loaded with `from_pretrained` (the fp16 variant files for
--dtype fp16 where the folder has them), the UNet's attention processor set to diffusers'
`AttnProcessor` (explicit softmax: the probabilities are materialised, as a DiffSeg capture
needs), then under `torch.inference_mode()` per batch size: one untimed warm-up pass and
--repeats timed passes of VAE encode of the image repeated over the batch (latent = posterior
mean x scaling factor), CLIP on the empty prompt (once, batch 1, expanded over the batch: our
pipeline computes it once at load) and one UNet pass at t = 300. Each stage is timed with
`torch.cuda.synchronize()` on both sides on CUDA. Best pass (smallest forward = vae + clip + unet)
kept; per image = forward / batch. Peak memory: `torch.cuda.max_memory_allocated`, reset per
batch size (CUDA only). diffusers runs the whole UNet; ours stops after the last transformer
block, so diffusers does slightly more work (a few percent of the UNet).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from transformers import CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
import sd_common as common  # noqa: E402

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def load(weights: Path, device: str, dtype: torch.dtype):
    """The three networks, in `dtype` on `device`, from the variant files matching `dtype` if any."""
    variant = "fp16" if dtype == torch.float16 and (weights / "unet/diffusion_pytorch_model.fp16.safetensors").is_file() else None
    vae = AutoencoderKL.from_pretrained(weights, subfolder="vae", variant=variant, torch_dtype=dtype)
    unet = UNet2DConditionModel.from_pretrained(weights, subfolder="unet", variant=variant, torch_dtype=dtype)
    unet.set_attn_processor(AttnProcessor())
    # Cast after loading: transformers 4 and 5 name the dtype argument differently.
    text_encoder = CLIPTextModel.from_pretrained(weights, subfolder="text_encoder", variant=variant).to(dtype=dtype)
    return tuple(model.to(device).eval() for model in (vae, unet, text_encoder))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_pass(vae, unet, text_encoder, images, input_ids, timestep, device: str) -> dict:
    """One timed forward pass: seconds per stage."""
    times = {}
    synchronize(device)
    start = time.perf_counter()
    latent = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    synchronize(device)
    times["vae"] = time.perf_counter() - start
    start = time.perf_counter()
    text_embedding = text_encoder(input_ids).last_hidden_state.expand(images.shape[0], -1, -1)
    synchronize(device)
    times["clip"] = time.perf_counter() - start
    start = time.perf_counter()
    unet(latent, timestep, encoder_hidden_states=text_embedding)
    synchronize(device)
    times["unet"] = time.perf_counter() - start
    times["forward"] = times["vae"] + times["clip"] + times["unet"]
    return times


def bench_batch(models, image, batch: int, repeats: int, device: str) -> dict:
    """Warm-up, then the best of `repeats` passes at this batch size."""
    vae, unet, text_encoder = models
    images = image.expand(batch, -1, -1, -1).contiguous()
    input_ids = common.empty_prompt_ids().to(device)
    timestep = torch.tensor([common.DIFFSEG_TIMESTEP], dtype=torch.int64, device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        forward_pass(vae, unet, text_encoder, images, input_ids, timestep, device)
        runs = [forward_pass(vae, unet, text_encoder, images, input_ids, timestep, device) for _ in range(repeats)]
    best = min(runs, key=lambda run: run["forward"])
    result = {"batch": batch, "runs": runs, "best": best, "per_image_s": best["forward"] / batch}
    if device.startswith("cuda"):
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(f"batch {batch}: best forward {best['forward'] * 1000:.1f} ms ({result['per_image_s'] * 1000:.1f} ms per image)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="diffusers SD 1.x folder")
    parser.add_argument("--image", type=Path, required=True, help="the image, centre-cropped and resized")
    parser.add_argument("--json", type=Path, required=True, help="where to write the numbers")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    start = time.perf_counter()
    models = load(args.weights, args.device, DTYPES[args.dtype])
    load_s = time.perf_counter() - start
    vae, unet, _ = models
    size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    image = common.crop_to_model_input(common.centre_crop_u8(args.image), size).to(args.device, DTYPES[args.dtype])
    report = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "dtype": args.dtype,
        "image_size": size,
        "repeats": args.repeats,
        "load_s": load_s,
        "batches": [bench_batch(models, image, int(b), args.repeats, args.device) for b in args.batches.split(",")],
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
