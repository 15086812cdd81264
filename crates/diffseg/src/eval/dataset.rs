//! The two benchmarks of the paper in their official download layouts, their
//! class maps and class names (docs/method.md §7).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;

use crate::Error;

/// The number of ground-truth classes of both benchmarks.
pub const NUM_CLASSES: usize = 27;

/// The class index of an ignored pixel (unlabelled, or a class outside the 27).
pub const IGNORED: u8 = u8::MAX;

/// The 2,175 COCO-Stuff val2017 image ids of the paper's curated COCO-Stuff-27 list.
pub(crate) const COCOSTUFF27_VAL_CURATED: &str =
    include_str!("../../data/cocostuff27_val_curated.txt");

/// COCO-Stuff's 182 fine classes to the 27 coarse ones (the paper's pickle, as JSON).
pub(crate) const COCOSTUFF27_FINE_TO_COARSE: &str =
    include_str!("../../data/cocostuff27_fine_to_coarse.json");

/// The 27 COCO-Stuff coarse classes, by coarse index: 12 "things" super-categories,
/// then 15 "stuff" ones.
pub(crate) const COCOSTUFF27_CLASS_NAMES: [&str; NUM_CLASSES] = [
    "electronic",
    "appliance",
    "food-things",
    "furniture-things",
    "indoor",
    "kitchen",
    "accessory",
    "animal",
    "outdoor",
    "person",
    "sports",
    "vehicle",
    "ceiling",
    "floor",
    "food-stuff",
    "furniture-stuff",
    "raw-material",
    "textile",
    "wall",
    "window",
    "building",
    "ground",
    "plant",
    "sky",
    "solid",
    "structural",
    "water",
];

/// The Cityscapes classes with label ids 7 to 33, in id order (class index = id − 7).
pub(crate) const CITYSCAPES_CLASS_NAMES: [&str; NUM_CLASSES] = [
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
];

/// The first Cityscapes label id that is evaluated (`road`).
const CITYSCAPES_FIRST_ID: u8 = 7;

/// Maps a raw 8-bit label value to a class index in `0..27` or [`IGNORED`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelMap([u8; 256]);

impl LabelMap {
    /// The class of a raw label value: an index in `0..27`, or [`IGNORED`].
    pub(crate) fn class_of(&self, raw: u8) -> u8 {
        self.0[raw as usize]
    }

    /// Maps every raw label value to its class.
    pub(crate) fn apply(&self, raw: &[u8]) -> Vec<u8> {
        raw.iter().map(|&value| self.class_of(value)).collect()
    }
}

/// The parsed COCO-Stuff fine-to-coarse JSON.
#[derive(serde::Deserialize)]
struct FineToCoarse {
    fine_index_to_coarse_index: std::collections::BTreeMap<String, u8>,
}

/// COCO-Stuff fine ids 0–181 to the 27 coarse classes; 255 (unlabelled) and any id
/// the map does not list are ignored.
static COCOSTUFF27_LABEL_MAP: LazyLock<LabelMap> = LazyLock::new(|| {
    // The JSON is compiled in and checked by a unit test, so it cannot fail at run time.
    let parsed: FineToCoarse = serde_json::from_str(COCOSTUFF27_FINE_TO_COARSE)
        .expect("the embedded COCO-Stuff class map is valid JSON");
    let mut map = [IGNORED; 256];
    for (fine, coarse) in parsed.fine_index_to_coarse_index {
        let fine: u8 = fine
            .parse()
            .expect("the embedded COCO-Stuff class map has fine ids 0..=181");
        if fine != IGNORED && (coarse as usize) < NUM_CLASSES {
            map[fine as usize] = coarse;
        }
    }
    LabelMap(map)
});

/// A benchmark of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dataset {
    /// COCO-Stuff-27: the 2,175 curated val2017 images, 27 coarse classes.
    CocoStuff27,
    /// Cityscapes: the 500 val images, label ids 7–33 as 27 classes.
    Cityscapes,
}

