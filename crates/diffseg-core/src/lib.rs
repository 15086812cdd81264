//! The DiffSeg algorithm (Tian et al., CVPR 2024) after the UNet, generic over any Burn
//! backend: self-attention maps in, segmentation out.
//!
//! Steps (see docs/method.md §4–6), each a documented function:
//! [`AttentionAccumulator`] → [`AttentionMaps`] → [`aggregate`] → [`anchor_grid`] +
//! [`initial_proposals`] (using [`kl_matrix`]) → [`merge_proposals`] × (N−1) → optional
//! [`refine`] → [`label_map`] → [`Segmentation`]. [`segment_attention`] runs them all.
//!
//! DiffCut (Couairon et al., NeurIPS 2024) from one layer's features: [`cut_features`] runs
//! its steps ([`affinity_matrix`], [`recursive_normalized_cut`], [`assign_labels`], [`pamr`]).

// Every dependency a target lists must be used (checked at each build; test builds,
// which also see the dev-dependencies, are exempt).
#![cfg_attr(not(test), deny(unused_crate_dependencies))]
#![warn(missing_docs)]

mod aggregate;
mod attention;
mod cut;
mod error;
mod label;
mod merge;
mod naming;
mod resample;
mod segmentation;

pub use aggregate::{aggregate, aggregation_weights, Aggregate};
pub use attention::{AttentionAccumulator, AttentionMap, AttentionMaps};
pub use cut::{
    affinity_matrix, assemble_clusters, assign_labels, auto_spectral_clusters, best_bipartition,
    cluster_qr, cut_features, deterministic_sign_flip, laplacian_eigen, laplacian_eigenvalues,
    mask_pooling, median_filter_3x3, normalize_features, pamr, recursive_normalized_cut,
    relative_eigengap, second_smallest_eigenvector, second_smallest_eigenvector_dense,
    second_smallest_eigenvector_lanczos, Affinity, CutOptions, FeatureMap, PlanarImage,
    AUTO_TAU_ALPHAS, BIPARTITION_THRESHOLDS, DEFAULT_CUT_ALPHA, DEFAULT_CUT_TAU, DEFAULT_MASK_SIZE,
    MAX_CUT_PIXELS, MAX_MASK_SIZE, PAMR_DILATIONS, PAMR_ITERATIONS,
};
pub use error::Error;
pub use label::label_map;
pub use merge::{
    anchor_grid, initial_proposals, kl_matrix, kl_matrix_composed, merge_proposals,
    proposals_from_matches, refine, MergeOptions, Proposals, DEFAULT_ANCHORS, DEFAULT_ITERATIONS,
    DEFAULT_TAU, LOG_FLOOR, REFINE_MAX_ITERATIONS,
};
pub use naming::{
    combine_resolutions, entry_maps, mean_per_resolution, name_segments, normalise_entry_maps,
    segment_entry_scores, EntryMaps, LayerEntryMaps, SegmentNames,
};
pub use resample::resize_bilinear_half_pixel;
pub use segmentation::{BoundingBox, Segment, Segmentation};

use burn::tensor::backend::Backend;

/// Segments from attention maps with the full method: aggregate, merge `options.iterations`
/// times, optionally refine, and label an `out_width x out_height` map.
pub fn segment_attention<B: Backend>(
    maps: &AttentionMaps<B>,
    options: &MergeOptions,
    out_height: usize,
    out_width: usize,
) -> Result<Segmentation, Error> {
    let proposals = merge_attention(maps, options)?;
    label_map(
        proposals.maps,
        proposals.height,
        proposals.width,
        out_height,
        out_width,
    )
}

/// Everything of [`segment_attention`] before the label map: the final proposals.
pub fn merge_attention<B: Backend>(
    maps: &AttentionMaps<B>,
    options: &MergeOptions,
) -> Result<Proposals<B>, Error> {
    options.validate()?;
    let aggregate = aggregate(maps);
    let anchors = anchor_grid(aggregate.height, aggregate.width, options.anchors)?;
    let mut proposals = initial_proposals(&aggregate, &anchors, options.tau_at(0)?);
    for iteration in 1..options.iterations {
        proposals = merge_proposals(&proposals, options.tau_at(iteration)?);
    }
    if options.refine {
        proposals = refine(&aggregate, &proposals);
    }
    Ok(proposals)
}
