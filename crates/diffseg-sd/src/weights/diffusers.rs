//! The diffusers folder layout, the one place that names its folders and
//! files: which files a pipeline folder holds, which precision variant to
//! read, and what each key of a component file means.

use std::path::{Path, PathBuf};

use super::{Component, KeyRole};
use crate::Error;

/// Which stored precision to prefer when a diffusers folder offers several
/// (`diffusion_pytorch_model.safetensors`, `….fp16.safetensors`,
/// `….bf16.safetensors`).
///
/// Whatever is read, tensors are converted to the backend's float type on
/// load; the variant only trades download size against storage rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Variant {
    /// Full-precision files (`*.safetensors`).
    #[default]
    F32,
    /// Half-precision files (`*.fp16.safetensors`), half the download.
    F16,
    /// bfloat16 files (`*.bf16.safetensors`).
    BF16,
}

impl Variant {
    /// The infix diffusers puts before `.safetensors`.
    fn infix(self) -> &'static str {
        match self {
            Variant::F32 => "",
            Variant::F16 => ".fp16",
            Variant::BF16 => ".bf16",
        }
    }

    /// Files to try, best first: the preferred variant, then the one that
    /// loses least precision.
    fn preference(self) -> [Variant; 3] {
        match self {
            Variant::F32 => [Variant::F32, Variant::F16, Variant::BF16],
            Variant::F16 => [Variant::F16, Variant::F32, Variant::BF16],
            Variant::BF16 => [Variant::BF16, Variant::F32, Variant::F16],
        }
    }
}

impl Component {
    /// The three networks, in the order they are downloaded and loaded.
    pub const ALL: [Component; 3] = [Component::Unet, Component::Vae, Component::TextEncoder];

    /// Sub-folder of a diffusers pipeline folder.
    fn folder(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::Vae => "vae",
            Component::TextEncoder => "text_encoder",
        }
    }

    /// Weights file name stem (diffusers models vs transformers models).
    fn weights_stem(self) -> &'static str {
        match self {
            Component::Unet | Component::Vae => "diffusion_pytorch_model",
            Component::TextEncoder => "model",
        }
    }

    /// Pickled file name that `transformers`/`diffusers` write when
    /// safetensors is not used.
    fn pickle_name(self) -> &'static str {
        match self {
            Component::Unet | Component::Vae => "diffusion_pytorch_model.bin",
            Component::TextEncoder => "pytorch_model.bin",
        }
    }

    /// Its config file in a diffusers pipeline folder, `/`-separated
    /// (`unet/config.json`): what to download from a Hugging Face repository.
    pub fn config_file(self) -> String {
        format!("{}/config.json", self.folder())
    }

    /// Its weights file in `variant` in a diffusers pipeline folder,
    /// `/`-separated (`unet/diffusion_pytorch_model.fp16.safetensors`).
    /// Loading falls back to another variant when this one is absent.
    pub fn weights_file(self, variant: Variant) -> String {
        format!("{}/{}", self.folder(), self.weights_file_name(variant))
    }

    fn weights_file_name(self, variant: Variant) -> String {
        format!("{}{}.safetensors", self.weights_stem(), variant.infix())
    }
}

/// Whether `folder` looks like a diffusers pipeline folder.
pub(super) fn is_pipeline_folder(folder: &Path) -> bool {
    folder.join("model_index.json").is_file()
        || Component::ALL
            .iter()
            .any(|c| folder.join(c.folder()).is_dir())
}

/// `root/<component>/config.json`.
pub(super) fn config_path(root: &Path, component: Component) -> PathBuf {
    root.join(component.folder()).join("config.json")
}

