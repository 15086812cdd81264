//! Parity with DiffCut's published code: tools/reference/diffcut_reference.py ran
//! `generate_masks` and eval_diffcut.py's PAMR + median filter (PaulCouairon/DiffCut at
//! aa16df4, "cuda" made "cpu") on synthetic feature maps and wrote their labels. Ours must
//! find the same number of segments and label at least 99.5 % of the 128² cells the same,
//! up to a renaming of labels.

use std::collections::BTreeMap;

use diffseg_core::{
    affinity_matrix, cut_features, median_filter_3x3, normalize_features, recursive_normalized_cut,
    CutOptions, FeatureMap, PlanarImage, DEFAULT_CUT_ALPHA, DEFAULT_CUT_TAU,
};
use safetensors::{Dtype, SafeTensors};

const FIXTURE: &str = "tests/fixtures/diffcut/diffcut.safetensors";
const MIN_AGREEMENT: f64 = 0.995;
/// The map at DiffCut's real size, regenerated here (no features stored).
const GENERATED: &str = "splitmix1280";

struct Map {
    name: String,
    features: FeatureMap,
    image: Vec<f32>,
    image_side: usize,
    tau: f32,
    alpha: f32,
    mask_size: usize,
    /// Published labels: plain, after PAMR, after PAMR and the median filter.
    labels: [Vec<u32>; 3],
    accepted_cuts: usize,
}

fn fixture() -> (Vec<u8>, BTreeMap<String, serde_json::Value>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run tools/reference/diffcut_reference.py)",
            path.display()
        )
    });
    let (_, metadata) = SafeTensors::read_metadata(&bytes).expect("fixture header");
    let maps: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&metadata.metadata().as_ref().expect("fixture metadata")["maps"])
            .expect("maps metadata");
    (bytes, maps)
}

fn maps() -> Vec<Map> {
    let (bytes, maps) = fixture();
    let tensors = SafeTensors::deserialize(&bytes).expect("fixture parses");
    let tensor = |name: &str| {
        let view = tensors.tensor(name).expect(name);
        (view.dtype(), view.shape().to_vec(), view.data().to_vec())
    };
    let u8_values = |name: &str| {
        let (dtype, _, data) = tensor(name);
        assert_eq!(dtype, Dtype::U8, "{name}");
        data
    };
    maps.into_iter()
        .filter(|(name, _)| name != GENERATED)
        .map(|(name, meta)| {
            let (dtype, shape, data) = tensor(&format!("{name}.features"));
            assert_eq!(dtype, Dtype::F32);
            let values = data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let features = FeatureMap::new(values, shape[0], shape[1], shape[2]).unwrap();
            let (_, image_shape, _) = tensor(&format!("{name}.image"));
            assert_eq!(image_shape[1], image_shape[2], "square fixture images");
            let image = u8_values(&format!("{name}.image"))
                .iter()
                .map(|&v| v as f32 / 255.0)
                .collect();
            let labels = ["labels", "labels_pamr", "labels_pamr_median"].map(|kind| {
                u8_values(&format!("{name}.{kind}"))
                    .iter()
                    .map(|&v| v as u32)
                    .collect()
            });
            let tau = meta["tau"].as_f64().unwrap() as f32;
            let accepted_cuts = meta["cut_values"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|value| value.as_f64().unwrap() < tau as f64)
                .count();
            Map {
                name,
                features,
                image,
                image_side: image_shape[1],
                tau,
                alpha: meta["alpha"].as_f64().unwrap() as f32,
                mask_size: meta["mask_size"].as_u64().unwrap() as usize,
                labels,
                accepted_cuts,
            }
        })
        .collect()
}

