"""Generate the committed tiny SD 1.x parity fixtures for crates/diffseg-sd.

    python tools/reference/sd_fixtures.py            # writes crates/diffseg-sd/tests/fixtures/tiny/
    python tools/reference/sd_fixtures.py --out DIR  # anywhere else

No Stable Diffusion weights exist on this machine, so correctness is proven by numerical parity with
diffusers/transformers on RANDOM weights. The three networks here have SD 1.x's real block structure
(4 down blocks of which 3 with cross-attention, mid block with attention, 4 up blocks, 2 layers per
block, several heads, cross-attention dim different from every block width, CLIP with quick-gelu,
causal mask and final layer norm) but tiny widths, so the fixtures stay a few MB and the Rust tests
run in seconds. Everything is seeded: rerunning the script reproduces the files (bit-identical on the
same torch build; across torch builds the io tensors may move in the last ulp).

Weights are written in every layout and dtype the Rust loader must read (see README.md written next
to them): diffusers folders (fp32 + fp16 variants, bf16 for the VAE) and a single-file checkpoint in
the original LDM/CompVis key layout (fp32 + fp16), whose mapping is verified by converting it back
with diffusers' own LDM->diffusers functions.

CLIP's token embedding is 49408 x 24. To keep the files small in git, every row is zeroed except
KEPT_TOKEN_IDS (which include the empty prompt's 49406 and 49407): runs of zeros compress to almost
nothing in git's zlib-packed objects.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sd_common as common  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "crates/diffseg-sd/tests/fixtures/tiny"
IMAGES = REPO / "examples/images"

IMAGE_SIZE = 128  # latent 16x16 -> attention grids 16, 8, 4 (down/up) and 2 (mid)
SEED_UNET, SEED_VAE, SEED_TEXT = 1, 2, 3
# Rows of the token embedding kept non-zero: BOS/EOS of the empty prompt plus a few ordinary ids
# so that later prompt tests have something non-zero to look at.
KEPT_TOKEN_IDS = [0, 1, 2, 320, 539, 1125, 2368, 49406, 49407]

# Same keys and structure as stable-diffusion-v1-5's unet/config.json; only the widths shrink.
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 8,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[8, 16, 16, 16],
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=4,
    norm_eps=1e-5,
    cross_attention_dim=24,
    # diffusers quirk kept from SD 1.x configs: with num_attention_heads unset, attention_head_dim
    # is used as the NUMBER OF HEADS (SD 1.5: 8 heads of 40/80/160/160 dims). Here: 2 heads.
    attention_head_dim=2,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 16, 16, 16],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=4,
    sample_size=IMAGE_SIZE,
    scaling_factor=common.VAE_SCALING_FACTOR,
)
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=24,  # = UNet cross_attention_dim, different from every UNet width
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=3,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=24,
    # SD 1.x's text_encoder/config.json carries the old CLIP ids (bos 0, eos 2); they only matter
    # for the pooled output, which SD does not use. Kept as in SD for fidelity.
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)


def build_models():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    common.reinit_(unet, SEED_UNET)
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    common.reinit_(vae, SEED_VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).eval()
    common.reinit_(text_encoder, SEED_TEXT)
    with torch.no_grad():
        emb = text_encoder.get_input_embeddings().weight
        keep = torch.zeros(emb.shape[0], dtype=torch.bool)
        keep[KEPT_TOKEN_IDS] = True
        emb[~keep] = 0.0
    return unet, vae, text_encoder


def text_state_dict(text_encoder) -> dict:
    """The published SD 1.x layout `text_model.*` (transformers 4.x). transformers 5 would save the
    same tensors without the `text_model.` prefix; it loads both, real checkpoints have the prefix."""
    state = text_encoder.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    return {(k if k.startswith("text_model.") else "text_model." + k): v.detach().clone() for k, v in state.items()}


def save_weights(out: Path, unet, vae, text_encoder) -> dict:
    """Write the diffusers folders and the LDM single files; returns the diffusers state dicts."""
    unet.save_pretrained(out / "unet", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    unet_state = load_file(out / "unet/diffusion_pytorch_model.safetensors")
    vae_state = load_file(out / "vae/diffusion_pytorch_model.safetensors")
    common.save_safetensors(common.cast_floats(unet_state, torch.float16), out / "unet/diffusion_pytorch_model.fp16.safetensors")
    common.save_safetensors(common.cast_floats(vae_state, torch.float16), out / "vae/diffusion_pytorch_model.fp16.safetensors")
    common.save_safetensors(common.cast_floats(vae_state, torch.bfloat16), out / "vae/diffusion_pytorch_model.bf16.safetensors")

    (out / "text_encoder").mkdir(parents=True, exist_ok=True)
    text_encoder.config.save_pretrained(out / "text_encoder")
    clip_state = text_state_dict(text_encoder)
    common.save_safetensors(clip_state, out / "text_encoder/model.safetensors")
    common.save_safetensors(common.cast_floats(clip_state, torch.float16), out / "text_encoder/model.fp16.safetensors")
    common.write_json(common.model_index(), out / "model_index.json")

    ldm = {}
    ldm.update(common.unet_state_dict_to_ldm(unet_state, unet.config))
    ldm.update(common.vae_state_dict_to_ldm(vae_state, vae.config))
    ldm.update(common.clip_state_dict_to_ldm(clip_state))
    ldm.update(common.ldm_extra_buffers())
    common.verify_ldm_round_trip(ldm, unet_state, unet.config, vae_state, vae.config, clip_state)
    common.save_safetensors(ldm, out / "tiny-ldm.safetensors")
    common.save_safetensors(common.cast_floats(ldm, torch.float16), out / "tiny-ldm.fp16.safetensors")
    return {"unet": unet_state, "vae": vae_state, "text_encoder": clip_state}


def check_reloads(out: Path, unet, vae, text_encoder, latent, text_embedding, image) -> None:
    """The written folders must load back into diffusers/transformers and give the same outputs
    (proves the files, including the `text_model.`-prefixed text encoder, are what the libraries read)."""
    with torch.no_grad():
        text2 = CLIPTextModel.from_pretrained(out / "text_encoder").eval()
        assert torch.equal(text2(common.empty_prompt_ids()).last_hidden_state, text_embedding), "text_encoder reload"
        vae2 = AutoencoderKL.from_pretrained(out / "vae").eval()
        assert torch.equal(vae2.encode(image).latent_dist.mean * common.VAE_SCALING_FACTOR, latent), "vae reload"
        unet2 = UNet2DConditionModel.from_pretrained(out / "unet").eval()
        for a, b in zip(unet.state_dict().values(), unet2.state_dict().values()):
            assert torch.equal(a, b), "unet reload"
    try:  # diffusers' own single-file loader, offline, with our local configs
        with torch.no_grad():
            unet3 = UNet2DConditionModel.from_single_file(
                str(out / "tiny-ldm.safetensors"), config=str(out), subfolder="unet", local_files_only=True
            )
            vae3 = AutoencoderKL.from_single_file(
                str(out / "tiny-ldm.safetensors"), config=str(out), subfolder="vae", local_files_only=True
            )
        for a, b in zip(unet.state_dict().values(), unet3.state_dict().values()):
            assert torch.equal(a, b), "unet from_single_file"
        for a, b in zip(vae.state_dict().values(), vae3.state_dict().values()):
            assert torch.equal(a, b), "vae from_single_file"
        print("from_single_file: unet and vae load bit-identical from tiny-ldm.safetensors")
    except Exception as error:  # noqa: BLE001 - informative only; the round trip above is the proof
        print(f"from_single_file could not be used offline ({type(error).__name__}: {error}); round trip proof stands")


@torch.no_grad()
def run_case(unet, vae, text_encoder, image: torch.Tensor, check_sdpa: bool = True):
    batch = image.shape[0]
    moments = vae.quant_conv(vae.encoder(image))
    posterior_mean = moments[:, : moments.shape[1] // 2]
    assert torch.equal(posterior_mean, vae.encode(image).latent_dist.mean)
    latent = posterior_mean * common.VAE_SCALING_FACTOR
    input_ids = common.empty_prompt_ids(batch)
    text_embedding = text_encoder(input_ids).last_hidden_state
    timestep = torch.tensor([common.DIFFSEG_TIMESTEP], dtype=torch.int64)

    recorder = common.Recorder()
    order = common.install_capture(unet, recorder)
    noise_pred = unet(latent, timestep, encoder_hidden_states=text_embedding).sample
    unet.set_attn_processor(AttnProcessor2_0())
    if check_sdpa:
        noise_pred_sdpa = unet(latent, timestep, encoder_hidden_states=text_embedding).sample
        # The capture processor must not change the network: it matches diffusers' SDPA default.
        torch.testing.assert_close(noise_pred, noise_pred_sdpa, rtol=1e-5, atol=1e-5)

    selfs = [(layer, p) for layer, kind, p in recorder.calls if kind == "self"]
    crosses = [(layer, p) for layer, kind, p in recorder.calls if kind == "cross"]
    assert [layer for layer, _ in selfs] == order and [layer for layer, _ in crosses] == order, "execution order"
    assert [kind for _, kind, _ in recorder.calls] == ["self", "cross"] * len(order)
    time_proj = unet.time_proj(timestep.expand(batch)).to(latent.dtype)
    time_emb = unet.time_embedding(time_proj)
    return dict(
        moments=moments,
        latent=latent,
        input_ids=input_ids,
        text_embedding=text_embedding,
        timestep=timestep,
        time_proj=time_proj,
        time_emb=time_emb,
        noise_pred=noise_pred,
        selfs=selfs,
        crosses=crosses,
        order=order,
    )


@torch.no_grad()
def float32_noise_floor(unet, vae, text_encoder, image: torch.Tensor, reference: dict) -> dict:
    """Max |f32 diffusers - f64 diffusers| per output: the rounding noise of an fp32 implementation
    of the same maths, i.e. the scale a correct Rust f32 port should land within (tolerance guidance)."""
    import copy

    unet64, vae64, text64 = (copy.deepcopy(m).double() for m in (unet, vae, text_encoder))
    exact = run_case(unet64, vae64, text64, image.double(), check_sdpa=False)
    gaps = {}
    for name in ("moments", "latent", "text_embedding", "time_emb", "noise_pred"):
        gaps[name] = (reference[name].double() - exact[name]).abs().max().item()
    for kind in ("selfs", "crosses"):
        gaps[kind] = max((a.double() - b).abs().max().item() for (_, a), (_, b) in zip(reference[kind], exact[kind]))
    return gaps


def describe(tensors: dict) -> str:
    dtype_names = {torch.float32: "f32", torch.int64: "i64", torch.uint8: "u8", torch.float16: "f16"}
    return "\n".join(f"| `{k}` | {list(v.shape)} | {dtype_names[v.dtype]} |" for k, v in tensors.items())


def write_readme(out: Path, io: dict, order: list[str], stats: str, floor: dict) -> None:
    floor_rows = "\n".join(f"| `{k}` | {v:.3g} |" for k, v in floor.items())
    layer_rows = "\n".join(f"| {i:02} | `{name}` |" for i, name in enumerate(order))
    text = f"""# Tiny SD 1.x parity fixtures

