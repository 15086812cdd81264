//! The synthetic evaluation dataset of `tools/reference/eval_reference.py`, written
//! out as PNGs in the official layouts. Shared by the library's and the CLI's
//! evaluation tests (the CLI includes this file by path).

use std::path::{Path, PathBuf};

use image::{ImageBuffer, Luma, Rgb};
use serde_json::Value;

/// The generator's inputs (`eval_synthetic.json`) and expected values (`eval_expected.json`),
/// built into the test so that it runs from any crate that includes this file, and from the
/// published package, which ships the two files.
pub fn load_fixture() -> (Value, Value) {
    let parse = |text: &str| -> Value { serde_json::from_str(text).unwrap() };
    (
        parse(include_str!("../fixtures/eval/eval_synthetic.json")),
        parse(include_str!("../fixtures/eval/eval_expected.json")),
    )
}

/// A JSON array of integers as a vector.
pub fn numbers<T: TryFrom<u64>>(value: &Value) -> Vec<T>
where
    T::Error: std::fmt::Debug,
{
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| T::try_from(v.as_u64().expect("an integer")).unwrap())
        .collect()
}

/// The images of `dataset` (`cocostuff27` or `cityscapes`) in the fixture.
pub fn images<'a>(inputs: &'a Value, dataset: &str) -> &'a Vec<Value> {
    inputs[dataset].as_array().expect("images")
}

/// Where an image's label PNG goes under `root`.
pub fn label_path(root: &Path, dataset: &str, image: &Value, authors_layout: bool) -> PathBuf {
    let id = image["id"].as_str().unwrap();
    match dataset {
        "cocostuff27" if authors_layout => {
            root.join("annotation_val2017").join(format!("{id}.png"))
        }
        "cocostuff27" => root
            .join("stuffthingmaps_trainval2017/val2017")
            .join(format!("{id}.png")),
        _ => {
            let base = id.strip_suffix("_leftImg8bit").unwrap();
            root.join("gtFine/val")
                .join(image["city"].as_str().unwrap())
                .join(format!("{base}_gtFine_labelIds.png"))
        }
    }
}

/// Writes the label PNGs of `dataset` under `root` in its official layout (or, for
/// COCO with `authors_layout`, the paper's renamed `annotation_val2017`). A
/// 3-channel label has the label in channel 0 and other values in channels 1 and 2.
pub fn write_labels(inputs: &Value, dataset: &str, root: &Path, authors_layout: bool) {
    for image in images(inputs, dataset) {
        let (width, height) = (
            image["width"].as_u64().unwrap() as u32,
            image["height"].as_u64().unwrap() as u32,
        );
        let label: Vec<u8> = numbers(&image["label"]);
        let path = label_path(root, dataset, image, authors_layout);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if image["channels"].as_u64() == Some(3) {
            let rgb: Vec<u8> = label
                .iter()
                .flat_map(|&v| [v, (37u32 * v as u32 + 11) as u8, 255 - v])
                .collect();
            ImageBuffer::<Rgb<u8>, _>::from_raw(width, height, rgb)
                .unwrap()
                .save(&path)
                .unwrap();
        } else {
            ImageBuffer::<Luma<u8>, _>::from_raw(width, height, label)
                .unwrap()
                .save(&path)
                .unwrap();
        }
    }
}

/// An image's 512×512 prediction: its 64×64 grid repeated in 8×8 blocks.
pub fn prediction(inputs: &Value, image: &Value) -> Vec<u16> {
    let side = inputs["side"].as_u64().unwrap() as usize;
    let grid = inputs["grid"].as_u64().unwrap() as usize;
    let cells: Vec<u16> = numbers(&image["pred"]);
    let block = side / grid;
    (0..side * side)
        .map(|i| cells[(i / side / block) * grid + (i % side) / block])
        .collect()
}

/// The 512×512 class map (`eval --semantic`) the fixture's 64×64 `class_pred` grid
/// repeats in 8×8 blocks: classes 0..26, 255 for no class.
pub fn class_prediction(inputs: &Value, image: &Value) -> Vec<u8> {
    let side = inputs["side"].as_u64().unwrap() as usize;
    let grid = inputs["grid"].as_u64().unwrap() as usize;
    let cells: Vec<u8> = numbers(&image["class_pred"]);
    let block = side / grid;
    (0..side * side)
        .map(|i| cells[(i / side / block) * grid + (i % side) / block])
        .collect()
}

/// Writes the predictions of `dataset` into `folder` as `<image stem>.png`, 8- or
/// 16-bit as the fixture says; with `nested`, Cityscapes ones go in `<city>/`.
pub fn write_predictions(inputs: &Value, dataset: &str, folder: &Path, nested: bool) {
    let side = inputs["side"].as_u64().unwrap() as u32;
    for image in images(inputs, dataset) {
        let id = image["id"].as_str().unwrap();
        let sub = match image["city"].as_str() {
            Some(city) if nested => folder.join(city),
            _ => folder.to_path_buf(),
        };
        std::fs::create_dir_all(&sub).unwrap();
        let path = sub.join(format!("{id}.png"));
        let labels = prediction(inputs, image);
        if image["pred_bits"].as_u64() == Some(16) {
            ImageBuffer::<Luma<u16>, _>::from_raw(side, side, labels)
                .unwrap()
                .save(&path)
                .unwrap();
        } else {
            let bytes: Vec<u8> = labels.iter().map(|&v| u8::try_from(v).unwrap()).collect();
            ImageBuffer::<Luma<u8>, _>::from_raw(side, side, bytes)
                .unwrap()
                .save(&path)
                .unwrap();
        }
    }
}

/// `tools/reference/eval_diffcut_reference.py`'s output (`eval_diffcut.json`): 128²
/// predictions per image and the expected counts under DiffCut's protocol.
pub fn load_diffcut_reference() -> Value {
    serde_json::from_str(include_str!("../fixtures/eval/eval_diffcut.json")).unwrap()
}

/// Writes the reference's 128² predictions of `dataset` into `folder` as 16-bit
/// `<image stem>.png`.
pub fn write_diffcut_predictions(inputs: &Value, reference: &Value, dataset: &str, folder: &Path) {
    let side = reference["mask_size"].as_u64().unwrap() as u32;
    for (image, pred) in images(inputs, dataset)
        .iter()
        .zip(reference[dataset].as_array().unwrap())
    {
        let path = folder.join(format!("{}.png", image["id"].as_str().unwrap()));
        ImageBuffer::<Luma<u16>, _>::from_raw(side, side, numbers(pred))
            .unwrap()
            .save(path)
            .unwrap();
    }
}