/// One image of a dataset: its id, its image file and its ground-truth label file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The image file's stem, e.g. `000000000139` or
    /// `frankfurt_000000_000294_leftImg8bit`; the prediction file is `<id>.png`.
    pub id: String,
    /// The image file (only read when the evaluation runs the model).
    pub image: PathBuf,
    /// The ground-truth label PNG.
    pub label: PathBuf,
    /// The image's folder relative to the split folder (`frankfurt` for Cityscapes,
    /// empty for COCO): predictions may be kept in the same sub-folders.
    pub subfolder: PathBuf,
}

impl Sample {
    /// The name of this image's prediction PNG: `<image stem>.png`, as `diffseg
    /// segment` names its label maps.
    pub fn prediction_file_name(&self) -> String {
        format!("{}.png", self.id)
    }

    /// Where this image's prediction lies in `folder`: `folder/<id>.png`, or else
    /// `folder/<subfolder>/<id>.png` (a folder segmented recursively keeps the
    /// dataset's sub-folders). `None` if neither exists.
    pub fn find_prediction(&self, folder: impl AsRef<Path>) -> Option<PathBuf> {
        let folder = folder.as_ref();
        let flat = folder.join(self.prediction_file_name());
        if flat.is_file() {
            return Some(flat);
        }
        let nested = folder
            .join(&self.subfolder)
            .join(self.prediction_file_name());
        nested.is_file().then_some(nested)
    }
}

impl Dataset {
    /// The name used on the command line and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Dataset::CocoStuff27 => "cocostuff27",
            Dataset::Cityscapes => "cityscapes",
        }
    }

    /// The human name of the benchmark.
    pub fn title(&self) -> &'static str {
        match self {
            Dataset::CocoStuff27 => "COCO-Stuff-27",
            Dataset::Cityscapes => "Cityscapes",
        }
    }

    /// The merging threshold τ the paper uses on this benchmark (docs/method.md §5).
    pub fn default_tau(&self) -> f32 {
        match self {
            Dataset::CocoStuff27 => 1.1,
            Dataset::Cityscapes => 0.9,
        }
    }

    /// The 27 class names, by class index.
    pub fn class_names(&self) -> &'static [&'static str; NUM_CLASSES] {
        match self {
            Dataset::CocoStuff27 => &COCOSTUFF27_CLASS_NAMES,
            Dataset::Cityscapes => &CITYSCAPES_CLASS_NAMES,
        }
    }

    /// How raw label values become class indices.
    pub(crate) fn label_map(&self) -> LabelMap {
        match self {
            Dataset::CocoStuff27 => COCOSTUFF27_LABEL_MAP.clone(),
            Dataset::Cityscapes => {
                let mut map = [IGNORED; 256];
                for class in 0..NUM_CLASSES as u8 {
                    map[(CITYSCAPES_FIRST_ID + class) as usize] = class;
                }
                LabelMap(map)
            }
        }
    }

    /// The evaluation images under `root`, in a fixed order: for COCO-Stuff-27 the
    /// curated list's order, for Cityscapes sorted by city and file name.
    ///
    /// COCO-Stuff-27 reads `root/val2017/<id>.jpg` and the labels
    /// `root/stuffthingmaps_trainval2017/val2017/<id>.png` (the official download),
    /// or `root/annotation_val2017/<id>.png` (the paper's authors' renamed layout).
    /// Cityscapes reads `root/gtFine/val/<city>/<name>_gtFine_labelIds.png` and the
    /// images `root/leftImg8bit/val/<city>/<name>_leftImg8bit.png`.
    ///
    /// Only the folders are checked here: [`check_labels`] checks the label files,
    /// images are checked when read.
    pub fn samples(&self, root: impl AsRef<Path>) -> Result<Vec<Sample>, Error> {
        let root = root.as_ref();
        match self {
            Dataset::CocoStuff27 => {
                let ids: Vec<&str> = COCOSTUFF27_VAL_CURATED.lines().map(str::trim).collect();
                coco_samples(root, &ids)
            }
            Dataset::Cityscapes => cityscapes_samples(root),
        }
    }

    /// Like [`Dataset::samples`], restricted to the image ids in the text file
    /// `list` (one id, i.e. image file stem, per line; blank lines skipped), in
    /// the list's order.
    pub fn samples_from_list(
        &self,
        root: impl AsRef<Path>,
        list: impl AsRef<Path>,
    ) -> Result<Vec<Sample>, Error> {
        let root = root.as_ref();
        let list = list.as_ref();
        let text = std::fs::read_to_string(list).map_err(|source| Error::io(list, source))?;
        let ids: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        if ids.is_empty() {
            return Err(Error::ImageList {
                path: list.to_path_buf(),
                reason: "it lists no image id".into(),
            });
        }
        match self {
            Dataset::CocoStuff27 => coco_samples(root, &ids),
            Dataset::Cityscapes => {
                let all = cityscapes_samples(root)?;
                ids.iter()
                    .map(|id| {
                        all.iter()
                            .find(|sample| sample.id == *id)
                            .cloned()
                            .ok_or_else(|| Error::ImageList {
                                path: list.to_path_buf(),
                                reason: format!(
                                    "image `{id}` is not in {}",
                                    root.join("gtFine/val").display()
                                ),
                            })
                    })
                    .collect()
            }
        }
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dataset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "cocostuff27" | "cocostuff" | "coco" => Ok(Dataset::CocoStuff27),
            "cityscapes" => Ok(Dataset::Cityscapes),
            _ => Err(Error::unknown_name(
                "dataset",
                s,
                "expected cocostuff27 or cityscapes",
            )),
        }
    }
}