Generated by `tools/reference/sd_fixtures.py` (rerun it to regenerate; seeded). Random weights,
SD 1.x block structure, tiny widths. Reference: diffusers 0.42.1, transformers 5.24.0, torch 2.15 (CPU, fp32).

## Configurations

- UNet (`unet/config.json`): block_out_channels [8, 16, 16, 16], layers_per_block 2, norm_num_groups 4,
  cross_attention_dim 24, `attention_head_dim` 2 = **2 heads** (diffusers/SD quirk: the field is the head
  count when `num_attention_heads` is unset), head dims 4/8/8/8, sample_size 16 (latent 16x16).
  Down: CrossAttnDownBlock2D x3 + DownBlock2D; mid UNetMidBlock2DCrossAttn; up: UpBlock2D + CrossAttnUpBlock2D x3.
  Time embedding: sinusoid of block_out_channels[0] = 8 dims (flip_sin_to_cos: [cos, sin]), MLP to 32.
- VAE (`vae/config.json`): block_out_channels [8, 16, 16, 16], layers_per_block 2, norm_num_groups 4,
  latent_channels 4, mid attention with 1 head of 16 dims. Only encoder + quant_conv are needed.
- Text encoder (`text_encoder/config.json`): CLIP, vocab 49408, hidden 24, 2 layers, 3 heads, intermediate 96,
  quick_gelu, 77 positions. Token embedding rows are ZERO except ids {KEPT_TOKEN_IDS}.
