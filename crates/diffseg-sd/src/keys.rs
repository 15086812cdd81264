//! How diffusers/transformers checkpoint keys map onto this crate's module paths.
//!
//! Burn's module path *is* the key (`down_blocks.0.resnets.1.conv1.weight`),
//! and the field names mirror diffusers, so almost every key maps to itself.
//! The exceptions, all because a PyTorch `ModuleList`/`Sequential` index
//! cannot be a Rust field name:
//!
//! | diffusers key fragment | Burn field path | where |
//! | --- | --- | --- |
//! | `…attn1.to_out.0.{weight,bias}`, `…attn2.to_out.0.*` | `….to_out.*` | UNet `Attention` (`to_out = [Linear, Dropout]`) |
//! | `encoder.mid_block.attentions.0.to_out.0.*` | `….to_out.*` | VAE mid-block `Attention` |
//! | `…ff.net.0.proj.*` | `…ff.geglu.proj.*` | GEGLU input projection |
//! | `…ff.net.2.*` | `…ff.proj_out.*` | feed-forward output projection |
//! | `…attentions.N.query/key/value/proj_attn.*` | `…attentions.N.to_q/to_k/to_v/to_out.*` | VAE attention, pre-0.14 diffusers names (older published `vae/` files) |
//!
//! Keys that need no remap but are worth knowing:
//! - `downsamplers.0.conv`, `upsamplers.0.conv` are `Vec` fields with 0 or 1 element: same key.
//! - `proj_in`/`proj_out` of `Transformer2DModel` are the enum [`crate::transformer::Projection`]
//!   (1×1 conv for SD 1.x, linear for `use_linear_projection`): load with burn-store's
//!   `skip_enum_variants(true)` so that the variant name (`Conv`/`Linear`) is not part of the path.
//! - The text encoder keeps transformers' names including the `text_model.` prefix
//!   ([`crate::clip::ClipTextModel::text_model`]); `text_model.embeddings.position_ids`
//!   (a buffer in some files) has no counterpart and must be skipped.
//! - The VAE file also holds `decoder.*` and `post_quant_conv.*`, which are not ported: skip them.
//! - Linear weights are stored `[out, in]` by PyTorch, and so by these networks (Burn's
//!   `LinearLayout::Col`): they load unchanged, as conv weights `[out, in, kh, kw]` do. Load
//!   with [`crate::weights::CastingAdapter`], not burn-store's `PyTorchToBurnAdapter`, which
//!   would transpose them. Norm parameters are `weight`/`bias` vs `gamma`/`beta`; the adapter
//!   maps those names.
//! - Original LDM single-file checkpoints store the VAE attention `q/k/v/proj_out` as 1×1
//!   convolutions `[c, c, 1, 1]`; they must be reshaped to `[c, c]` for these linear layers.

/// `(regex, replacement)` pairs turning diffusers/transformers keys into this
/// crate's field paths, for burn-store's `KeyRemapper::from_patterns`.
/// Applied to every key of the UNet, VAE and text-encoder files.
pub(crate) const DIFFUSERS_KEY_REMAP: &[(&str, &str)] = &[
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.ff\.net\.0\.proj\.", ".ff.geglu.proj."),
    (r"\.ff\.net\.2\.", ".ff.proj_out."),
    (r"(\.attentions\.\d+)\.query\.", "$1.to_q."),
    (r"(\.attentions\.\d+)\.key\.", "$1.to_k."),
    (r"(\.attentions\.\d+)\.value\.", "$1.to_v."),
    (r"(\.attentions\.\d+)\.proj_attn\.", "$1.to_out."),
];