/// Fails with [`Error::MissingFolder`] unless `path` is a folder.
fn require_folder(path: PathBuf, hint: &str) -> Result<PathBuf, Error> {
    if path.is_dir() {
        Ok(path)
    } else {
        Err(Error::MissingFolder {
            path,
            hint: hint.to_string(),
        })
    }
}

/// Fails with [`Error::MissingLabel`], naming the first missing label file and
/// counting them, unless every sample's label file exists.
pub fn check_labels(samples: &[Sample]) -> Result<(), Error> {
    let missing: Vec<&Sample> = samples
        .iter()
        .filter(|sample| !sample.label.is_file())
        .collect();
    match missing.first() {
        Some(first) => Err(Error::MissingLabel {
            path: first.label.clone(),
            id: first.id.clone(),
            missing: missing.len(),
            total: samples.len(),
        }),
        None => Ok(()),
    }
}

/// Fails unless every sample's image file exists and has its label map's size
/// (reading only the files' headers): a mismatched pair would be cropped
/// differently. [`Error::SizeMismatch`] names both files.
pub fn check_images(samples: &[Sample]) -> Result<(), Error> {
    for sample in samples {
        let size_of =
            |path: &Path| image::image_dimensions(path).map_err(|source| Error::png(path, source));
        let (image_width, image_height) = size_of(&sample.image)?;
        let (label_width, label_height) = size_of(&sample.label)?;
        if (image_width, image_height) != (label_width, label_height) {
            return Err(Error::SizeMismatch {
                image: sample.image.clone(),
                image_width,
                image_height,
                label: sample.label.clone(),
                label_width,
                label_height,
            });
        }
    }
    Ok(())
}

/// COCO-Stuff samples for `ids`, labels in the official or the authors' layout.
fn coco_samples(root: &Path, ids: &[&str]) -> Result<Vec<Sample>, Error> {
    require_folder(root.to_path_buf(), "the COCO-Stuff root folder")?;
    let official = root.join("stuffthingmaps_trainval2017").join("val2017");
    let authors = root.join("annotation_val2017");
    let label_folder = if official.is_dir() {
        official
    } else if authors.is_dir() {
        authors
    } else {
        return Err(Error::MissingFolder {
            path: official,
            hint: "unzip stuffthingmaps_trainval2017.zip (COCO-Stuff label maps) into the root \
                   (the paper's renamed `annotation_val2017` folder is accepted too)"
                .into(),
        });
    };
    let image_folder = root.join("val2017");
    Ok(ids
        .iter()
        .map(|id| Sample {
            id: id.to_string(),
            image: image_folder.join(format!("{id}.jpg")),
            label: label_folder.join(format!("{id}.png")),
            subfolder: PathBuf::new(),
        })
        .collect())
}

