//! Behaviour of the individual steps on small hand-made inputs.

use crate::common;

use burn::tensor::backend::Backend;
use common::{host, tensor2, tensor3};
use diffseg_core::{
    aggregate, aggregation_weights, anchor_grid, initial_proposals, kl_matrix, label_map, refine,
    segment_attention, Aggregate, AttentionAccumulator, AttentionMaps, Error, MergeOptions,
    Proposals, Segmentation,
};

/// A `[n, n]` map on an `side x side` grid whose rows attend to their own quadrant of the
/// grid (uniformly) and put exactly zero weight elsewhere: exact zeros everywhere.
fn quadrant_attention(side: usize) -> Vec<f32> {
    let cells = side * side;
    let quadrant = |cell: usize| ((cell / side) * 2 / side) * 2 + (cell % side) * 2 / side;
    let size = (cells / 4) as f32;
    let mut probs = vec![0f32; cells * cells];
    for query in 0..cells {
        for key in 0..cells {
            if quadrant(query) == quadrant(key) {
                probs[query * cells + key] = 1.0 / size;
            }
        }
    }
    probs
}

fn maps_with_zeros<B: Backend>(device: &B::Device) -> AttentionMaps<B> {
    AttentionMaps::from_maps(
        [32, 16, 8]
            .iter()
            .map(|&side| {
                (
                    tensor2::<B>(quadrant_attention(side), [side * side, side * side], device),
                    side,
                    side,
                )
            })
            .collect(),
    )
    .unwrap()
}

/// The reference's float16 KL gives NaN for 0·log 0 and loses such anchors; ours must not.
fn exact_zeros_give_finite_kl_and_four_segments<B: Backend>(device: &B::Device) {
    let aggregate = aggregate(&maps_with_zeros::<B>(device));
    let values = host(aggregate.maps.clone());
    assert!(
        values.contains(&0.0),
        "the test input must hold exact zeros"
    );
    let kl = host(kl_matrix(aggregate.maps.clone(), aggregate.maps.clone()));
    assert!(
        kl.iter().all(|v| v.is_finite()),
        "KL must stay finite with zeros"
    );
    let anchors = anchor_grid(32, 32, 8).unwrap();
    let proposals = initial_proposals(&aggregate, &anchors, 1.1);
    for (members, (row, column)) in proposals.members.iter().zip(&anchors) {
        assert!(
            members.contains(&(row * 32 + column)),
            "anchor ({row}, {column}) must match itself"
        );
    }
    let options = MergeOptions::default().with_anchors(8);
    let segmentation = segment_attention(&maps_with_zeros::<B>(device), &options, 64, 64).unwrap();
    assert_eq!(segmentation.segment_count(), 4);
    for segment in segmentation.segments() {
        assert_eq!(segment.area, 32 * 32);
        assert_eq!((segment.bbox.width, segment.bbox.height), (32, 32));
    }
}

fn accumulator_averages_heads_and_layers<B: Backend>(device: &B::Device) {
    let side = 4;
    let cells = side * side;
    let uniform = vec![1.0 / cells as f32; cells * cells];
    let quadrants = quadrant_attention(side);
    let mut heads = uniform.clone();
    heads.extend(&quadrants);
    let mut accumulator = AttentionAccumulator::<B>::new(device);
    accumulator
        .add_heads(tensor3::<B>(heads, [2, cells, cells], device), side, side)
        .unwrap();
    accumulator
        .add_mean(
            tensor2::<B>(quadrants.clone(), [cells, cells], device),
            side,
            side,
        )
        .unwrap();
    accumulator
        .add_mean(tensor2::<B>(vec![0.25; 16], [4, 4], device), 2, 2)
        .unwrap();
    let error = accumulator
        .add_mean(tensor2::<B>(vec![0.25; 16], [4, 4], device), 4, 4)
        .unwrap_err();
    assert!(matches!(error, Error::Shape { .. }), "{error}");
    let maps = accumulator.finish().unwrap();
    let collected: Vec<_> = maps
        .iter()
        .map(|map| (map.height, map.width, host(map.probs.clone())))
        .collect();
    assert_eq!(collected.len(), 2);
    assert_eq!((collected[0].0, collected[0].1), (4, 4), "largest first");
    // Layer 1 is the mean of its heads; the result is the mean of layers 1 and 2.
    for (index, value) in collected[0].2.iter().enumerate() {
        let expected = ((uniform[index] + quadrants[index]) / 2.0 + quadrants[index]) / 2.0;
        assert!(
            (value - expected).abs() < 1e-6,
            "{index}: {value} vs {expected}"
        );
    }
    maps.check_distributions(1e-4).unwrap();
}