/// The weights file of `component` under `root`, in the first variant of
/// `variant`'s preference order that exists.
pub(super) fn weights_path(
    root: &Path,
    component: Component,
    variant: Variant,
) -> Result<PathBuf, Error> {
    let folder = root.join(component.folder());
    let candidates: Vec<PathBuf> = variant
        .preference()
        .iter()
        .map(|&v| folder.join(component.weights_file_name(v)))
        .collect();
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    let pickle = folder.join(component.pickle_name());
    if pickle.is_file() {
        return Err(Error::PickleNotSupported { path: pickle });
    }
    Err(Error::MissingWeights {
        folder,
        component,
        tried: candidates
            .iter()
            .filter_map(|p| p.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .collect(),
    })
}

/// What key `key` of a diffusers component file means.
///
/// The VAE file also holds the decoder, which segmentation never runs; the
/// text encoder file may hold the constant `position_ids` buffer. The VAE
/// mid-block attention projections are flagged `conv_to_linear` because some
/// converted files keep them as 1×1 convolutions. (Legacy names such as
/// `proj_attn` are renamed later, with every other field-path exception, by
/// [`crate::keys::DIFFUSERS_KEY_REMAP`].)
pub(super) fn key_role(component: Component, key: &str) -> KeyRole {
    if component == Component::TextEncoder {
        return text_encoder_key_role(key);
    }
    let not_needed = component == Component::Vae
        && (key.starts_with("decoder.") || key.starts_with("post_quant_conv."));
    if not_needed {
        return KeyRole::NotNeeded;
    }
    let conv_to_linear = component == Component::Vae
        && key
            .strip_prefix("encoder.mid_block.attentions.")
            .is_some_and(|rest| !rest.contains(".group_norm."));
    KeyRole::Load {
        key: key.to_string(),
        conv_to_linear,
    }
}

/// What a CLIP text-encoder key means, with or without the `text_model.`
/// level: transformers writes it from a model loaded from a file that had it,
/// but a `CLIPTextModel` built by transformers 5 saves without it (as did
/// checkpoints from very old transformers).
pub(super) fn text_encoder_key_role(key: &str) -> KeyRole {
    let key = match key.strip_prefix("text_model.") {
        Some(rest) => format!("text_model.{rest}"),
        None => format!("text_model.{key}"),
    };
    if key == "text_model.embeddings.position_ids" {
        // A constant buffer (0..77), not a weight.
        return KeyRole::NotNeeded;
    }
    KeyRole::Load {
        key,
        conv_to_linear: false,
    }
}

/// The diffusers component whose keys `keys` look like, for error messages.
pub(super) fn guess_component<'a>(mut keys: impl Iterator<Item = &'a str>) -> Option<Component> {
    keys.find_map(|key| {
        if key.starts_with("text_model.") || key.starts_with("embeddings.token_embedding") {
            Some(Component::TextEncoder)
        } else if key.starts_with("encoder.") || key.starts_with("decoder.") {
            Some(Component::Vae)
        } else if key.starts_with("down_blocks.") || key.starts_with("conv_in.") {
            Some(Component::Unet)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_the_component_and_the_variant() {
        assert_eq!(Component::Unet.config_file(), "unet/config.json");
        assert_eq!(
            Component::Unet.weights_file(Variant::F16),
            "unet/diffusion_pytorch_model.fp16.safetensors"
        );
        assert_eq!(
            Component::Vae.weights_file(Variant::BF16),
            "vae/diffusion_pytorch_model.bf16.safetensors"
        );
        assert_eq!(
            Component::TextEncoder.weights_file(Variant::F32),
            "text_encoder/model.safetensors"
        );
    }

    #[test]
    fn variant_falls_back_to_what_exists() {
        let root = tempfile::tempdir().unwrap();
        let unet = root.path().join("unet");
        std::fs::create_dir(&unet).unwrap();
        let missing = weights_path(root.path(), Component::Unet, Variant::F16).unwrap_err();
        assert!(matches!(missing, Error::MissingWeights { ref tried, .. } if tried.len() == 3));
        std::fs::write(unet.join("diffusion_pytorch_model.bf16.safetensors"), b"").unwrap();
        let found = weights_path(root.path(), Component::Unet, Variant::F16).unwrap();
        assert!(found.ends_with("diffusion_pytorch_model.bf16.safetensors"));
        std::fs::write(unet.join("diffusion_pytorch_model.safetensors"), b"").unwrap();
        let found = weights_path(root.path(), Component::Unet, Variant::F16).unwrap();
        assert!(found.ends_with("diffusion_pytorch_model.safetensors"));
        std::fs::write(unet.join("diffusion_pytorch_model.fp16.safetensors"), b"").unwrap();
        let found = weights_path(root.path(), Component::Unet, Variant::F16).unwrap();
        assert!(found.ends_with("diffusion_pytorch_model.fp16.safetensors"));
    }

    #[test]
    fn pickled_weights_are_refused_by_name() {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().join("text_encoder");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("pytorch_model.bin"), b"").unwrap();
        let error = weights_path(root.path(), Component::TextEncoder, Variant::F32).unwrap_err();
        assert!(matches!(error, Error::PickleNotSupported { .. }));
        assert!(error.to_string().contains("pytorch_model.bin"));
    }

    #[test]
    fn vae_decoder_is_not_needed_and_mid_attention_may_be_convolutions() {
        assert_eq!(
            key_role(Component::Vae, "decoder.conv_in.weight"),
            KeyRole::NotNeeded
        );
        assert_eq!(
            key_role(Component::Vae, "post_quant_conv.bias"),
            KeyRole::NotNeeded
        );
        assert_eq!(
            key_role(
                Component::Vae,
                "encoder.mid_block.attentions.0.proj_attn.weight"
            ),
            KeyRole::Load {
                key: "encoder.mid_block.attentions.0.proj_attn.weight".into(),
                conv_to_linear: true
            }
        );
        assert_eq!(
            key_role(
                Component::Vae,
                "encoder.mid_block.attentions.0.group_norm.weight"
            ),
            KeyRole::Load {
                key: "encoder.mid_block.attentions.0.group_norm.weight".into(),
                conv_to_linear: false
            }
        );
        assert_eq!(
            key_role(Component::Unet, "mid_block.attentions.0.proj_in.weight"),
            KeyRole::Load {
                key: "mid_block.attentions.0.proj_in.weight".into(),
                conv_to_linear: false
            }
        );
        assert_eq!(
            key_role(Component::TextEncoder, "text_model.embeddings.position_ids"),
            KeyRole::NotNeeded
        );
    }
}
