//! Configuration reading, shapes and capture bookkeeping, on random weights.

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use diffseg_sd::{
    ensure_finite, AttentionLayer, AttentionSink, Error, StableDiffusionConfig,
    UNet2DConditionModelConfig, WeightsSource,
};

type B = burn::backend::NdArray<f32>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

/// The fixtures' three `config.json` files.
fn tiny_config() -> StableDiffusionConfig {
    WeightsSource::detect(fixtures())
        .and_then(|source| source.config())
        .expect("tiny configs")
}

#[test]
fn tiny_configs_read_with_the_head_count_quirk() {
    let config = tiny_config();
    // `attention_head_dim: 2` with `num_attention_heads: null` means 2 heads.
    assert_eq!(config.unet.num_attention_heads, vec![2; 4]);
    assert_eq!(config.unet.block_out_channels, vec![8, 16, 16, 16]);
    assert_eq!(config.unet.cross_attention_dim, 24);
    assert_eq!(config.unet.norm_num_groups, 4);
    assert_eq!(config.unet.attention_layer_count(), 16);
    assert_eq!(config.vae.scaling_factor, 0.18215);
    assert_eq!(config.vae.norm_num_groups, 4);
    assert_eq!(config.text_encoder.hidden_size, 24);
    assert_eq!(config.text_encoder.num_attention_heads, 3);
}

#[test]
fn sd_v1_5_preset_has_16_attention_layers_of_8_heads() {
    let config = UNet2DConditionModelConfig::sd_v1_5();
    assert_eq!(config.attention_layer_count(), 16);
    assert_eq!(config.num_attention_heads, vec![8; 4]);
}

#[test]
fn unported_unet_options_are_rejected_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixtures().join("unet/config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["class_embed_type"] = "timestep".into();
    let path = dir.path().join("config.json");
    std::fs::write(&path, json.to_string()).unwrap();
    match UNet2DConditionModelConfig::from_json_file(&path) {
        Err(Error::UnsupportedConfig { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("class_embed_type"), "{reason}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(matches!(
        UNet2DConditionModelConfig::from_json_file(dir.path().join("missing.json")),
        Err(Error::MissingConfig { .. })
    ));
}

/// Records the geometry of every self-attention map and checks it is a distribution.
#[derive(Default)]
struct GeometrySink {
    layers: Vec<AttentionLayer>,
}

impl AttentionSink<B> for GeometrySink {
    fn self_attention(&mut self, layer: &AttentionLayer, head: Option<usize>, probs: Tensor<B, 3>) {
        assert_eq!(head, None);
        let cells = layer.height * layer.width;
        assert_eq!(probs.dims(), [1, cells, cells], "{}", layer.name);
        let row_sums = probs.sum_dim(2);
        let err: f32 = (row_sums - 1.0).abs().max().into_scalar();
        assert!(err < 1e-5, "{}: rows sum to 1 ± {err}", layer.name);
        self.layers.push(layer.clone());
    }
}

#[test]
fn odd_latent_sides_use_explicit_upsample_sizes() {
    let device = Default::default();
    let config = tiny_config();
    let unet = config.unet.init::<B>(&device).unwrap();
    // 20 → 10 → 5 → 3 on the way down; the upsamplers must go 3 → 5, not 6.
    let latent =
        Tensor::<B, 4>::random([1, 4, 20, 20], burn::tensor::Distribution::Default, &device);
    let context = Tensor::<B, 3>::zeros([1, 77, 24], &device);
    let noise = unet.forward(latent.clone(), 300.0, context.clone());
    assert_eq!(noise.dims(), [1, 4, 20, 20]);
    ensure_finite(&noise, "noise prediction").unwrap();

    let mut sink = GeometrySink::default();
    unet.capture_attention(latent, 300.0, context, &mut sink);
    let sides: Vec<usize> = sink.layers.iter().map(|l| l.height).collect();
    assert_eq!(
        sides,
        [20, 20, 10, 10, 5, 5, 3, 5, 5, 5, 10, 10, 10, 20, 20, 20]
    );
    let indices: Vec<usize> = sink.layers.iter().map(|l| l.index).collect();
    assert_eq!(indices, (0..16).collect::<Vec<_>>());
}

#[test]
fn encoder_and_text_shapes() {
    let device = Default::default();
    let config = tiny_config();
    let sd = config.init::<B>(&device).unwrap();
    let image = Tensor::<B, 4>::zeros([2, 3, 64, 48], &device);
    assert_eq!(sd.vae.moments(image.clone()).dims(), [2, 8, 8, 6]);
    assert_eq!(sd.vae.encode_latent(image).dims(), [2, 4, 8, 6]);
    let text = sd
        .text_encoder
        .forward(diffseg_sd::empty_prompt_ids(&device));
    assert_eq!(text.dims(), [1, 77, 24]);
}

#[test]
fn non_finite_values_are_reported_not_passed_on() {
    let device = Default::default();
    let finite = Tensor::<B, 2>::from_floats([[1.0, -2.0], [0.5, 3.0]], &device);
    assert!(ensure_finite(&finite, "finite").is_ok());
    let broken = Tensor::<B, 2>::from_floats(
        [[f32::NAN, 1.0], [f32::INFINITY, f32::NEG_INFINITY]],
        &device,
    );
    let err = ensure_finite(&broken, "UNet noise prediction").unwrap_err();
    let Error::NonFiniteValues {
        nan,
        infinite,
        total,
        ..
    } = err
    else {
        panic!("expected NonFiniteValues, got {err}");
    };
    assert_eq!((nan, infinite, total), (1, 2, 4));
    assert!(err.to_string().contains("UNet noise prediction"));
}
