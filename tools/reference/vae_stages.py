"""Stage-by-stage float64 reference of the full-size VAE encoder, to locate precision loss.

    python tools/reference/vae_stages.py OUT_DIR    # OUT_DIR written by sd_fullsize.py
    DIFFSEG_FULLSIZE_DIR=OUT_DIR cargo test -p diffseg-sd --all-features --test fullsize \
        vae_stages -- --ignored --nocapture

Runs diffusers' encoder (weights from OUT_DIR/vae, image from OUT_DIR/io.safetensors) in float64
and writes every stage's float64 output to OUT_DIR/vae_stages.safetensors (~1.2 GB), in order:
conv_in, down.I.resnets.J, down.I.downsamplers.0, mid.resnets.0, mid.attentions.0, mid.resnets.1,
conv_norm_out, conv_out (SiLU then convolution), quant_conv.

Each stage is also run in float32 on the float64 stage input rounded to float32: its max |f32 - f64|
is the stage's own rounding noise (not accumulated from earlier stages), written with the output
magnitudes to OUT_DIR/vae_stages.json. The Rust test feeds each stage the same rounded input and
compares its error with this floor.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sd_common as common  # noqa: E402


def stages(vae: AutoencoderKL) -> list[tuple[str, callable]]:
    """The encoder as a list of (name, function of the previous stage's output)."""
    encoder = vae.encoder
    out = [("conv_in", encoder.conv_in)]
    for i, block in enumerate(encoder.down_blocks):
        for j, resnet in enumerate(block.resnets):
            out.append((f"down.{i}.resnets.{j}", lambda x, r=resnet: r(x, None)))
        for j, down in enumerate(block.downsamplers or []):
            out.append((f"down.{i}.downsamplers.{j}", down))
    mid = encoder.mid_block
    out.append(("mid.resnets.0", lambda x: mid.resnets[0](x, None)))
    out.append(("mid.attentions.0", mid.attentions[0]))
    out.append(("mid.resnets.1", lambda x: mid.resnets[1](x, None)))
    out.append(("conv_norm_out", encoder.conv_norm_out))
    out.append(("conv_out", lambda x: encoder.conv_out(F.silu(x))))
    out.append(("quant_conv", vae.quant_conv))
    return out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="directory written by sd_fullsize.py")
    args = parser.parse_args()
    vae32 = AutoencoderKL.from_pretrained(args.out / "vae").float().eval()
    vae64 = copy.deepcopy(vae32).double()
    hidden = load_file(args.out / "io.safetensors")["image"].double()
    outputs = {"image": hidden}
    report = {}
    for (name, stage64), (_, stage32) in zip(stages(vae64), stages(vae32)):
        result = stage64(hidden)
        floor = (stage32(hidden.float()).double() - result).abs().max().item()
        report[name] = {"f32_floor": floor, "max_abs": result.abs().max().item(), "shape": list(result.shape)}
        print(f"{name:24} floor {floor:.3e}  max |out| {report[name]['max_abs']:.3e}")
        outputs[name] = result.contiguous()
        hidden = result
    save_file(outputs, args.out / "vae_stages.safetensors")
    common.write_json({"order": list(report), "stages": report}, args.out / "vae_stages.json")


if __name__ == "__main__":
    main()
