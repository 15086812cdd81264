"""Shared helpers for the SD 1.x reference generators (sd_fixtures.py, sd_fullsize.py).

Everything here mirrors what diffusers/transformers compute, so the Rust port (crates/diffseg-sd)
can be checked against it on random weights:

- image preparation exactly as docs/method.md section 1 (centre crop, TF2-style
  bilinear half-pixel resize WITHOUT antialiasing, [-1, 1] scaling);
- an attention processor that computes attention exactly like diffusers' `AttnProcessor`
  (`softmax(Q K^T * scale)` via `Attention.get_attention_scores`) and hands the probabilities to a sink;
- the diffusers -> original LDM/CompVis single-file key mapping (the inverse of diffusers'
  `loaders/single_file_utils.py` conversion), verified by converting back with diffusers' own functions;
- the random re-initialisation that makes parity meaningful (non-trivial norms and biases).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

# The empty prompt for CLIP ViT-L/14: BOS (49406) then EOS (49407) as padding up to 77 tokens.
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407
TEXT_LENGTH = 77
VAE_SCALING_FACTOR = 0.18215
DIFFSEG_TIMESTEP = 300


# ----------------------------------------------------------------------------------------------
# Image preparation (method section 1)
# ----------------------------------------------------------------------------------------------


def centre_crop_u8(path: str | Path) -> np.ndarray:
    """Centre square crop of side min(H, W), top-left at ((H - c) // 2, (W - c) // 2), as uint8 HWC RGB."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
    height, width, _ = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return pixels[top : top + side, left : left + side].copy()


def crop_to_model_input(crop_u8: np.ndarray, size: int) -> torch.Tensor:
    """uint8 HWC crop -> [1, 3, size, size] f32 in [-1, 1].

    TF2 `tf.image.resize` default = bilinear, half-pixel centres, no antialiasing even when
    shrinking, kept in float; torch's `interpolate(bilinear, align_corners=False, antialias=False)`
    computes exactly that. Resize first (on 0..255 floats), then scale `x / 127.5 - 1`.
    """
    chw = torch.from_numpy(crop_u8).permute(2, 0, 1).unsqueeze(0).to(torch.float32)
    resized = F.interpolate(chw, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return resized / 127.5 - 1.0


def empty_prompt_ids(batch: int = 1) -> torch.Tensor:
    ids = torch.full((batch, TEXT_LENGTH), EOS_TOKEN_ID, dtype=torch.int64)
    ids[:, 0] = BOS_TOKEN_ID
    return ids


# ----------------------------------------------------------------------------------------------
# Attention capture
# ----------------------------------------------------------------------------------------------

# sink(layer_name, kind, probs) with kind in {"self", "cross"} and probs [batch, heads, queries, keys]
AttentionSink = Callable[[str, str, torch.Tensor], None]


class CaptureAttnProcessor:
    """diffusers' `AttnProcessor` (the non-SDPA one), restricted to the UNet transformer case, that
    also hands the attention probabilities to a sink.

    The probabilities come from `attn.get_attention_scores`, i.e. exactly diffusers'
    `softmax(baddbmm(Q, K^T, alpha=attn.scale))` with `attn.scale = 1 / sqrt(head_dim)`.
    """

    def __init__(self, layer_name: str, sink: AttentionSink):
        self.layer_name = layer_name
        self.sink = sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        assert attn.spatial_norm is None and attn.group_norm is None and hidden_states.ndim == 3
        assert attention_mask is None and not attn.residual_connection and attn.rescale_output_factor == 1.0
        batch, _, _ = hidden_states.shape
        kind = "self" if encoder_hidden_states is None else "cross"
        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key = attn.to_k(context)
        value = attn.to_v(context)
        query = attn.head_to_batch_dim(query)  # [batch * heads, queries, head_dim], batch-major
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        probs = attn.get_attention_scores(query, key, None)  # [batch * heads, queries, keys]
        self.sink(self.layer_name, kind, probs.view(batch, attn.heads, probs.shape[1], probs.shape[2]))
        out = torch.bmm(probs, value)
        out = attn.batch_to_head_dim(out)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


class Recorder:
    """An `AttentionSink` that keeps every call: `calls` holds (layer, kind, probs) in execution order."""

    def __init__(self):
        self.calls: list[tuple[str, str, torch.Tensor]] = []

    def __call__(self, layer: str, kind: str, probs: torch.Tensor) -> None:
        self.calls.append((layer, kind, probs.detach().clone()))


def install_capture(unet, sink: AttentionSink) -> list[str]:
    """Install a capture processor on every UNet attention; returns the transformer-block names in
    execution order (down blocks, mid block, up blocks; attn1 then attn2 inside each block)."""
    processors = {}
    for name in unet.attn_processors.keys():
        # name looks like "down_blocks.0.attentions.1.transformer_blocks.0.attn1.processor"
        layer = name[: -len(".attn1.processor")] if name.endswith(".attn1.processor") else name[: -len(".attn2.processor")]
        processors[name] = CaptureAttnProcessor(layer, sink)
    unet.set_attn_processor(processors)
    return execution_order(unet)


def execution_order(unet) -> list[str]:
    order = []
    for b, block in enumerate(unet.down_blocks):
        for a, _ in enumerate(getattr(block, "attentions", []) or []):
            order.append(f"down_blocks.{b}.attentions.{a}.transformer_blocks.0")
    for a, _ in enumerate(unet.mid_block.attentions):
        order.append(f"mid_block.attentions.{a}.transformer_blocks.0")
    for b, block in enumerate(unet.up_blocks):
        for a, _ in enumerate(getattr(block, "attentions", []) or []):
            order.append(f"up_blocks.{b}.attentions.{a}.transformer_blocks.0")
    return order


# ----------------------------------------------------------------------------------------------
# Random re-initialisation
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def reinit_(model: torch.nn.Module, seed: int, gain: float = 1.0, embedding_std: float = 0.3) -> None:
    """Deterministic, non-trivial random weights with sane activations.

    - matrices / conv kernels: normal(0, gain / sqrt(fan_in)) (unit-variance-preserving, so deep
      stacks neither explode nor vanish);
    - embeddings (token / position): normal(0, embedding_std);
    - 1-D weights (GroupNorm / LayerNorm scales): 1 + normal(0, 0.2), so a port that ignores them fails;
    - biases: normal(0, 0.1), so a port that drops a bias fails.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "embedding" in name and param.ndim == 2:
            values = torch.randn(param.shape, generator=generator) * embedding_std
        elif param.ndim >= 2:
            fan_in = math.prod(param.shape[1:])
            values = torch.randn(param.shape, generator=generator) * (gain / math.sqrt(fan_in))
        elif name.endswith("bias"):
            values = torch.randn(param.shape, generator=generator) * 0.1
        else:
            values = 1.0 + torch.randn(param.shape, generator=generator) * 0.2
        param.copy_(values.to(param.dtype))


# ----------------------------------------------------------------------------------------------
# diffusers -> original LDM (CompVis) single-file keys
# ----------------------------------------------------------------------------------------------

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_CLIP_PREFIX = "cond_stage_model.transformer."

_UNET_DIRECT = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET_RENAMES = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
]


def _rename_unet_resnet(rest: str) -> str:
    for old, new in _UNET_RESNET_RENAMES:
        if rest.startswith(old):
            return new + rest[len(old) :]
    raise KeyError(f"unknown UNet resnet key {rest}")


def unet_key_to_ldm(key: str, layers_per_block: int, up_blocks_with_attention: set[int]) -> str:
    """One diffusers UNet2DConditionModel key -> its `model.diffusion_model.*` key.

    LDM numbers the UNet as a flat list: input_blocks.0 = conv_in, then per down block
    `layers_per_block` (resnet, attention) pairs followed by one downsampler entry; middle_block
    = [resnet, attention, resnet]; output_blocks = per up block `layers_per_block + 1` entries of
    (resnet, attention, upsampler) where the upsampler sits at index 1 when the block has no
    attention and 2 when it has.
    """
    stride = layers_per_block + 1
    prefix, _, param = key.rpartition(".")
    if prefix in _UNET_DIRECT:
        return f"{LDM_UNET_PREFIX}{_UNET_DIRECT[prefix]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        b, l, rest = int(m[1]), int(m[2]), m[3]
        return f"{LDM_UNET_PREFIX}input_blocks.{1 + b * stride + l}.0.{_rename_unet_resnet(rest)}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        b, l, rest = int(m[1]), int(m[2]), m[3]
        return f"{LDM_UNET_PREFIX}input_blocks.{1 + b * stride + l}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
        b = int(m[1])
        return f"{LDM_UNET_PREFIX}input_blocks.{(b + 1) * stride}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{LDM_UNET_PREFIX}middle_block.{2 * int(m[1])}.{_rename_unet_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"{LDM_UNET_PREFIX}middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        b, l, rest = int(m[1]), int(m[2]), m[3]
        return f"{LDM_UNET_PREFIX}output_blocks.{b * stride + l}.0.{_rename_unet_resnet(rest)}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        b, l, rest = int(m[1]), int(m[2]), m[3]
        return f"{LDM_UNET_PREFIX}output_blocks.{b * stride + l}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key):
        b = int(m[1])
        slot = 2 if b in up_blocks_with_attention else 1
        return f"{LDM_UNET_PREFIX}output_blocks.{b * stride + layers_per_block}.{slot}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet key {key}")


_VAE_ATTENTION_RENAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def vae_key_to_ldm(key: str, num_up_blocks: int) -> str:
    """One diffusers AutoencoderKL key -> its `first_stage_model.*` key (tensor reshape handled by
    `vae_state_dict_to_ldm`). The LDM decoder numbers its up blocks in reverse."""

    def resnet(rest: str) -> str:
        return rest.replace("conv_shortcut.", "nin_shortcut.")

    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", key):
        return f"{LDM_VAE_PREFIX}{m[1]}.norm_out.{m[2]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"{LDM_VAE_PREFIX}encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
        return f"{LDM_VAE_PREFIX}encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"{LDM_VAE_PREFIX}decoder.up.{num_up_blocks - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key):
        return f"{LDM_VAE_PREFIX}decoder.up.{num_up_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{LDM_VAE_PREFIX}{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", key):
        return f"{LDM_VAE_PREFIX}{m[1]}.mid.attn_1.{_VAE_ATTENTION_RENAMES[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"(encoder\.conv_in|encoder\.conv_out|decoder\.conv_in|decoder\.conv_out|quant_conv|post_quant_conv)\.(weight|bias)", key):
        return f"{LDM_VAE_PREFIX}{key}"
    raise KeyError(f"no LDM name for VAE key {key}")


def unet_state_dict_to_ldm(state: dict, config) -> dict:
    up_with_attention = {i for i, t in enumerate(config["up_block_types"]) if "CrossAttn" in t}
    return {unet_key_to_ldm(k, config["layers_per_block"], up_with_attention): v for k, v in state.items()}


def vae_state_dict_to_ldm(state: dict, config) -> dict:
    out = {}
    for key, value in state.items():
        ldm_key = vae_key_to_ldm(key, len(config["up_block_types"]))
        # LDM's VAE attention uses 1x1 convolutions for q/k/v/proj_out: [c, c] -> [c, c, 1, 1].
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[ldm_key] = value
    return out


def clip_state_dict_to_ldm(state: dict) -> dict:
    return {LDM_CLIP_PREFIX + k: v for k, v in state.items()}


def ldm_extra_buffers(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> dict:
    """Non-network entries that real SD 1.x LDM checkpoints carry (the DDPM schedule of
    LatentDiffusion and CLIP's `position_ids` buffer). A loader must skip them."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    buffers = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
    }
    buffers = {k: v.to(torch.float32) for k, v in buffers.items()}
    buffers[LDM_CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(TEXT_LENGTH, dtype=torch.int64)[None]
    return buffers


def verify_ldm_round_trip(ldm: dict, unet_state: dict, unet_config, vae_state: dict, vae_config, clip_state: dict) -> None:
    """Convert our LDM dict back with diffusers' own LDM->diffusers functions and require every
    tensor to come back bit-identical under its original name (and nothing extra)."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    def same(name: str, ours: dict, back: dict) -> None:
        if set(ours) != set(back):
            raise AssertionError(f"{name}: key sets differ: missing {sorted(set(ours) - set(back))[:5]}, extra {sorted(set(back) - set(ours))[:5]}")
        for key, value in ours.items():
            if back[key].shape != value.shape or not torch.equal(back[key], value):
                raise AssertionError(f"{name}: tensor {key} differs after the round trip")

    same("unet", unet_state, convert_ldm_unet_checkpoint(dict(ldm), dict(unet_config)))
    same("vae", vae_state, convert_ldm_vae_checkpoint(dict(ldm), dict(vae_config)))
    clip_back = convert_ldm_clip_checkpoint({k: v for k, v in ldm.items() if k.startswith(LDM_CLIP_PREFIX)})
    clip_back.pop("text_model.embeddings.position_ids")
    same("text_encoder", clip_state, clip_back)


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------


def cast_floats(state: dict, dtype: torch.dtype) -> dict:
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def save_safetensors(state: dict, path: Path) -> None:
    """Write through a temporary name and rename, so no half-written file is ever left behind."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def model_index() -> dict:
    """A diffusers `model_index.json` for a StableDiffusionPipeline folder (only the three networks
    DiffSeg uses carry weights here; tokenizer/scheduler/safety checker entries are null)."""
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": [None, None],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": [None, None],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