fn rejects_bad_maps<B: Backend>(device: &B::Device) {
    let bad_shape =
        AttentionMaps::from_maps(vec![(tensor2::<B>(vec![0.5; 6], [2, 3], device), 1, 2)]);
    assert!(matches!(bad_shape, Err(Error::Shape { .. })));
    let empty = AttentionMaps::<B>::from_maps(Vec::new());
    assert!(matches!(empty, Err(Error::Maps(_))));
    let not_dividing = AttentionMaps::from_maps(vec![
        (tensor2::<B>(vec![1.0 / 16.0; 256], [16, 16], device), 4, 4),
        (tensor2::<B>(vec![1.0 / 9.0; 81], [9, 9], device), 3, 3),
    ]);
    assert!(matches!(not_dividing, Err(Error::Maps(_))));
    let mut values = vec![1.0 / 4.0; 16];
    values[5] = f32::NAN;
    let nan = AttentionMaps::from_maps(vec![(tensor2::<B>(values, [4, 4], device), 2, 2)]).unwrap();
    let error = nan.check_distributions(1e-3).unwrap_err().to_string();
    assert!(error.contains("row 1") && error.contains("NaN"), "{error}");
    let unnormalised =
        AttentionMaps::from_maps(vec![(tensor2::<B>(vec![0.5; 16], [4, 4], device), 2, 2)])
            .unwrap();
    assert!(unnormalised
        .check_distributions(1e-3)
        .unwrap_err()
        .to_string()
        .contains("sums to 2"));
}

/// Rectangular grids: 8x12 and 4x6 aggregate to 8x12, weights ∝ sqrt(h·w).
fn rectangular_grids_aggregate<B: Backend>(device: &B::Device) {
    let uniform = |cells: usize| vec![1.0 / cells as f32; cells * cells];
    let maps = AttentionMaps::from_maps(vec![
        (tensor2::<B>(uniform(24), [24, 24], device), 4, 6),
        (tensor2::<B>(uniform(96), [96, 96], device), 8, 12),
    ])
    .unwrap();
    let weights = aggregation_weights(&maps);
    assert!((weights[0] - 2.0 / 3.0).abs() < 1e-6 && (weights[1] - 1.0 / 3.0).abs() < 1e-6);
    let Aggregate {
        maps,
        height,
        width,
    } = aggregate(&maps);
    assert_eq!((height, width, maps.dims()), (8, 12, [96, 96]));
    assert!(host(maps).iter().all(|v| (v - 1.0 / 96.0).abs() < 1e-7));
    assert_eq!(
        anchor_grid(8, 12, 3).unwrap(),
        vec![
            (0, 0),
            (0, 5),
            (0, 10),
            (3, 0),
            (3, 5),
            (3, 10),
            (6, 0),
            (6, 5),
            (6, 10)
        ]
    );
}

/// k-means from poor initial centres recovers two obvious clusters.
fn refine_finds_clusters<B: Backend>(device: &B::Device) {
    // 2x2 grid: rows 0, 1 near e0; rows 2, 3 near e3.
    let points = vec![
        0.9, 0.1, 0.0, 0.0, //
        0.8, 0.1, 0.1, 0.0, //
        0.0, 0.1, 0.1, 0.8, //
        0.0, 0.0, 0.1, 0.9,
    ];
    let aggregate = Aggregate {
        maps: tensor2::<B>(points.clone(), [4, 4], device),
        height: 2,
        width: 2,
    };
    // The second centre starts between the clusters and must move onto the second one.
    let initial = Proposals {
        maps: tensor2::<B>(vec![0.8, 0.1, 0.1, 0.0, 0.1, 0.1, 0.4, 0.4], [2, 4], device),
        height: 2,
        width: 2,
        members: vec![vec![], vec![]],
    };
    let refined = refine(&aggregate, &initial);
    assert_eq!(refined.members, vec![vec![0, 1], vec![2, 3]]);
    let means = host(refined.maps);
    assert!((means[0] - 0.85).abs() < 1e-6 && (means[7] - 0.85).abs() < 1e-6);
}

/// Ties go to the first proposal, and labels are renumbered so none is empty.
fn label_map_breaks_ties_first_and_renumbers<B: Backend>(device: &B::Device) {
    // Proposal 0 never wins (proposal 1 is larger everywhere), 1 and 2 tie on the left half.
    let mut values = vec![0.0f32; 3 * 4];
    values[4..8].copy_from_slice(&[1.0, 1.0, 1.0, 1.0]);
    values[8..12].copy_from_slice(&[1.0, 2.0, 1.0, 2.0]);
    let segmentation = label_map(tensor2::<B>(values, [3, 4], device), 2, 2, 2, 2).unwrap();
    assert_eq!(segmentation.labels(), &[0, 1, 0, 1]);
    assert_eq!(segmentation.segment_count(), 2);
}