/// The suffix of a Cityscapes label-id file.
const CITYSCAPES_LABEL_SUFFIX: &str = "_gtFine_labelIds.png";

/// Every Cityscapes val image that has a `gtFine_labelIds` file, sorted.
fn cityscapes_samples(root: &Path) -> Result<Vec<Sample>, Error> {
    let label_root = require_folder(
        root.join("gtFine").join("val"),
        "unzip gtFine_trainvaltest.zip (Cityscapes fine annotations) into the root",
    )?;
    let image_root = root.join("leftImg8bit").join("val");
    let mut samples = Vec::new();
    for city in sorted_entries(&label_root)? {
        if !city.is_dir() {
            continue;
        }
        let city_name = PathBuf::from(city.file_name().unwrap_or_default());
        for label in sorted_entries(&city)? {
            let Some(base) = label
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_suffix(CITYSCAPES_LABEL_SUFFIX))
            else {
                continue;
            };
            let id = format!("{base}_leftImg8bit");
            samples.push(Sample {
                image: image_root.join(&city_name).join(format!("{id}.png")),
                id,
                label,
                subfolder: city_name.clone(),
            });
        }
    }
    if samples.is_empty() {
        return Err(Error::EmptyDataset {
            path: label_root,
            what: format!("<city>/*{CITYSCAPES_LABEL_SUFFIX} label file"),
        });
    }
    Ok(samples)
}

/// The entries of a folder, sorted by path.
fn sorted_entries(folder: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut entries = std::fs::read_dir(folder)
        .map_err(|source| Error::io(folder, source))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::io(folder, source))?;
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_lists_are_complete() {
        let ids: Vec<&str> = COCOSTUFF27_VAL_CURATED.lines().collect();
        assert_eq!(ids.len(), 2175);
        assert_eq!(ids[0], "000000000139");
        assert!(ids.iter().all(|id| id.len() == 12));
        let map = Dataset::CocoStuff27.label_map();
        // Every fine id 0..=181 has a coarse class, nothing else does.
        for fine in 0..=255u8 {
            let class = map.class_of(fine);
            if fine <= 181 {
                assert!((class as usize) < NUM_CLASSES, "fine id {fine}");
            } else {
                assert_eq!(class, IGNORED, "fine id {fine}");
            }
        }
        // Spot checks against the COCO-Stuff hierarchy: person, car, wall-wood, wood.
        assert_eq!(map.class_of(0), 9);
        assert_eq!(map.class_of(2), 11);
        assert_eq!(map.class_of(176), 18);
        assert_eq!(map.class_of(181), 24);
    }

    #[test]
    fn cityscapes_ids_7_to_33_are_the_classes() {
        let map = Dataset::Cityscapes.label_map();
        assert_eq!(map.class_of(6), IGNORED);
        assert_eq!(map.class_of(7), 0);
        assert_eq!(map.class_of(26), 19);
        assert_eq!(CITYSCAPES_CLASS_NAMES[19], "car");
        assert_eq!(map.class_of(33), 26);
        assert_eq!(map.class_of(34), IGNORED);
        assert_eq!(map.class_of(255), IGNORED);
    }

    #[test]
    fn parses_dataset_names() {
        assert_eq!(
            "cocostuff27".parse::<Dataset>().unwrap(),
            Dataset::CocoStuff27
        );
        assert_eq!(
            "COCO-Stuff-27".parse::<Dataset>().unwrap(),
            Dataset::CocoStuff27
        );
        assert_eq!(
            "cityscapes".parse::<Dataset>().unwrap(),
            Dataset::Cityscapes
        );
        assert!("ade20k".parse::<Dataset>().is_err());
    }
}
