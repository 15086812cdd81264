"""How far diffusers itself lands from its fp32 outputs when run in fp16, on the tiny fixtures.

    python tools/reference/half_precision_gap.py [FIXTURES_DIR]   # default: the committed tiny fixtures

Loads the fixtures' fp16 weight files (`*.fp16.safetensors`) into diffusers/transformers in float16
on the CPU, runs the same cases as `sd_fixtures.py` on the same inputs (the image, the fp32
reference latent and text embedding, each rounded to fp16, exactly what the Rust f16 parity test
feeds its models), and prints max |fp16 - fp32 reference| per output.

This is the scale of error that plain fp16 inference has on these weights: the yardstick for the
tolerances of `crates/diffseg-sd/tests/parity.rs::half_precision`. diffusers' fp16 also takes its
softmax in fp16 (SD 1.x configs leave `upcast_attention` off), where the Rust port keeps softmax
and normalisation statistics in f32, so the port should land at or below this gap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sd_common as common  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FIXTURES = REPO / "crates/diffseg-sd/tests/fixtures/tiny"


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fixtures", type=Path, nargs="?", default=DEFAULT_FIXTURES)
    fixtures: Path = parser.parse_args().fixtures
    half = dict(variant="fp16", torch_dtype=torch.float16)
    unet = UNet2DConditionModel.from_pretrained(fixtures / "unet", **half).eval()
    vae = AutoencoderKL.from_pretrained(fixtures / "vae", **half).eval()
    text_encoder = CLIPTextModel.from_pretrained(fixtures / "text_encoder", **half).eval()
    io = load_file(fixtures / "io.safetensors")

    gaps = {}
    moments = vae.quant_conv(vae.encoder(io["image"].half()))
    gaps["moments"] = moments.float() - io["moments"]
    text = text_encoder(io["input_ids"]).last_hidden_state
    gaps["text_embedding"] = text.float() - io["text_embedding"]

    recorder = common.Recorder()
    common.install_capture(unet, recorder)
    noise = unet(io["latent"].half(), io["timestep"], encoder_hidden_states=io["text_embedding"].half()).sample
    gaps["noise_pred"] = noise.float() - io["noise_pred"]
    selfs = [probs.float() for _, kind, probs in recorder.calls if kind == "self"]
    worst = max((p - io[f"self_attn.{i:02}"]).abs().max().item() for i, p in enumerate(selfs))

    print(f"diffusers {__import__('diffusers').__version__}, torch {torch.__version__}, fp16 on CPU vs the fp32 reference:")
    for name, gap in gaps.items():
        print(f"  {name}: max abs {gap.abs().max().item():.3e}")
    print(f"  self-attention maps ({len(selfs)} layers): max abs {worst:.3e}")


if __name__ == "__main__":
    main()