- Weights: seeded normal(0, 1/sqrt(fan_in)) matrices, normal(0, 0.3) embeddings, norm scales 1 + N(0, 0.2),
  biases N(0, 0.1).

## Weight files

| file | layout | dtype |
| --- | --- | --- |
| `unet/diffusion_pytorch_model.safetensors` | diffusers | f32 |
| `unet/diffusion_pytorch_model.fp16.safetensors` | diffusers | f16 |
| `vae/diffusion_pytorch_model.safetensors` | diffusers (encoder + decoder) | f32 |
| `vae/diffusion_pytorch_model.fp16.safetensors` | diffusers | f16 |
| `vae/diffusion_pytorch_model.bf16.safetensors` | diffusers | bf16 |
| `text_encoder/model.safetensors` | transformers, `text_model.*` keys (as published SD 1.x files) | f32 |
| `text_encoder/model.fp16.safetensors` | same | f16 |
| `tiny-ldm.safetensors` | original LDM single file | f32 (+ i64 position_ids) |
| `tiny-ldm.fp16.safetensors` | same | f16 (+ i64 position_ids) |

The fp16/bf16 files are the f32 weights cast (round to nearest), so loading them and upcasting must
reproduce the f32 files to within the cast's rounding.

The LDM file has `model.diffusion_model.*`, `first_stage_model.*` (VAE mid attention q/k/v/proj_out as
1x1 convs `[c, c, 1, 1]`, decoder up blocks numbered in reverse) and `cond_stage_model.transformer.text_model.*`,
plus the non-network entries real SD 1.x checkpoints carry and a loader must skip: the DDPM schedule
buffers (`betas`, `alphas_cumprod`, ... 12 vectors of 1000) and
`cond_stage_model.transformer.text_model.embeddings.position_ids` ([1, 77] i64). The mapping was verified
by converting the file back with diffusers' `convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint` /
`convert_ldm_clip_checkpoint`: every tensor comes back bit-identical under its diffusers name.

