//! The original LDM/CompVis single-file key layout, mapped onto diffusers
//! keys.
//!
//! The rules follow diffusers' own conversion
//! (`diffusers/loaders/single_file_utils.py`: `convert_ldm_unet_checkpoint`,
//! `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`), written here
//! as pure functions over key strings, segment by segment:
//!
//! | LDM (after the component prefix) | diffusers |
//! |---|---|
//! | `time_embed.{0,2}` | `time_embedding.linear_{1,2}` |
//! | `input_blocks.0.0` | `conv_in` |
//! | `input_blocks.i.0` (resnet) | `down_blocks.b.resnets.l`, b = (i-1) / (L+1), l = (i-1) % (L+1) |
//! | `input_blocks.i.0.op` | `down_blocks.b.downsamplers.0.conv` |
//! | `input_blocks.i.1` | `down_blocks.b.attentions.l` |
//! | `middle_block.{0,1,2}` | `mid_block.resnets.0`, `mid_block.attentions.0`, `mid_block.resnets.1` |
//! | `output_blocks.i.0` | `up_blocks.b.resnets.l`, b = i / (L+1), l = i % (L+1) |
//! | `output_blocks.i.1` | `up_blocks.b.attentions.l` |
//! | `output_blocks.i.{1,2}.conv` | `up_blocks.b.upsamplers.0.conv` |
//! | `out.{0,2}` | `conv_norm_out`, `conv_out` |
//! | resnet `in_layers.{0,2}`, `out_layers.{0,3}`, `emb_layers.1`, `skip_connection` | `norm1`, `conv1`, `norm2`, `conv2`, `time_emb_proj`, `conv_shortcut` |
//! | VAE `encoder.down.i.block.j` | `encoder.down_blocks.i.resnets.j` (`nin_shortcut` → `conv_shortcut`) |
//! | VAE `encoder.down.i.downsample.conv` | `encoder.down_blocks.i.downsamplers.0.conv` |
//! | VAE `encoder.mid.block_{1,2}` | `encoder.mid_block.resnets.{0,1}` |
//! | VAE `encoder.mid.attn_1.{norm,q,k,v,proj_out}` | `encoder.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}` (1×1 conv → linear) |
//! | VAE `encoder.norm_out` | `encoder.conv_norm_out` |
//! | CLIP `cond_stage_model.transformer.text_model.*` | `text_model.*` |
//!
//! L is the UNet's `layers_per_block` (2 in SD 1.x).

use super::diffusers;
use super::KeyRole;

/// Prefix of the UNet's keys in an LDM checkpoint.
pub(super) const LDM_UNET_PREFIX: &str = "model.diffusion_model.";
/// Prefix of the VAE's keys in an LDM checkpoint.
pub(super) const LDM_VAE_PREFIX: &str = "first_stage_model.";
/// Prefix of the CLIP text encoder's keys in an SD 1.x LDM checkpoint.
pub(super) const LDM_TEXT_ENCODER_PREFIX: &str = "cond_stage_model.transformer.";
/// Prefix of everything conditioning-related (SD 2.x OpenCLIP lives under
/// `cond_stage_model.model.`).
const LDM_COND_STAGE_PREFIX: &str = "cond_stage_model.";

/// The prefix that marks a key as belonging to an LDM checkpoint, if any.
pub(super) fn ldm_prefix_of(key: &str) -> Option<&'static str> {
    [
        LDM_UNET_PREFIX,
        LDM_VAE_PREFIX,
        LDM_COND_STAGE_PREFIX,
        "model_ema.",
    ]
    .into_iter()
    .find(|prefix| key.starts_with(prefix))
}

/// What LDM checkpoint key `key` means for the UNet, whose down blocks hold
/// `layers_per_block` ResNets (the LDM block numbering depends on it). Keys
/// of the other networks, of EMA weights and of the scheduler buffers
/// (`betas`, `alphas_cumprod`, ...) are [`KeyRole::NotNeeded`].
pub(super) fn unet_key_role(key: &str, layers_per_block: usize) -> KeyRole {
    match key.strip_prefix(LDM_UNET_PREFIX) {
        Some(rest) => to_role(unet_key(rest, layers_per_block), false),
        None => KeyRole::NotNeeded,
    }
}

/// What LDM checkpoint key `key` means for the VAE encoder.
pub(super) fn vae_key_role(key: &str) -> KeyRole {
    match key.strip_prefix(LDM_VAE_PREFIX) {
        Some(rest) => vae_role(rest),
        None => KeyRole::NotNeeded,
    }
}

