"""Times one diffusers UNet pass (SD 1.5 config, random weights, fp32, CPU) on a
64x64 latent with attention probabilities materialised per layer, for comparison
with `cargo bench --bench unet`. Run on the same machine:

    python tools/reference/unet_timing.py [--repeats 3]
"""

import argparse
import time

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    # SD 1.5's unet/config.json is the diffusers default configuration.
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval()
    # The plain processor computes softmax(QK^T) explicitly, as a capture must.
    unet.set_attn_processor(AttnProcessor())
    latent = torch.randn(1, 4, 64, 64) * 0.2
    context = torch.randn(1, 77, 768)
    times = []
    with torch.no_grad():
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            unet(latent, 300, encoder_hidden_states=context)
            times.append(time.perf_counter() - start)
    warm = times[1:]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"UNet pass: mean {sum(warm) / len(warm):.2f} s, min {min(warm):.2f} s over {len(warm)} (first {times[0]:.2f} s)")


if __name__ == "__main__":
    main()