## `io.safetensors`

Image: `examples/images/astronaut.png`, centre square crop (`image_crop_u8`, HWC RGB), resized to 128 with
torch `interpolate(bilinear, align_corners=False, antialias=False)` (= TF2 default resize), then `x / 127.5 - 1`.
`latent` = posterior mean (first 4 channels of `moments`) x 0.18215. `text_embedding` = CLIP final layer norm
output for ids 49406 + 76 x 49407. `noise_pred` = UNet output at t = 300 with `latent` and `text_embedding`.
`self_attn.NN` = `softmax(Q K^T / sqrt(head_dim))` of attn1 of transformer block NN, `[batch, heads, queries, keys]`,
queries/keys row-major over the h x w grid; `cross_attn.NN` the same for attn2 (keys = 77 tokens).
`*_b2` = a batch of two images (astronaut, chelsea.png centre crop) through the same models; for batch 2
only the self-attention maps with <= 64 queries are stored (size), the 16x16 layers are covered by `noise_pred_b2`.

| tensor | shape | dtype |
| --- | --- | --- |
{describe(io)}

## diffusers details a port must match (all exercised by these fixtures)

- `attention_head_dim` in SD 1.x UNet configs is the number of heads (2 here, 8 in SD 1.5); head dim = channels / heads.
- Epsilons: UNet resnets and `conv_norm_out` GroupNorm eps = `norm_eps` 1e-5, but the Transformer2DModel `norm`
  GroupNorm uses eps 1e-6; transformer-block LayerNorms 1e-5; every VAE GroupNorm 1e-6; CLIP LayerNorms 1e-5.
