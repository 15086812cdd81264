//! The CLIP tokenizer against transformers' `CLIPTokenizer`
//! (fixture: tools/reference/tokenizer_reference.py).

#[path = "tokenizer_fixture/mod.rs"]
mod tokenizer_fixture;

use std::io::Read;
use std::path::Path;

use diffseg_sd::{ClipTokenizer, Error, EMPTY_PROMPT_IDS, MAX_TOKENS};
use serde::Deserialize;
use tokenizer_fixture::{fixture, unpacked};

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<i64>,
}

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[test]
fn ids_equal_transformers_clip_tokenizer() {
    let folder = unpacked();
    let tokenizer = ClipTokenizer::from_folder(folder.path()).unwrap();
    let reference: Reference =
        serde_json::from_slice(&std::fs::read(fixture().join("ids.json")).unwrap()).unwrap();
    assert!(reference.cases.len() >= 250, "{}", reference.cases.len());
    let mut differing = Vec::new();
    for case in &reference.cases {
        let ids = tokenizer.prompt_ids(&case.text).unwrap();
        if ids[..] != case.ids[..] {
            differing.push(format!(
                "{:?}: ours {ids:?}, transformers {:?}",
                case.text, case.ids
            ));
        }
    }
    assert!(
        differing.is_empty(),
        "{} of {} differ:\n{}",
        differing.len(),
        reference.cases.len(),
        differing.join("\n")
    );
    // The reference does reach truncation, or the test would not show it.
    assert!(reference.cases.iter().any(|case| case.ids[MAX_TOKENS - 1]
        == i64::from(tokenizer.eos_id())
        && case.ids[MAX_TOKENS - 2] != i64::from(tokenizer.pad_id())));
}

#[test]
fn empty_prompt_ids_are_the_constants() {
    let folder = unpacked();
    let tokenizer = ClipTokenizer::from_folder(folder.path()).unwrap();
    assert_eq!(tokenizer.empty_prompt_ids(), EMPTY_PROMPT_IDS);
    assert_eq!(tokenizer.prompt_ids("").unwrap(), EMPTY_PROMPT_IDS);
    assert_eq!(
        (tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id()),
        (49406, 49407, 49407)
    );
}

#[test]
fn entry_token_ids_have_no_special_tokens_and_no_truncation() {
    let folder = unpacked();
    let tokenizer = ClipTokenizer::from_folder(folder.path()).unwrap();
    let long = "word ".repeat(100);
    let ids = tokenizer.token_ids(&long).unwrap();
    assert_eq!(ids.len(), 100);
    // "a photo of a cat" in transformers' ids, less BOS and EOS.
    let reference: Reference =
        serde_json::from_slice(&std::fs::read(fixture().join("ids.json")).unwrap()).unwrap();
    let cat = reference
        .cases
        .iter()
        .find(|case| case.text == "a photo of a cat")
        .unwrap();
    let ours: Vec<i64> = tokenizer
        .token_ids("a photo of a cat")
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    assert_eq!(ours[..], cat.ids[1..=ours.len()]);
}

#[test]
fn a_folder_without_the_files_is_a_typed_error_naming_them() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("vocab.json"), "{}").unwrap();
    let error = ClipTokenizer::from_folder(folder.path()).unwrap_err();
    match &error {
        Error::MissingTokenizer {
            folder: named,
            missing,
        } => {
            assert_eq!(named, folder.path());
            assert_eq!(missing, &["merges.txt".to_string()]);
        }
        other => panic!("expected MissingTokenizer, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains("merges.txt"), "{message}");
    assert!(
        message.contains(&folder.path().display().to_string()),
        "{message}"
    );
}

#[test]
fn malformed_files_are_typed_errors() {
    let folder = unpacked();
    std::fs::write(folder.path().join("vocab.json"), "not json").unwrap();
    assert!(matches!(
        ClipTokenizer::from_folder(folder.path()),
        Err(Error::BadTokenizer { .. })
    ));

    // A vocabulary without CLIP's special tokens.
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(
        folder.path().join("vocab.json"),
        r#"{"a": 0, "b": 1, "ab": 2}"#,
    )
    .unwrap();
    std::fs::write(folder.path().join("merges.txt"), "#version: 0.2\na b\n").unwrap();
    let error = ClipTokenizer::from_folder(folder.path()).unwrap_err();
    assert!(
        matches!(&error, Error::BadTokenizer { reason, .. } if reason.contains("<|startoftext|>")),
        "{error}"
    );
}

/// The text side of naming, end to end: our ids and our text encoder give
/// transformers' embedding of each preset vocabulary as one prompt, on a tiny
/// encoder whose vocabulary tokens embed differently
/// (tools/reference/vocabulary_text_encoder.py).
#[test]
fn preset_prompts_embed_as_transformers_embeds_them() {
    use burn::backend::NdArray;
    use burn::tensor::Tensor;
    use diffseg_sd::{prompt_ids_tensor, ClipTextModel, Variant, WeightsSource};

    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vocabulary-text-encoder");
    let model = tempfile::tempdir().unwrap();
    let folder = model.path().join("text_encoder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(fixture.join("config.json"), folder.join("config.json")).unwrap();
    let packed = std::fs::File::open(fixture.join("model.safetensors.gz")).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(packed)
        .read_to_end(&mut bytes)
        .unwrap();
    std::fs::write(folder.join("model.safetensors"), bytes).unwrap();

    let reference = std::fs::read(fixture.join("embeddings.safetensors")).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&reference).unwrap();
    let ids: Vec<i64> = reference
        .tensor("ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|bytes| i64::from_le_bytes(bytes.try_into().unwrap()))
        .collect();
    let hidden: Vec<f32> = reference
        .tensor("hidden")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|bytes| f32::from_le_bytes(bytes.try_into().unwrap()))
        .collect();

    let tokenizer_folder = unpacked();
    let tokenizer = ClipTokenizer::from_folder(tokenizer_folder.path()).unwrap();
    let prompts: Vec<[i64; MAX_TOKENS]> = PRESET_PROMPTS
        .iter()
        .map(|prompt| tokenizer.prompt_ids(prompt).unwrap())
        .collect();
    assert_eq!(prompts.concat(), ids);

    let device = Default::default();
    let source = WeightsSource::Diffusers {
        root: model.path().to_path_buf(),
        variant: Variant::F32,
    };
    let encoder = match source.load::<NdArray, ClipTextModel<NdArray>>(None, &device) {
        Ok(encoder) => encoder,
        Err(error) => panic!("{error}"),
    };
    let ours: Tensor<NdArray, 3> = encoder.forward(prompt_ids_tensor(&prompts, &device));
    let ours = ours.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    assert_eq!(ours.len(), hidden.len());
    let error = ours
        .iter()
        .zip(&hidden)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // docs/parity.md: the tiny text encoder's f32-vs-f64 gap is 8.3e-7; 1e-5 is its bound.
    assert!(error <= 1e-5, "max |ours - transformers| = {error}");
}

/// The presets' names joined by spaces (crates/diffseg/src/eval/dataset.rs), as
/// tools/reference/vocabulary_text_encoder.py writes them.
const PRESET_PROMPTS: [&str; 2] = [
    "electronic appliance food-things furniture-things indoor kitchen accessory animal outdoor \
     person sports vehicle ceiling floor food-stuff furniture-stuff raw-material textile wall \
     window building ground plant sky solid structural water",
    "road sidewalk parking rail track building wall fence guard rail bridge tunnel pole polegroup \
     traffic light traffic sign vegetation terrain sky person rider car truck bus caravan \
     trailer train motorcycle bicycle",
];
