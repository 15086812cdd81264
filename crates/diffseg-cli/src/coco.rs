//! `diffseg segment --coco FILE`: one COCO file for a run's results. It is a
//! COCO dataset file (`images`, `annotations`, `categories`), as
//! pycocotools' `COCO(FILE)`, FiftyOne and CVAT load one, whose `annotations`
//! are also a results list for `COCO.loadRes`: one annotation per segment,
//! all of category 1 (`segment`: DiffSeg's segments have no classes), with
//! the segment's mask as compressed RLE, area and box. There is no `score`:
//! DiffSeg gives its segments none.

use std::path::Path;

use diffseg::{CocoRle, SegmentsFile};
use serde::{Deserialize, Serialize};

/// The `info.description` that marks a COCO file as diffseg's, checked
/// before a later run replaces it (a user's COCO annotations never are).
const MARK: &str = "diffseg segment results";

/// The COCO file of a run, built image by image.
#[derive(Debug, Serialize)]
pub struct CocoFile {
    info: Info,
    images: Vec<Image>,
    annotations: Vec<Annotation>,
    categories: [Category; 1],
    /// Empty: some importers expect the key.
    licenses: [(); 0],
}

#[derive(Debug, Serialize, Deserialize)]
struct Info {
    description: String,
    version: String,
}

#[derive(Debug, Serialize)]
struct Image {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
}

#[derive(Debug, Serialize)]
struct Annotation {
    id: u64,
    image_id: u64,
    category_id: u32,
    segmentation: CocoRle,
    area: u64,
    bbox: [u32; 4],
    iscrowd: u8,
}

#[derive(Debug, Serialize)]
struct Category {
    id: u32,
    name: &'static str,
    supercategory: &'static str,
}

/// The one category: every segment is one.
const SEGMENT: u32 = 1;

impl CocoFile {
    /// The COCO file of `results`: each image's name (its path relative to
    /// the folder its results mirror) and description. Images are numbered
    /// in the order of their names, so a run resumed in several goes gives
    /// the same file as one run.
    pub fn new(mut results: Vec<(String, SegmentsFile)>) -> CocoFile {
        results.sort_by(|a, b| a.0.cmp(&b.0));
        let mut file = CocoFile {
            info: Info {
                description: MARK.into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            images: Vec::with_capacity(results.len()),
            annotations: Vec::new(),
            categories: [Category {
                id: SEGMENT,
                name: "segment",
                supercategory: "segment",
            }],
            licenses: [],
        };
        for (image_id, (file_name, description)) in (1..).zip(results) {
            file.images.push(Image {
                id: image_id,
                file_name,
                width: description.width,
                height: description.height,
            });
            for segment in description.segments {
                file.annotations.push(Annotation {
                    id: file.annotations.len() as u64 + 1,
                    image_id,
                    category_id: SEGMENT,
                    segmentation: segment.segmentation,
                    area: segment.area,
                    bbox: segment.bbox,
                    iscrowd: 0,
                });
            }
        }
        file
    }
}

/// Whether `path` holds a COCO file that diffseg wrote (its mark).
pub fn is_ours(path: &Path) -> bool {
    #[derive(Deserialize)]
    struct Marked {
        info: Info,
    }
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Marked>(&bytes).ok())
        .is_some_and(|marked| marked.info.description == MARK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description(width: u32, height: u32, labels: Vec<u32>) -> SegmentsFile {
        diffseg::Segmentation::from_labels(labels, width as usize, height as usize)
            .unwrap()
            .describe(None)
    }

    #[test]
    fn images_and_segments_are_numbered_from_one_in_name_order() {
        let file = CocoFile::new(vec![
            ("sub/b.jpg".into(), description(2, 1, vec![0, 1])),
            ("a.png".into(), description(3, 1, vec![4, 4, 4])),
        ]);
        let json = serde_json::to_value(&file).unwrap();
        assert_eq!(json["images"][0]["file_name"], "a.png");
        assert_eq!(json["images"][1]["id"], 2);
        let annotations = json["annotations"].as_array().unwrap();
        assert_eq!(annotations.len(), 3);
        let ids: Vec<u64> = annotations
            .iter()
            .map(|a| a["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(annotations[0]["image_id"], 1);
        assert_eq!(annotations[0]["area"], 3);
        assert_eq!(annotations[2]["image_id"], 2);
        assert_eq!(annotations[2]["bbox"], serde_json::json!([1, 0, 1, 1]));
        assert!(annotations[2]["segmentation"]["counts"].is_string());
        assert_eq!(json["categories"][0]["name"], "segment");

        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("coco.json");
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        assert!(is_ours(&path));
        std::fs::write(
            &path,
            br#"{"images": [], "annotations": [], "categories": []}"#,
        )
        .unwrap();
        assert!(!is_ours(&path), "a user's COCO file is not diffseg's");
    }
}
