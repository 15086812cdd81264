//! Vocabularies: parsing, bounds, presets, and their packing into the text
//! encoder's 77-token prompts with CLIP's tokenizer (the committed fixture).

#[path = "../../diffseg-sd/tests/tokenizer_fixture/mod.rs"]
mod tokenizer_fixture;

use diffseg::eval::Dataset;
use diffseg::weights::{load_tokenizer, tokenizer_folder};
use diffseg::{Vocabulary, VocabularyError, VocabularyPreset, MAX_ENTRIES, MAX_ENTRY_BYTES};
use diffseg_sd::ClipTokenizer;

fn tokenizer() -> (tempfile::TempDir, ClipTokenizer) {
    let folder = tokenizer_fixture::unpacked();
    let tokenizer = ClipTokenizer::from_folder(folder.path()).unwrap();
    (folder, tokenizer)
}

#[test]
fn a_list_is_trimmed_and_blank_entries_dropped() {
    let vocabulary = Vocabulary::parse(" sky, road surface ,,person,").unwrap();
    assert_eq!(vocabulary.entries(), ["sky", "road surface", "person"]);
    assert_eq!(vocabulary.template(), "{}");
    assert_eq!(vocabulary.prompt(1).as_deref(), Some("road surface"));
}

#[test]
fn a_file_has_one_entry_per_line() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("names.txt");
    std::fs::write(&path, "sky\r\n\n  road, surface  \n\t\nperson").unwrap();
    let vocabulary = Vocabulary::from_file(&path).unwrap();
    // Commas belong to a file's entries.
    assert_eq!(vocabulary.entries(), ["sky", "road, surface", "person"]);

    std::fs::write(&path, [0xff, 0xfe, b'a']).unwrap();
    let error = Vocabulary::from_file(&path).unwrap_err();
    assert!(matches!(error, VocabularyError::BadFile { .. }), "{error}");
    assert!(error.to_string().contains("names.txt"), "{error}");
    let missing = Vocabulary::from_file(folder.path().join("none.txt")).unwrap_err();
    assert!(matches!(missing, VocabularyError::Io { .. }), "{missing}");
}

#[test]
fn invalid_vocabularies_are_typed_errors() {
    assert!(matches!(
        Vocabulary::parse(" , ,"),
        Err(VocabularyError::Empty { .. })
    ));
    let error = Vocabulary::parse("sky,road,Sky").unwrap_err();
    assert!(
        matches!(
            &error,
            VocabularyError::Duplicate {
                first: 0,
                second: 2,
                ..
            }
        ),
        "{error}"
    );
    let long = "x".repeat(MAX_ENTRY_BYTES + 1);
    assert!(matches!(
        Vocabulary::parse(&format!("sky,{long}")),
        Err(VocabularyError::EntryTooLong { index: 1, .. })
    ));
    let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("w{i}")).collect();
    assert!(matches!(
        Vocabulary::new(&many, "test"),
        Err(VocabularyError::TooManyEntries { .. })
    ));
    assert!(Vocabulary::new(&many[..MAX_ENTRIES], "test").is_ok());
    for template in ["a photo", "{} and {}"] {
        assert!(matches!(
            Vocabulary::parse("sky").unwrap().with_template(template),
            Err(VocabularyError::BadTemplate { .. })
        ));
    }
}

#[test]
fn presets_are_the_evaluation_class_names() {
    for (name, dataset) in [
        ("coco-stuff-27", Dataset::CocoStuff27),
        ("Cityscapes-27", Dataset::Cityscapes),
    ] {
        let vocabulary = Vocabulary::parse(name).unwrap();
        assert_eq!(vocabulary.entries(), dataset.class_names());
        assert_eq!(vocabulary.entries().len(), 27);
    }
    assert_eq!(
        Vocabulary::parse("coco-stuff-27").unwrap(),
        Vocabulary::preset(VocabularyPreset::CocoStuff27)
    );
}

#[test]
fn entries_pack_into_prompts_with_their_token_columns() {
    let (_folder, tokenizer) = tokenizer();
    let vocabulary = Vocabulary::parse("sky,road surface,antidisestablishmentarianism").unwrap();
    let prompts = vocabulary.prompts(&tokenizer).unwrap();
    assert_eq!(prompts.len(), 1);
    let prompt = &prompts[0];
    let mut column = 1;
    for (index, entry) in vocabulary.entries().iter().enumerate() {
        let tokens = tokenizer.token_ids(entry).unwrap();
        let placed = &prompt.entries[index];
        assert_eq!(placed.entry, index);
        assert_eq!(placed.columns, column..column + tokens.len());
        let ids: Vec<i64> = tokens.iter().map(|&id| i64::from(id)).collect();
        assert_eq!(prompt.ids[placed.columns.clone()], ids[..]);
        column += tokens.len();
    }
    assert!(column > 4, "a multi-token entry is in the test");
    assert_eq!(prompt.ids[0], 49406);
    assert_eq!(prompt.ids[column], 49407);
}

#[test]
fn a_template_s_words_are_not_the_entry_s_columns() {
    let (_folder, tokenizer) = tokenizer();
    let vocabulary = Vocabulary::parse("sky,road surface")
        .unwrap()
        .with_template("a photo of a {}.")
        .unwrap();
    let prompts = vocabulary.prompts(&tokenizer).unwrap();
    let prefix = tokenizer.token_ids("a photo of a").unwrap().len();
    let sky = &prompts[0].entries[0];
    assert_eq!(sky.columns, 1 + prefix..2 + prefix);
    assert_eq!(
        prompts[0].ids[sky.columns.start],
        i64::from(tokenizer.token_ids("sky").unwrap()[0])
    );
    // "a photo of a sky." is prefix + sky + "." before the next entry's prompt.
    let road = &prompts[0].entries[1];
    assert_eq!(road.columns.start, sky.columns.end + 1 + prefix);
    assert_eq!(road.columns.len(), 2);

    // A template gluing the entry to its own letters leaves it no columns of its own.
    let glued = Vocabulary::parse("sky")
        .unwrap()
        .with_template("x{}y")
        .unwrap();
    assert!(matches!(
        glued.prompts(&tokenizer),
        Err(VocabularyError::TemplateMergesEntry { .. })
    ));
}