backend_tests!(
    exact_zeros_give_finite_kl_and_four_segments,
    accumulator_averages_heads_and_layers,
    rejects_bad_maps,
    rectangular_grids_aggregate,
    refine_finds_clusters,
    label_map_breaks_ties_first_and_renumbers,
);

#[test]
fn anchor_grid_is_the_papers() {
    let grid = anchor_grid(64, 64, 16).unwrap();
    assert_eq!(grid.len(), 256);
    assert_eq!(&grid[..3], &[(1, 1), (1, 5), (1, 9)]);
    assert_eq!(grid[16], (5, 1));
    assert_eq!(grid[255], (61, 61));
    assert!(anchor_grid(8, 8, 9).is_err());
}

#[test]
fn options_validate() {
    let paper = MergeOptions::default();
    assert_eq!(
        (
            paper.tau.clone(),
            paper.anchors,
            paper.iterations,
            paper.refine
        ),
        (vec![1.1], 16, 3, false)
    );
    paper.validate().unwrap();
    assert_eq!(
        MergeOptions::default().with_tau(0.9).tau_at(2).unwrap(),
        0.9
    );
    let per_iteration = MergeOptions::default().with_taus(vec![1.0, 1.1, 1.2]);
    per_iteration.validate().unwrap();
    assert_eq!(per_iteration.tau_at(1).unwrap(), 1.1);
    for bad in [
        MergeOptions::default().with_taus(vec![1.0, 1.1]),
        MergeOptions::default().with_tau(0.0),
        MergeOptions::default().with_tau(f32::NAN),
        MergeOptions::default().with_iterations(0),
        MergeOptions::default().with_anchors(1),
    ] {
        assert!(matches!(bad.validate(), Err(Error::Options(_))), "{bad:?}");
    }
}

#[test]
fn segmentation_statistics_and_masks() {
    let segmentation = Segmentation::from_labels(vec![7, 7, 3, 3, 7, 9], 3, 2).unwrap();
    assert_eq!(segmentation.labels(), &[1, 1, 0, 0, 1, 2]);
    assert_eq!(segmentation.segment_count(), 3);
    let second = segmentation.segments()[1];
    assert_eq!(
        (
            second.area,
            second.bbox.x,
            second.bbox.y,
            second.bbox.width,
            second.bbox.height
        ),
        (3, 0, 0, 2, 2)
    );
    assert_eq!(
        segmentation.mask(0).unwrap(),
        vec![false, false, true, true, false, false]
    );
    assert!(matches!(
        segmentation.mask(3),
        Err(Error::NoSuchSegment { index: 3, count: 3 })
    ));
    assert!(Segmentation::from_labels(vec![0; 5], 3, 2).is_err());

    let resized = segmentation.resize_nearest(6, 4).unwrap();
    assert_eq!(&resized.labels()[..6], &[1, 1, 1, 1, 0, 0]);
}

/// The algorithm computes in the dtype of the maps it is given, whatever the backend's default:
/// an f16 model hands over f32 probabilities and the merge must stay in f32. Checked here with
/// f64 maps on the f32 CPU backend (burn-ndarray has no f16): every constant tensor the merge
/// makes (interpolation and membership matrices) must follow, or mixing dtypes fails.
#[test]
fn the_merge_follows_the_dtype_of_the_maps() {
    use burn::tensor::{DType, FloatDType};
    type B = burn::backend::NdArray<f32>;
    let device = Default::default();
    let in_f64 = AttentionMaps::from_maps(
        maps_with_zeros::<B>(&device)
            .iter()
            .map(|map| {
                (
                    map.probs.clone().cast(FloatDType::F64),
                    map.height,
                    map.width,
                )
            })
            .collect(),
    )
    .unwrap();
    let options = MergeOptions::default().with_anchors(8).with_refine(true);
    let proposals = diffseg_core::merge_attention(&in_f64, &options).unwrap();
    assert_eq!(proposals.maps.dtype(), DType::F64);
    let segmentation = segment_attention(&in_f64, &options, 64, 64).unwrap();
    let in_f32 = segment_attention(&maps_with_zeros::<B>(&device), &options, 64, 64).unwrap();
    assert_eq!(segmentation.labels(), in_f32.labels());
}
