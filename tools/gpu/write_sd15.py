"""Writes a random-weight Stable Diffusion 1.5 diffusers folder for tools/gpu/run.sh.

    python3 write_sd15.py OUT [--device cuda] [--like FOLDER]

OUT (new) gets model_index.json and unet/, vae/, text_encoder/ with config.json, fp32 weights
and the fp16 variant (`*.fp16.safetensors`, what `--precision f16` loads first). It is written as
OUT.partial and renamed when complete, so a run cut short leaves no folder that looks whole. Random weights time the
same as the published ones. The models are built with tools/reference/sd_fullsize.py's
configurations and seeds (PyTorch's default initialisation), on --device: on a GPU that takes
seconds, where the CPU needs half a minute for the UNet alone. --like FOLDER takes the three
configurations from another diffusers folder instead (run.sh --cpu: the tiny fixture's), so the
same code runs in CI in a second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
import sd_common as common  # noqa: E402
import sd_fullsize  # noqa: E402


def build_like(folder: Path):
    """Default-initialised models with the configurations of the diffusers folder `folder`."""
    torch.manual_seed(sd_fullsize.SEED_UNET)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")).eval()
    torch.manual_seed(sd_fullsize.SEED_VAE)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")).eval()
    torch.manual_seed(sd_fullsize.SEED_TEXT)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")).eval()
    return unet, vae, text_encoder


def save_fp16_variant(out: Path, unet, vae, text_encoder) -> None:
    """The `fp16` variant files next to the fp32 ones, as published SD 1.5 folders have them."""
    unet.half().save_pretrained(out / "unet", variant="fp16", safe_serialization=True)
    vae.half().save_pretrained(out / "vae", variant="fp16", safe_serialization=True)
    clip_state = {k: v for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")}
    clip_state = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in clip_state.items()}
    common.save_safetensors(common.cast_floats(clip_state, torch.float16), out / "text_encoder/model.fp16.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write (created)")
    parser.add_argument("--device", default="cuda", help="where the models are built (cuda, cpu)")
    parser.add_argument("--like", type=Path, help="diffusers folder whose configurations to use instead of SD 1.5's")
    args = parser.parse_args()
    partial = args.out.with_name(args.out.name + ".partial")
    if args.out.exists() or partial.exists():
        sys.exit(f"error: {args.out} or {partial} already exists")

    start = time.perf_counter()
    with torch.device(args.device), torch.no_grad():
        models = build_like(args.like) if args.like else sd_fullsize.build_models("default")
        built = time.perf_counter()
        sd_fullsize.save_weights(partial, *models, write_ldm=False)
        save_fp16_variant(partial, *models)
    partial.rename(args.out)
    written = time.perf_counter()
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(
        f"wrote {args.out} ({size / 2**30:.2f} GiB, fp32 and fp16) on {args.device}: "
        f"built in {built - start:.1f} s, written in {written - built:.1f} s"
    )


if __name__ == "__main__":
    main()