#[test]
fn a_long_vocabulary_is_split_over_prompts_without_splitting_an_entry() {
    let (_folder, tokenizer) = tokenizer();
    let vocabulary = Vocabulary::preset(VocabularyPreset::CocoStuff27)
        .with_template("a photo of a {}")
        .unwrap();
    let prompts = vocabulary.prompts(&tokenizer).unwrap();
    assert!(prompts.len() > 1, "{} prompts", prompts.len());
    let tokenized = vocabulary.tokenize(&tokenizer).unwrap();
    let mut next = 0;
    for prompt in &prompts {
        let mut end = 1;
        for placed in &prompt.entries {
            assert_eq!(placed.entry, next, "entries keep their order");
            next += 1;
            let (tokens, own) = &tokenized[placed.entry];
            // The whole templated prompt sits right after the previous one.
            let ids: Vec<i64> = tokens.iter().map(|&id| i64::from(id)).collect();
            assert_eq!(prompt.ids[end..end + tokens.len()], ids[..]);
            assert_eq!(placed.columns, end + own.start..end + own.end);
            end += tokens.len();
        }
        assert!(end <= 76, "BOS, at most 75 tokens, EOS");
        assert_eq!(prompt.ids[end], 49407);
    }
    assert_eq!(next, 27);
    // Packing is greedy: the next prompt's first entry did not fit in this one.
    for pair in prompts.windows(2) {
        let used: usize = pair[0]
            .entries
            .iter()
            .map(|placed| tokenized[placed.entry].0.len())
            .sum();
        let first = tokenized[pair[1].entries[0].entry].0.len();
        assert!(used + first > 75);
    }
}

#[test]
fn an_entry_longer_than_a_prompt_is_refused() {
    let (_folder, tokenizer) = tokenizer();
    let long = Vocabulary::parse(&["x"; 76].join(" ")).unwrap();
    assert!(matches!(
        long.prompts(&tokenizer),
        Err(VocabularyError::EntryTokens { tokens: 76, .. })
    ));
}

#[test]
fn the_tokenizer_is_found_beside_diffusers_weights_or_given() {
    let (folder, _tokenizer) = tokenizer();
    let model = tempfile::tempdir().unwrap();
    assert_eq!(
        tokenizer_folder(model.path(), None).unwrap(),
        model.path().join("tokenizer")
    );
    // A diffusers folder without tokenizer/ is a clear error naming both files.
    let error = load_tokenizer(model.path(), None).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("vocab.json") && message.contains("merges.txt"),
        "{message}"
    );
    assert!(message.contains("tokenizer"), "{message}");
    // A single-file checkpoint needs the folder given.
    let checkpoint = model.path().join("model.safetensors");
    std::fs::write(&checkpoint, b"").unwrap();
    let error = load_tokenizer(&checkpoint, None).unwrap_err();
    assert!(
        matches!(&error, diffseg_sd::Error::MissingTokenizer { folder, .. } if folder == &checkpoint),
        "{error}"
    );
    let given = load_tokenizer(&checkpoint, Some(folder.path())).unwrap();
    assert_eq!(given.empty_prompt_ids(), diffseg_sd::EMPTY_PROMPT_IDS);
}

/// The tiny model as a diffusers folder with a `tokenizer/` beside its networks.
fn tiny_with_tokenizer(tokenizer: &std::path::Path) -> tempfile::TempDir {
    let tiny =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffseg-sd/tests/fixtures/tiny");
    let model = tempfile::tempdir().unwrap();
    for (folder, file) in [
        ("unet", "config.json"),
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "config.json"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "config.json"),
        ("text_encoder", "model.safetensors"),
        ("tokenizer", "vocab.json"),
        ("tokenizer", "merges.txt"),
        ("tokenizer", "tokenizer_config.json"),
    ] {
        let from = if folder == "tokenizer" {
            tokenizer.join(file)
        } else {
            tiny.join(folder).join(file)
        };
        std::fs::create_dir_all(model.path().join(folder)).unwrap();
        std::fs::copy(from, model.path().join(folder).join(file)).unwrap();
    }
    model
}

fn segment(weights: &std::path::Path) -> Result<diffseg::Segmentation, diffseg::Error> {
    let image = image::DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(96, 80, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 2) as u8, ((x + y) % 256) as u8])
    }));
    diffseg::Segmenter::builder()
        .backend(diffseg::BackendKind::Cpu)
        .weights(weights)
        .allow_download(false)
        .build()?
        .segment(&image)
}

#[test]
fn a_model_s_tokenizer_gives_the_same_segmentation_as_the_constants() {
    let (tokenizer_folder, _tokenizer) = tokenizer();
    let with = tiny_with_tokenizer(tokenizer_folder.path());
    let tiny =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffseg-sd/tests/fixtures/tiny");
    let constants = segment(&tiny).unwrap();
    let read = segment(with.path()).unwrap();
    assert_eq!(read.labels(), constants.labels(), "bit for bit");

    // A tokenizer/ that cannot be read is named, not skipped.
    std::fs::remove_file(with.path().join("tokenizer/merges.txt")).unwrap();
    let error = segment(with.path()).unwrap_err().to_string();
    assert!(error.contains("merges.txt"), "{error}");
}