/// benches/cut.rs's features: splitmix64 noise as a uniform f32 in [-1, 1).
fn noise(index: u64) -> f32 {
    let mut z = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// benches/cut.rs's 32×32×1280 map of six regions (the reference computes the same values).
fn generated_features() -> FeatureMap {
    const SIDE: usize = 32;
    const CHANNELS: usize = 1280;
    const REGIONS: usize = 6;
    let seeds: Vec<(f32, f32)> = (0..REGIONS as u64)
        .map(|r| (0.5 + 0.4 * noise(2 * r), 0.5 + 0.4 * noise(2 * r + 1)))
        .collect();
    let mut values = Vec::with_capacity(SIDE * SIDE * CHANNELS);
    for y in 0..SIDE {
        for x in 0..SIDE {
            let (py, px) = (
                (y as f32 + 0.5) / SIDE as f32,
                (x as f32 + 0.5) / SIDE as f32,
            );
            let region = (0..REGIONS)
                .min_by(|&a, &b| {
                    let d = |(sy, sx): (f32, f32)| (sy - py).powi(2) + (sx - px).powi(2);
                    d(seeds[a]).total_cmp(&d(seeds[b]))
                })
                .unwrap();
            let pixel = (y * SIDE + x) as u64;
            values.extend((0..CHANNELS as u64).map(|c| {
                noise(5_000 + c)
                    + 0.6 * noise(10_000 + region as u64 * CHANNELS as u64 + c)
                    + 0.4 * noise(1_000_000 + pixel * CHANNELS as u64 + c)
            }));
        }
    }
    FeatureMap::new(values, SIDE, SIDE, CHANNELS).unwrap()
}

/// Distinct labels in a map.
fn count(labels: &[u32]) -> usize {
    let mut distinct = labels.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    distinct.len()
}

/// The share of cells equal once each of our labels is renamed to the reference label it
/// overlaps most, one to one, largest overlaps first (greedy matching on the confusion
/// matrix; the maps compared are nearly equal, so it finds the best renaming).
fn agreement(ours: &[u32], reference: &[u32]) -> f64 {
    let mut overlaps: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    for (&a, &b) in ours.iter().zip(reference) {
        *overlaps.entry((a, b)).or_default() += 1;
    }
    let mut pairs: Vec<((u32, u32), usize)> = overlaps.into_iter().collect();
    pairs.sort_by(|x, y| y.1.cmp(&x.1));
    let (mut used_ours, mut used_reference) = (Vec::new(), Vec::new());
    let mut matched = 0;
    for ((a, b), cells) in pairs {
        if !used_ours.contains(&a) && !used_reference.contains(&b) {
            used_ours.push(a);
            used_reference.push(b);
            matched += cells;
        }
    }
    matched as f64 / ours.len() as f64
}

#[test]
fn recursion_accepts_the_published_number_of_cuts() {
    for map in maps() {
        let normalized = normalize_features(&map.features);
        let affinity = affinity_matrix(&normalized, map.alpha).expect("structured features");
        let masks = recursive_normalized_cut(&affinity, map.tau).unwrap();
        println!(
            "{}: {} cuts accepted (published {})",
            map.name,
            masks.len(),
            map.accepted_cuts
        );
        assert_eq!(masks.len(), map.accepted_cuts, "{}", map.name);
    }
}

#[test]
fn labels_match_the_published_code() {
    let variants = [
        ("plain", false, false),
        ("PAMR", true, false),
        ("PAMR + median", true, true),
    ];
    let mut failures = Vec::new();
    for map in maps() {
        let image = PlanarImage::new(&map.image, 3, map.image_side, map.image_side).unwrap();
        for (index, (variant, pamr, median)) in variants.into_iter().enumerate() {
            let options = CutOptions::new(map.tau, map.alpha, map.mask_size, pamr, median).unwrap();
            let segmentation = cut_features(&map.features, &options, Some(&image)).unwrap();
            let reference = &map.labels[index];
            let share = agreement(segmentation.labels(), reference);
            println!(
                "{} ({}x{}), {variant}: {} segments (published {}), {:.3} % of cells equal",
                map.name,
                map.features.height(),
                map.features.width(),
                segmentation.segment_count(),
                count(reference),
                share * 100.0
            );
            if segmentation.segment_count() != count(reference) || share < MIN_AGREEMENT {
                failures.push(format!("{} {variant}", map.name));
            }
        }
    }
    assert!(failures.is_empty(), "no parity: {failures:?}");
}

/// The median filter changes only 0.07-0.3 % of cells here, less than the 0.5 % the
/// comparison above allows, so it is checked on its own: on the published PAMR output it
/// must give the published filtered labels exactly.
#[test]
fn median_filter_matches_scipy_exactly() {
    for map in maps() {
        let side = map.mask_size;
        let filtered = median_filter_3x3(&map.labels[1], side, side);
        let changed = map.labels[1]
            .iter()
            .zip(&map.labels[2])
            .filter(|(a, b)| a != b)
            .count();
        assert!(changed > 0, "{}: the filter changes something", map.name);
        assert_eq!(filtered, map.labels[2], "{}", map.name);
    }
}

#[test]
fn labels_match_at_diffcuts_real_size() {
    let (bytes, maps) = fixture();
    let tensors = SafeTensors::deserialize(&bytes).expect("fixture parses");
    let meta = &maps[GENERATED];
    let view = tensors.tensor(&format!("{GENERATED}.labels")).unwrap();
    let reference: Vec<u32> = view.data().iter().map(|&v| v as u32).collect();
    let options = CutOptions::new(
        meta["tau"].as_f64().unwrap() as f32,
        meta["alpha"].as_f64().unwrap() as f32,
        meta["mask_size"].as_u64().unwrap() as usize,
        false,
        false,
    )
    .unwrap();
    let segmentation = cut_features(&generated_features(), &options, None).unwrap();
    let share = agreement(segmentation.labels(), &reference);
    println!(
        "{GENERATED} (32x32x1280): {} segments (published {}), {:.3} % of cells equal",
        segmentation.segment_count(),
        count(&reference),
        share * 100.0
    );
    assert_eq!(segmentation.segment_count(), count(&reference));
    assert!(share >= MIN_AGREEMENT);
}

/// The eigengap variant (`--tau auto`) against the published `autosc.py`, which the reference
/// ran on every square map (it handles no other) and on the map at DiffCut's real size.
#[test]
fn eigengap_variant_matches_autosc() {
    let (bytes, _) = fixture();
    let tensors = SafeTensors::deserialize(&bytes).expect("fixture parses");
    let published = |name: &str| -> Option<Vec<u32>> {
        let view = tensors.tensor(&format!("{name}.labels_auto")).ok()?;
        Some(view.data().iter().map(|&v| v as u32).collect())
    };
    let mut inputs: Vec<(String, FeatureMap, usize)> = maps()
        .into_iter()
        .map(|map| (map.name, map.features, map.mask_size))
        .collect();
    inputs.push((GENERATED.into(), generated_features(), 128));
    let mut compared = 0;
    let mut failures = Vec::new();
    for (name, features, mask_size) in inputs {
        let Some(reference) = published(&name) else {
            assert_ne!(
                features.height(),
                features.width(),
                "{name}: square maps have labels"
            );
            continue;
        };
        let options = CutOptions::new(DEFAULT_CUT_TAU, DEFAULT_CUT_ALPHA, mask_size, false, false)
            .unwrap()
            .with_auto_tau(true);
        let segmentation = cut_features(&features, &options, None).unwrap();
        let share = agreement(segmentation.labels(), &reference);
        println!(
            "{name}: eigengap variant, {} segments (published {}), {:.3} % of cells equal",
            segmentation.segment_count(),
            count(&reference),
            share * 100.0
        );
        if segmentation.segment_count() != count(&reference) || share < MIN_AGREEMENT {
            failures.push(name);
        }
        compared += 1;
    }
    assert_eq!(compared, 4, "three square maps and the real-size one");
    assert!(failures.is_empty(), "no parity: {failures:?}");
}

#[test]
fn a_mismatch_is_detected() {
    // The comparison itself must be able to fail: a shifted map agrees far less.
    let map = &maps()[0];
    let reference = &map.labels[0];
    let side = map.mask_size;
    let shifted: Vec<u32> = (0..reference.len())
        .map(|cell| reference[(cell + side * side / 4) % reference.len()])
        .collect();
    assert!(agreement(&shifted, reference) < MIN_AGREEMENT);
    assert_eq!(agreement(reference, reference), 1.0);
}
