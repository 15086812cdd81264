"""Full-size SD 1.5 parity reference (random weights) and PyTorch CPU UNet timing.

    python tools/reference/sd_fullsize.py OUT_DIR                # weights + io.safetensors (~5 GB)
    python tools/reference/sd_fullsize.py OUT_DIR --timing-only  # just time the UNet
    DIFFSEG_FULLSIZE_DIR=OUT_DIR cargo test -p diffseg-sd --all-features --test fullsize -- --ignored

Same comparison as tools/reference/sd_fixtures.py, but at the real stable-diffusion-v1-5
configuration: 512 px image, 64x64 latent, 8-head attention over 4096 positions. Not committed
(~4.3 GB of fp32 weights); written on demand into OUT_DIR:

    OUT_DIR/model_index.json
    OUT_DIR/unet/{config.json, diffusion_pytorch_model.safetensors}
    OUT_DIR/vae/{config.json, diffusion_pytorch_model.safetensors}
    OUT_DIR/text_encoder/{config.json, model.safetensors}   (`text_model.*` keys, as published)
    OUT_DIR/sd15-ldm.safetensors                            (only with --ldm: LDM single file)
    OUT_DIR/io.safetensors, OUT_DIR/README.md, OUT_DIR/timing.json

Weights: the libraries' DEFAULT random initialisation (seeded), which is what a freshly constructed
diffusers/transformers model has. `--init scaled` uses the tiny fixtures' re-initialisation instead
(non-trivial norm scales and biases, sharper attention).

Self-attention maps at 64x64 are [1, 8, 4096, 4096] = 512 MiB each in f32, so io.safetensors keeps,
per transformer block NN: `self_attn_mean.NN` [1, q, q] = mean over the heads (what DiffSeg
aggregates), `self_attn_heads.NN` [1, 2, q, q] = raw heads 0 and 7 (first and last), and
`cross_attn.NN` [1, 8, q, 77] raw.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sd_common as common  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "examples/images"
IMAGE_SIZE = 512
SEED_UNET, SEED_VAE, SEED_TEXT = 11, 12, 13
RAW_HEADS = (0, 7)

# Hard-coded from huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5 (formerly
# runwayml/stable-diffusion-v1-5): unet/config.json, vae/config.json, text_encoder/config.json.
# SD 1.4 (CompVis/stable-diffusion-v1-4) has the same values.
SD15_UNET_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": 8,  # diffusers quirk: this is the number of heads (8 heads of 40/80/160/160 dims)
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD15_TEXT_CONFIG = {  # openai/clip-vit-large-patch14 text tower
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}


def build_models(init: str):
    torch.manual_seed(SEED_UNET)
    unet = UNet2DConditionModel(**SD15_UNET_CONFIG).eval()
    torch.manual_seed(SEED_VAE)
    vae = AutoencoderKL(**SD15_VAE_CONFIG).eval()
    torch.manual_seed(SEED_TEXT)
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG)).eval()
    if init == "scaled":
        common.reinit_(unet, SEED_UNET)
        common.reinit_(vae, SEED_VAE)
        common.reinit_(text_encoder, SEED_TEXT)
    return unet, vae, text_encoder


def save_weights(out: Path, unet, vae, text_encoder, write_ldm: bool) -> None:
    unet.save_pretrained(out / "unet", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    (out / "text_encoder").mkdir(parents=True, exist_ok=True)
    text_encoder.config.save_pretrained(out / "text_encoder")
    clip_state = {k: v for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")}
    clip_state = {(k if k.startswith("text_model.") else "text_model." + k): v.contiguous() for k, v in clip_state.items()}
    common.save_safetensors(clip_state, out / "text_encoder/model.safetensors")
    common.write_json(common.model_index(), out / "model_index.json")
    if write_ldm:
        unet_state = load_file(out / "unet/diffusion_pytorch_model.safetensors")
        vae_state = load_file(out / "vae/diffusion_pytorch_model.safetensors")
        ldm = common.unet_state_dict_to_ldm(unet_state, unet.config)
        ldm.update(common.vae_state_dict_to_ldm(vae_state, vae.config))
        ldm.update(common.clip_state_dict_to_ldm(clip_state))
        ldm.update(common.ldm_extra_buffers())
        common.verify_ldm_round_trip(ldm, unet_state, unet.config, vae_state, vae.config, clip_state)
        common.save_safetensors(ldm, out / "sd15-ldm.safetensors")


class FullSizeRecorder:
    """Keeps what fits: mean over heads, two raw heads, raw cross-attention."""

    def __init__(self):
        self.self_mean: list[torch.Tensor] = []
        self.self_heads: list[torch.Tensor] = []
        self.cross: list[torch.Tensor] = []
        self.layers: list[str] = []

    def __call__(self, layer: str, kind: str, probs: torch.Tensor) -> None:
        if kind == "self":
            self.layers.append(layer)
            self.self_mean.append(probs.double().mean(dim=1).to(probs.dtype))
            self.self_heads.append(probs[:, list(RAW_HEADS)].clone())
        else:
            self.cross.append(probs.clone())


def head_mean_sink(layer: str, kind: str, probs: torch.Tensor) -> None:
    """What DiffSeg needs from each layer (mean over heads), then discarded: the timing sink."""
    if kind == "self":
        probs.mean(dim=1)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@torch.no_grad()
def unet_timings(unet, latent, timestep, text_embedding, repeats: int) -> dict:
    def time_it(label: str) -> dict:
        unet(latent, timestep, encoder_hidden_states=text_embedding)  # warm-up
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            unet(latent, timestep, encoder_hidden_states=text_embedding)
            seconds.append(time.perf_counter() - start)
        print(f"{label}: {[round(s, 2) for s in seconds]} s")
        return {"seconds": seconds, "median_s": sorted(seconds)[len(seconds) // 2]}

    unet.set_attn_processor(AttnProcessor2_0())
    sdpa = time_it("UNet fp32, diffusers default AttnProcessor2_0 (SDPA), no capture")
    common.install_capture(unet, head_mean_sink)
    capture = time_it("UNet fp32, capture processor (explicit softmax, mean over heads)")
    unet.set_attn_processor(AttnProcessor2_0())
    return {
        "sdpa_no_capture": sdpa,
        "capture_mean_over_heads": capture,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "latent": list(latent.shape),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads, {platform.platform()}",
        "load_average_after": os.getloadavg(),
    }


@torch.no_grad()
def reference_io(unet, vae, text_encoder) -> tuple[dict, list[str], float]:
    crop = common.centre_crop_u8(IMAGES / "astronaut.png")
    image = common.crop_to_model_input(crop, IMAGE_SIZE)
    moments = vae.quant_conv(vae.encoder(image))
    latent = moments[:, :4] * common.VAE_SCALING_FACTOR
    input_ids = common.empty_prompt_ids()
    text_embedding = text_encoder(input_ids).last_hidden_state
    timestep = torch.tensor([common.DIFFSEG_TIMESTEP], dtype=torch.int64)
    recorder = FullSizeRecorder()
    order = common.install_capture(unet, recorder)
    noise_pred = unet(latent, timestep, encoder_hidden_states=text_embedding).sample
    assert recorder.layers == order
    unet.set_attn_processor(AttnProcessor2_0())
    noise_pred_sdpa = unet(latent, timestep, encoder_hidden_states=text_embedding).sample
    sdpa_gap = (noise_pred - noise_pred_sdpa).abs().max().item()
    print(f"capture processor vs SDPA: max |diff| noise_pred = {sdpa_gap:.3g}")
    time_proj = unet.time_proj(timestep)
    io = {
        "image_crop_u8": torch.from_numpy(crop),
        "image": image,
        "moments": moments,
        "latent": latent,
        "input_ids": input_ids,
        "text_embedding": text_embedding,
        "timestep": timestep,
        "time_proj": time_proj,
        "time_emb": unet.time_embedding(time_proj),
        "noise_pred": noise_pred,
    }
    for i, mean in enumerate(recorder.self_mean):
        io[f"self_attn_mean.{i:02}"] = mean
    for i, heads in enumerate(recorder.self_heads):
        io[f"self_attn_heads.{i:02}"] = heads
    for i, cross in enumerate(recorder.cross):
        io[f"cross_attn.{i:02}"] = cross
    return {k: v.contiguous() for k, v in io.items()}, order, sdpa_gap


@torch.no_grad()
def noise_floor(out: Path, init: str) -> dict:
    """Max |diffusers f32 - diffusers f64| per output, same weights and inputs: the rounding noise
    of any f32 implementation, i.e. the scale the Rust port's error should have. Reads the f32
    reference from OUT/io.safetensors, reruns everything in float64 (~9 GB of RAM)."""
    reference = load_file(out / "io.safetensors")
    unet, vae, text_encoder = (m.double() for m in build_models(init))
    image = reference["image"].double()
    moments = vae.quant_conv(vae.encoder(image))
    text_embedding = text_encoder(reference["input_ids"]).last_hidden_state
    recorder = FullSizeRecorder()
    common.install_capture(unet, recorder)
    # UNet fed with the f32 reference inputs (as the Rust test does), so its gap is its own.
    noise_pred = unet(
        reference["latent"].double(), reference["timestep"], encoder_hidden_states=reference["text_embedding"].double()
    ).sample
    pairs = [
        ("moments", reference["moments"], moments),
        ("latent", reference["latent"], moments[:, :4] * common.VAE_SCALING_FACTOR),
        ("text_embedding", reference["text_embedding"], text_embedding),
        ("noise_pred", reference["noise_pred"], noise_pred),
    ]
    for i, (mean, heads, cross) in enumerate(zip(recorder.self_mean, recorder.self_heads, recorder.cross)):
        pairs.append(("self_attn_mean", reference[f"self_attn_mean.{i:02}"], mean))
        pairs.append(("self_attn_heads", reference[f"self_attn_heads.{i:02}"], heads))
        pairs.append(("cross_attn", reference[f"cross_attn.{i:02}"], cross))
    gaps: dict[str, float] = {}
    for name, f32, f64 in pairs:
        gaps[name] = max(gaps.get(name, 0.0), (f32.double() - f64).abs().max().item())
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output directory (not in the repository; ~5 GB)")
    parser.add_argument("--init", choices=["default", "scaled"], default="default")
    parser.add_argument("--ldm", action="store_true", help="also write the LDM single-file checkpoint (+4.3 GB)")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--noise-floor", action="store_true", help="only compute the f32-vs-f64 gaps of an existing OUT")
    parser.add_argument("--repeats", type=int, default=3, help="timed UNet passes per variant")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    if args.noise_floor:
        gaps = noise_floor(out, args.init)
        common.write_json(gaps, out / "noise_floor.json")
        print(json.dumps(gaps, indent=2))
        return
    unet, vae, text_encoder = build_models(args.init)
    if not args.timing_only:
        save_weights(out, unet, vae, text_encoder, args.ldm)
        io, order, sdpa_gap = reference_io(unet, vae, text_encoder)
        common.save_safetensors(io, out / "io.safetensors")
        rows = "\n".join(f"| `{k}` | {list(v.shape)} | {str(v.dtype).removeprefix('torch.')} |" for k, v in io.items())
        layers = "\n".join(f"| {i:02} | `{name}` |" for i, name in enumerate(order))
        stats = "\n".join(
            f"- `{k}`: min {io[k].min().item():.4g}, max {io[k].max().item():.4g}, std {io[k].float().std().item():.4g}"
            for k in ("image", "moments", "latent", "text_embedding", "time_emb", "noise_pred", "self_attn_mean.00", "self_attn_mean.06")
        )
        (out / "README.md").write_text(
            f"# Full-size SD 1.5 random-weight reference\n\nWritten by tools/reference/sd_fullsize.py (init: {args.init}).\n"
            f"Capture processor vs diffusers SDPA, max |diff| of noise_pred: {sdpa_gap:.3g}\n\n"
            f"| tensor | shape | dtype |\n| --- | --- | --- |\n{rows}\n\n| NN | transformer block |\n| --- | --- |\n{layers}\n\n{stats}\n"
        )
        print(stats)
        latent, text_embedding = io["latent"], io["text_embedding"]
    else:
        latent = torch.randn(1, 4, 64, 64) * 0.2
        text_embedding = torch.randn(1, 77, 768)
    timings = unet_timings(unet, latent, torch.tensor([common.DIFFSEG_TIMESTEP]), text_embedding, args.repeats)
    common.write_json(timings, out / "timing.json")
    print(json.dumps(timings, indent=2))


if __name__ == "__main__":
    main()