/// What LDM checkpoint key `key` means for the CLIP text encoder.
pub(super) fn text_encoder_key_role(key: &str) -> KeyRole {
    match key.strip_prefix(LDM_TEXT_ENCODER_PREFIX) {
        Some(rest) => diffusers::text_encoder_key_role(rest),
        // `cond_stage_model.model.*` is SD 2.x OpenCLIP, which this
        // text encoder is not: report it rather than load nothing silently.
        None if key.starts_with(LDM_COND_STAGE_PREFIX) => KeyRole::Unexpected,
        None => KeyRole::NotNeeded,
    }
}

fn to_role(mapped: Option<String>, conv_to_linear: bool) -> KeyRole {
    match mapped {
        Some(key) => KeyRole::Load {
            key,
            conv_to_linear,
        },
        None => KeyRole::Unexpected,
    }
}

/// `segments` joined after `head`, e.g. `join("conv_in", &["weight"])`.
fn join(head: &str, segments: &[&str]) -> String {
    std::iter::once(head)
        .chain(segments.iter().copied())
        .collect::<Vec<_>>()
        .join(".")
}

/// Diffusers name of a UNet key (without `model.diffusion_model.`).
fn unet_key(key: &str, layers_per_block: usize) -> Option<String> {
    let segments: Vec<&str> = key.split('.').collect();
    let per_block = layers_per_block + 1;
    match segments.as_slice() {
        ["time_embed", "0", param] => Some(join("time_embedding.linear_1", &[param])),
        ["time_embed", "2", param] => Some(join("time_embedding.linear_2", &[param])),
        ["out", "0", param] => Some(join("conv_norm_out", &[param])),
        ["out", "2", param] => Some(join("conv_out", &[param])),
        ["input_blocks", "0", "0", param] => Some(join("conv_in", &[param])),
        ["input_blocks", index, part, rest @ ..] => {
            let index: usize = index.parse().ok().filter(|&i| i > 0)?;
            let (block, layer) = ((index - 1) / per_block, (index - 1) % per_block);
            match (*part, rest) {
                ("0", ["op", param]) => Some(join(
                    &format!("down_blocks.{block}.downsamplers.0.conv"),
                    &[param],
                )),
                ("0", resnet) => {
                    resnet_key(&format!("down_blocks.{block}.resnets.{layer}"), resnet)
                }
                ("1", attention) if !attention.is_empty() => Some(join(
                    &format!("down_blocks.{block}.attentions.{layer}"),
                    attention,
                )),
                _ => None,
            }
        }
        ["middle_block", part, rest @ ..] => match *part {
            "0" => resnet_key("mid_block.resnets.0", rest),
            "1" if !rest.is_empty() => Some(join("mid_block.attentions.0", rest)),
            "2" => resnet_key("mid_block.resnets.1", rest),
            _ => None,
        },
        ["output_blocks", index, part, rest @ ..] => {
            let index: usize = index.parse().ok()?;
            let (block, layer) = (index / per_block, index % per_block);
            match (*part, rest) {
                ("0", resnet) => resnet_key(&format!("up_blocks.{block}.resnets.{layer}"), resnet),
                ("1" | "2", ["conv", param]) => Some(join(
                    &format!("up_blocks.{block}.upsamplers.0.conv"),
                    &[param],
                )),
                ("1", attention) if !attention.is_empty() => Some(join(
                    &format!("up_blocks.{block}.attentions.{layer}"),
                    attention,
                )),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Diffusers name of a UNet `ResBlock` parameter under `target`.
fn resnet_key(target: &str, segments: &[&str]) -> Option<String> {
    let renamed = match segments {
        ["in_layers", "0", param] => ["norm1", param],
        ["in_layers", "2", param] => ["conv1", param],
        ["out_layers", "0", param] => ["norm2", param],
        ["out_layers", "3", param] => ["conv2", param],
        ["emb_layers", "1", param] => ["time_emb_proj", param],
        ["skip_connection", param] => return Some(join(target, &["conv_shortcut", param])),
        _ => return None,
    };
    Some(join(target, &renamed))
}

/// Role of a VAE key (without `first_stage_model.`): only the encoder and
/// `quant_conv` are loaded.
fn vae_role(key: &str) -> KeyRole {
    let segments: Vec<&str> = key.split('.').collect();
    match segments.as_slice() {
        ["decoder", ..] | ["post_quant_conv", ..] | ["loss", ..] => KeyRole::NotNeeded,
        ["quant_conv", param] => to_role(Some(join("quant_conv", &[param])), false),
        ["encoder", "conv_in", param] => to_role(Some(join("encoder.conv_in", &[param])), false),
        ["encoder", "conv_out", param] => to_role(Some(join("encoder.conv_out", &[param])), false),
        ["encoder", "norm_out", param] => {
            to_role(Some(join("encoder.conv_norm_out", &[param])), false)
        }
        ["encoder", "down", block, "block", layer, rest @ ..] => to_role(
            vae_resnet_key(
                &format!("encoder.down_blocks.{block}.resnets.{layer}"),
                rest,
            ),
            false,
        ),
        ["encoder", "down", block, "downsample", "conv", param] => to_role(
            Some(join(
                &format!("encoder.down_blocks.{block}.downsamplers.0.conv"),
                &[param],
            )),
            false,
        ),
        ["encoder", "mid", "block_1", rest @ ..] => {
            to_role(vae_resnet_key("encoder.mid_block.resnets.0", rest), false)
        }
        ["encoder", "mid", "block_2", rest @ ..] => {
            to_role(vae_resnet_key("encoder.mid_block.resnets.1", rest), false)
        }
        ["encoder", "mid", "attn_1", layer, param] => {
            let target = match *layer {
                "norm" => "group_norm",
                "q" => "to_q",
                "k" => "to_k",
                "v" => "to_v",
                "proj_out" => "to_out.0",
                _ => return KeyRole::Unexpected,
            };
            // LDM stores the projections as 1×1 convolutions.
            to_role(
                Some(join(
                    &format!("encoder.mid_block.attentions.0.{target}"),
                    &[param],
                )),
                target != "group_norm",
            )
        }
        _ => KeyRole::Unexpected,
    }
}

/// Diffusers name of a VAE `ResnetBlock` parameter under `target`.
fn vae_resnet_key(target: &str, segments: &[&str]) -> Option<String> {
    match segments {
        [layer @ ("norm1" | "conv1" | "norm2" | "conv2"), param] => {
            Some(join(target, &[layer, param]))
        }
        ["nin_shortcut", param] => Some(join(target, &["conv_shortcut", param])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unet(key: &str) -> Option<String> {
        match unet_key_role(&format!("{LDM_UNET_PREFIX}{key}"), 2) {
            KeyRole::Load { key, .. } => Some(key),
            _ => None,
        }
    }

    #[test]
    fn unet_keys_of_sd_v1_map_like_diffusers() {
        let cases = [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("time_embed.2.bias", "time_embedding.linear_2.bias"),
            ("input_blocks.0.0.weight", "conv_in.weight"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.1.0.in_layers.2.bias",
                "down_blocks.0.resnets.0.conv1.bias",
            ),
            (
                "input_blocks.2.0.out_layers.3.weight",
                "down_blocks.0.resnets.1.conv2.weight",
            ),
            (
                "input_blocks.2.0.out_layers.0.bias",
                "down_blocks.0.resnets.1.norm2.bias",
            ),
            (
                "input_blocks.2.0.emb_layers.1.weight",
                "down_blocks.0.resnets.1.time_emb_proj.weight",
            ),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
            ),
            (
                "input_blocks.5.1.proj_in.weight",
                "down_blocks.1.attentions.1.proj_in.weight",
            ),
            (
                "input_blocks.11.0.in_layers.0.weight",
                "down_blocks.3.resnets.1.norm1.weight",
            ),
            (
                "middle_block.0.in_layers.2.weight",
                "mid_block.resnets.0.conv1.weight",
            ),
            (
                "middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
                "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
            ),
            (
                "middle_block.2.emb_layers.1.bias",
                "mid_block.resnets.1.time_emb_proj.bias",
            ),
            (
                "output_blocks.0.0.skip_connection.bias",
                "up_blocks.0.resnets.0.conv_shortcut.bias",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.3.1.norm.weight",
                "up_blocks.1.attentions.0.norm.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.5.1.transformer_blocks.0.attn2.to_out.0.weight",
                "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0.weight",
            ),
            (
                "output_blocks.11.1.proj_out.bias",
                "up_blocks.3.attentions.2.proj_out.bias",
            ),
            ("out.0.weight", "conv_norm_out.weight"),
            ("out.2.bias", "conv_out.bias"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(unet(ldm).as_deref(), Some(diffusers), "{ldm}");
        }
    }

    #[test]
    fn layers_per_block_sets_the_block_arithmetic() {
        // One layer per block: input block 1 = block 0's resnet, 2 = its
        // downsampler, 3 = block 1's resnet, 4 = its downsampler.
        let role = |key: &str| unet_key_role(&format!("{LDM_UNET_PREFIX}{key}"), 1);
        let load = |key: &str| KeyRole::Load {
            key: key.into(),
            conv_to_linear: false,
        };
        assert_eq!(
            role("input_blocks.3.0.in_layers.0.weight"),
            load("down_blocks.1.resnets.0.norm1.weight")
        );
        assert_eq!(
            role("input_blocks.4.0.op.weight"),
            load("down_blocks.1.downsamplers.0.conv.weight")
        );
        assert_eq!(
            role("output_blocks.3.0.in_layers.0.weight"),
            load("up_blocks.1.resnets.1.norm1.weight")
        );
    }

    #[test]
    fn unknown_unet_keys_are_unexpected_and_foreign_keys_not_needed() {
        for key in [
            "model.diffusion_model.input_blocks.1.0.in_layers.1.weight",
            "model.diffusion_model.middle_block.3.in_layers.0.weight",
            "model.diffusion_model.label_emb.0.0.weight",
            "model.diffusion_model.input_blocks.x.0.op.weight",
        ] {
            assert_eq!(unet_key_role(key, 2), KeyRole::Unexpected, "{key}");
        }
        for key in [
            "betas",
            "alphas_cumprod",
            "model_ema.decay",
            "model_ema.diffusion_modelinput_blocks00weight",
            "first_stage_model.encoder.conv_in.weight",
            "cond_stage_model.transformer.text_model.final_layer_norm.weight",
        ] {
            assert_eq!(unet_key_role(key, 2), KeyRole::NotNeeded, "{key}");
        }
    }

    #[test]
    fn vae_encoder_keys_map_and_decoder_keys_are_not_needed() {
        let load = |ldm: &str| vae_key_role(&format!("{LDM_VAE_PREFIX}{ldm}"));
        let cases = [
            ("encoder.conv_in.weight", "encoder.conv_in.weight", false),
            (
                "encoder.down.0.block.1.conv2.bias",
                "encoder.down_blocks.0.resnets.1.conv2.bias",
                false,
            ),
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
                false,
            ),
            (
                "encoder.down.2.downsample.conv.weight",
                "encoder.down_blocks.2.downsamplers.0.conv.weight",
                false,
            ),
            (
                "encoder.mid.block_1.norm1.weight",
                "encoder.mid_block.resnets.0.norm1.weight",
                false,
            ),
            (
                "encoder.mid.block_2.conv1.bias",
                "encoder.mid_block.resnets.1.conv1.bias",
                false,
            ),
            (
                "encoder.mid.attn_1.norm.weight",
                "encoder.mid_block.attentions.0.group_norm.weight",
                false,
            ),
            (
                "encoder.mid.attn_1.q.weight",
                "encoder.mid_block.attentions.0.to_q.weight",
                true,
            ),
            (
                "encoder.mid.attn_1.k.bias",
                "encoder.mid_block.attentions.0.to_k.bias",
                true,
            ),
            (
                "encoder.mid.attn_1.v.weight",
                "encoder.mid_block.attentions.0.to_v.weight",
                true,
            ),
            (
                "encoder.mid.attn_1.proj_out.weight",
                "encoder.mid_block.attentions.0.to_out.0.weight",
                true,
            ),
            ("encoder.norm_out.bias", "encoder.conv_norm_out.bias", false),
            ("quant_conv.weight", "quant_conv.weight", false),
        ];
        for (ldm, diffusers, conv_to_linear) in cases {
            assert_eq!(
                load(ldm),
                KeyRole::Load {
                    key: diffusers.into(),
                    conv_to_linear
                },
                "{ldm}"
            );
        }
        for ldm in [
            "decoder.up.0.block.0.conv1.weight",
            "post_quant_conv.weight",
            "loss.logvar",
        ] {
            assert_eq!(load(ldm), KeyRole::NotNeeded, "{ldm}");
        }
        assert_eq!(load("encoder.mid.attn_1.qkv.weight"), KeyRole::Unexpected);
        assert_eq!(
            load("encoder.down.0.block.0.norm3.weight"),
            KeyRole::Unexpected
        );
    }

    #[test]
    fn clip_keys_lose_the_ldm_prefix() {
        let role = |key: &str| text_encoder_key_role(key);
        assert_eq!(
            role("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"),
            KeyRole::Load {
                key: "text_model.encoder.layers.0.mlp.fc1.weight".into(),
                conv_to_linear: false
            }
        );
        assert_eq!(
            role("cond_stage_model.transformer.embeddings.token_embedding.weight"),
            KeyRole::Load {
                key: "text_model.embeddings.token_embedding.weight".into(),
                conv_to_linear: false
            }
        );
        assert_eq!(
            role("cond_stage_model.transformer.text_model.embeddings.position_ids"),
            KeyRole::NotNeeded
        );
        assert_eq!(
            role("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"),
            KeyRole::Unexpected
        );
        assert_eq!(
            role("model.diffusion_model.out.0.weight"),
            KeyRole::NotNeeded
        );
    }

    #[test]
    fn ldm_prefixes_are_recognised() {
        assert_eq!(
            ldm_prefix_of("model.diffusion_model.out.0.weight"),
            Some(LDM_UNET_PREFIX)
        );
        assert_eq!(
            ldm_prefix_of("first_stage_model.quant_conv.bias"),
            Some(LDM_VAE_PREFIX)
        );
        assert_eq!(ldm_prefix_of("conv_in.weight"), None);
        assert_eq!(ldm_prefix_of("text_model.final_layer_norm.weight"), None);
    }
}