- UNet downsamplers: 3x3 conv stride 2 padding 1. VAE downsamplers: padding 0 after an asymmetric pad of
  (0 left, 1 right, 0 top, 1 bottom).
- VAE mid attention: one head of all channels (scale 1/sqrt(channels)), GroupNorm before, softmax in f32,
  residual added; LDM stores its q/k/v/proj_out as 1x1 convs.
- Timestep embedding: `flip_sin_to_cos` true ([cos, sin]), `freq_shift` 0, half = block_out_channels[0] / 2.
- CLIP: causal mask, quick_gelu (x * sigmoid(1.702 x)), final layer norm; positions 0..76.

## Captured layers in execution order (NN)

| NN | UNet module (attn1 = self, attn2 = cross) |
| --- | --- |
{layer_rows}

## Value ranges (to judge tolerances)

{stats}

## fp32 noise floor

Max |diffusers fp32 - diffusers fp64| on the same weights and input (`selfs`/`crosses`: over all 16 layers).
A correct f32 port differs from the f32 reference by about this much (other summation orders);
tolerances a few times these are tight, 10x is generous.

| output | max abs gap |
| --- | --- |
{floor_rows}
"""
    (out / "README.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)

    unet, vae, text_encoder = build_models()
    save_weights(out, unet, vae, text_encoder)

    crop = common.centre_crop_u8(IMAGES / "astronaut.png")
    image = common.crop_to_model_input(crop, IMAGE_SIZE)
    one = run_case(unet, vae, text_encoder, image)
    check_reloads(out, unet, vae, text_encoder, one["latent"], one["text_embedding"], image)

    image_b2 = torch.cat([image, common.crop_to_model_input(common.centre_crop_u8(IMAGES / "chelsea.png"), IMAGE_SIZE)])
    two = run_case(unet, vae, text_encoder, image_b2)
    # Batch element 0 must equal the single-image run (batching is per-sample independent).
    torch.testing.assert_close(two["noise_pred"][:1], one["noise_pred"], rtol=1e-5, atol=1e-5)

    io = {
        "image_crop_u8": torch.from_numpy(crop),
        "image": image,
        "moments": one["moments"],
        "latent": one["latent"],
        "input_ids": one["input_ids"],
        "text_embedding": one["text_embedding"],
        "timestep": one["timestep"],
        "time_proj": one["time_proj"],
        "time_emb": one["time_emb"],
        "noise_pred": one["noise_pred"],
    }
    for i, (_, probs) in enumerate(one["selfs"]):
        io[f"self_attn.{i:02}"] = probs
    for i, (_, probs) in enumerate(one["crosses"]):
        io[f"cross_attn.{i:02}"] = probs
    io.update(image_b2=image_b2, moments_b2=two["moments"], latent_b2=two["latent"], noise_pred_b2=two["noise_pred"])
    for i, (_, probs) in enumerate(two["selfs"]):
        if probs.shape[2] <= 64:
            io[f"self_attn_b2.{i:02}"] = probs
    io = {k: v.contiguous() for k, v in io.items()}
    common.save_safetensors(io, out / "io.safetensors")

    stats = "\n".join(
        f"- `{k}`: min {v.min().item():.4g}, max {v.max().item():.4g}, std {v.float().std().item():.4g}"
        for k, v in io.items()
        if k in ("image", "moments", "latent", "text_embedding", "time_emb", "noise_pred", "self_attn.00", "self_attn.06", "cross_attn.00")
    )
    floor = float32_noise_floor(unet, vae, text_encoder, image, one)
    write_readme(out, io, one["order"], stats, floor)
    print(stats)
    print(floor)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
