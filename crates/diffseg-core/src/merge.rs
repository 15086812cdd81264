//! Iterative attention merging (docs/method.md §5): anchors, KL-threshold proposals, greedy merges
//! and the optional k-means refinement.

use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor, TensorData};
use diffseg_cpu::matmul;
use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
use crate::Error;

/// Logs are taken of values clamped to this floor, so maps holding exact zeros (fp16
/// attention underflows) give finite KL values instead of the reference's `0 * log 0 = NaN`.
pub const LOG_FLOOR: f32 = 1e-30;

/// The paper's KL threshold τ on COCO-Stuff-27 (it uses 0.9 on Cityscapes).
pub const DEFAULT_TAU: f32 = 1.1;
/// The paper's anchors per grid side (M).
pub const DEFAULT_ANCHORS: usize = 16;
/// The paper's merge iterations (N).
pub const DEFAULT_ITERATIONS: usize = 3;

/// Settings of the merge stage. `Default` is the paper's: τ [`DEFAULT_TAU`],
/// [`DEFAULT_ANCHORS`] anchors per side, [`DEFAULT_ITERATIONS`] iterations, no refinement.
/// [`MergeOptions::new`] builds checked options from every value at once (what the CLI and
/// Python do); the `with_*` methods change one from `Default`, so that a new option does
/// not break callers, and [`MergeOptions::validate`] checks the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MergeOptions {
    /// KL threshold per iteration: one value per iteration, or a single value used for all.
    pub tau: Vec<f32>,
    /// Anchors per grid side (M); the anchor grid is `M x M`.
    pub anchors: usize,
    /// Merge iterations (N): iteration 0 makes proposals from anchors, the rest merge them.
    pub iterations: usize,
    /// Run k-means over all maps, initialised with the proposals, after merging.
    pub refine: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self {
            tau: vec![DEFAULT_TAU],
            anchors: DEFAULT_ANCHORS,
            iterations: DEFAULT_ITERATIONS,
            refine: false,
        }
    }
}

impl MergeOptions {
    /// Checked options: `tau` is one KL threshold for every iteration or one per iteration;
    /// out of range ([`MergeOptions::validate`]) they are [`Error::Options`].
    pub fn new(
        tau: Vec<f32>,
        anchors: usize,
        iterations: usize,
        refine: bool,
    ) -> Result<Self, Error> {
        let options = Self {
            tau,
            anchors,
            iterations,
            refine,
        };
        options.validate()?;
        Ok(options)
    }

    /// The same KL threshold at every iteration (1.1 for COCO-Stuff-27, 0.9 for Cityscapes).
    pub fn with_tau(mut self, tau: f32) -> Self {
        self.tau = vec![tau];
        self
    }

    /// One KL threshold per iteration.
    pub fn with_taus(mut self, taus: Vec<f32>) -> Self {
        self.tau = taus;
        self
    }

    /// Anchors per grid side.
    pub fn with_anchors(mut self, anchors: usize) -> Self {
        self.anchors = anchors;
        self
    }

    /// Number of merge iterations.
    pub fn with_iterations(mut self, iterations: usize) -> Self {
        self.iterations = iterations;
        self
    }

    /// Turns the k-means refinement on or off.
    pub fn with_refine(mut self, refine: bool) -> Self {
        self.refine = refine;
        self
    }

    /// The KL threshold of iteration `iteration`: the single τ, or the
    /// iteration's own. [`Error::Options`] when there is none (no τ at all,
    /// or fewer than `iteration + 1` of them).
    pub fn tau_at(&self, iteration: usize) -> Result<f32, Error> {
        let tau = match self.tau.as_slice() {
            [tau] => Some(tau),
            taus => taus.get(iteration),
        };
        tau.copied().ok_or_else(|| {
            Error::Options(format!(
                "no KL threshold for iteration {iteration}: {} given",
                self.tau.len()
            ))
        })
    }

    /// Checks the options: at least one iteration, one τ or one per iteration, every τ finite
    /// and positive (so each anchor matches at least itself), at least 2 anchors per side.
    pub fn validate(&self) -> Result<(), Error> {
        if self.iterations == 0 {
            return Err(Error::Options("iterations must be at least 1".into()));
        }
        if self.tau.len() != 1 && self.tau.len() != self.iterations {
            return Err(Error::Options(format!(
                "{} KL thresholds for {} iterations: give one, or one per iteration",
                self.tau.len(),
                self.iterations
            )));
        }
        if let Some(tau) = self
            .tau
            .iter()
            .find(|tau| !(tau.is_finite() && **tau > 0.0))
        {
            return Err(Error::Options(format!(
                "KL threshold {tau} must be finite and positive"
            )));
        }
        if self.anchors < 2 {
            return Err(Error::Options(format!(
                "{} anchors per side: at least 2 are needed",
                self.anchors
            )));
        }
        Ok(())
    }
}

/// Segment proposals: `maps [K, H*W]`, one probability map per proposal, and for each the
/// rows of the previous stage it averages (aggregate cells after iteration 0 and after
/// refinement, previous proposals after a merge iteration).
#[derive(Debug, Clone)]
pub struct Proposals<B: Backend> {
    /// One map per proposal.
    pub maps: Tensor<B, 2>,
    /// Grid rows `H`.
    pub height: usize,
    /// Grid columns `W`.
    pub width: usize,
    /// For each proposal, the previous stage's rows it is the mean of (ascending).
    pub members: Vec<Vec<usize>>,
}

impl<B: Backend> Proposals<B> {
    /// Number of proposals.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no proposals.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// The anchor grid (docs/method.md §5): per axis of a grid with `side` cells, `seg = (side-1) //
/// (M-1)`, `start = (side-1 - seg*(M-1)) // 2`, coordinates `start, start+seg, ...`; for 64
/// and M = 16: 1, 5, ..., 61. Returns `(row, column)` pairs, row-major (x-major in the
/// reference's words).
pub fn anchor_grid(
    height: usize,
    width: usize,
    anchors: usize,
) -> Result<Vec<(usize, usize)>, Error> {
    let axis = |side: usize| -> Result<Vec<usize>, Error> {
        if anchors < 2 || side < anchors {
            return Err(Error::Options(format!(
                "{anchors} anchors per side do not fit a grid side of {side} cells"
            )));
        }
        let segment = (side - 1) / (anchors - 1);
        let start = (side - 1 - segment * (anchors - 1)) / 2;
        Ok((0..anchors).map(|k| start + k * segment).collect())
    };
    let (rows, columns) = (axis(height)?, axis(width)?);
    Ok(rows
        .iter()
        .flat_map(|&row| columns.iter().map(move |&column| (row, column)))
        .collect())
}

/// Symmetric KL divergence between every row of `a [m, n]` and every row of `b [p, n]`:
/// `KL(x, y) = ½ (Σ x log x + Σ y log y − x·log y − y·log x)`, as two matrix products (never an
/// `[m, p, n]` tensor). Logs are of values clamped to [`LOG_FLOOR`]. Returns `[m, p]`.
///
/// On the CPU backend in f32 this is diffseg-cpu's one-pass kernel (same values, bit for bit;
/// iteration 0 reads the 64 MiB aggregate once instead of five times); elsewhere Burn's ops.
pub fn kl_matrix<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    match diffseg_cpu::try_symmetric_kl(a, b, LOG_FLOOR) {
        Ok(kl) => kl,
        Err((a, b)) => kl_matrix_composed(a, b),
    }
}

/// [`kl_matrix`] composed from Burn's ops, for every backend.
pub fn kl_matrix_composed<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    let [m, _] = a.dims();
    let [p, _] = b.dims();
    let log_a = a.clone().clamp_min(LOG_FLOOR).log();
    let log_b = b.clone().clamp_min(LOG_FLOOR).log();
    let self_a = (a.clone() * log_a.clone()).sum_dim(1).expand([m, p]);
    let self_b = (b.clone() * log_b.clone())
        .sum_dim(1)
        .transpose()
        .expand([m, p]);
    // Built as [p, m] so that only the small operand is transposed.
    let cross = (matmul(b, log_a.transpose()) + matmul(log_b, a.transpose())).transpose();
    (self_a + self_b - cross).mul_scalar(0.5)
}

/// Row-wise means: `matches [k, rows]` holds 1 where a proposal takes a row and 0 elsewhere;
/// returns `matches · maps / (row count of matches)`, `[k, n]`.
pub fn proposals_from_matches<B: Backend>(
    matches: Tensor<B, 2>,
    maps: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let counts = matches.clone().sum_dim(1);
    matmul(matches, maps) / counts
}

/// Iteration 0 (docs/method.md §5): for each anchor, the mean of all aggregate maps whose KL to the
/// anchor's map is below `tau`. The anchor matches itself, so no proposal is empty.
pub fn initial_proposals<B: Backend>(
    aggregate: &Aggregate<B>,
    anchors: &[(usize, usize)],
    tau: f32,
) -> Proposals<B> {
    let device = aggregate.maps.device();
    let rows: Vec<usize> = anchors
        .iter()
        .map(|&(row, column)| row * aggregate.width + column)
        .collect();
    let anchor_maps = aggregate
        .maps
        .clone()
        .select(0, index_tensor::<B>(&rows, &device));
    let matches = kl_matrix(anchor_maps, aggregate.maps.clone())
        .lower_elem(tau)
        .float()
        .cast(aggregate.maps.dtype());
    let cells = aggregate.height * aggregate.width;
    let flags: Vec<f32> = matches.clone().into_data().iter::<f32>().collect();
    let members = flags
        .chunks(cells)
        .map(|row| (0..cells).filter(|&cell| row[cell] > 0.5).collect())
        .collect();
    Proposals {
        maps: proposals_from_matches(matches, aggregate.maps.clone()),
        height: aggregate.height,
        width: aggregate.width,
        members,
    }
}

/// One greedy merge iteration (iterations 1..N−1 of docs/method.md §5), in the reference's order:
/// walk the proposals; skip one already matched; otherwise mark it, take every proposal
/// (matched or not, itself included) with `KL < tau` to it, mark them all and emit their mean.
pub fn merge_proposals<B: Backend>(proposals: &Proposals<B>, tau: f32) -> Proposals<B> {
    let count = proposals.len();
    let below: Vec<bool> = kl_matrix(proposals.maps.clone(), proposals.maps.clone())
        .lower_elem(tau)
        .float()
        .into_data()
        .iter::<f32>()
        .map(|flag| flag > 0.5)
        .collect();
    let mut matched = vec![false; count];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for first in 0..count {
        if matched[first] {
            continue;
        }
        matched[first] = true;
        let group: Vec<usize> = (0..count)
            .filter(|&other| below[first * count + other])
            .collect();
        if group.is_empty() {
            continue;
        }
        for &member in &group {
            matched[member] = true;
        }
        groups.push(group);
    }
    let (device, dtype) = (proposals.maps.device(), proposals.maps.dtype());
    Proposals {
        maps: proposals_from_matches(
            membership_matrix::<B>(&groups, count, &device, dtype),
            proposals.maps.clone(),
        ),
        height: proposals.height,
        width: proposals.width,
        members: groups,
    }
}

/// The most k-means iterations [`refine`] runs (scikit-learn's default `max_iter`).
pub const REFINE_MAX_ITERATIONS: usize = 300;

/// Optional refinement (docs/method.md §5): k-means (Lloyd) over all aggregate maps with k = number
/// of proposals, initialised with the proposals, run on the device until the assignment
/// stops changing (or [`REFINE_MAX_ITERATIONS`]). Returns the non-empty clusters' means.
pub fn refine<B: Backend>(aggregate: &Aggregate<B>, proposals: &Proposals<B>) -> Proposals<B> {
    let (device, dtype) = (aggregate.maps.device(), aggregate.maps.dtype());
    let clusters = proposals.len();
    let points = aggregate.height * aggregate.width;
    let mut centres = proposals.maps.clone();
    let mut assignment: Vec<usize> = Vec::new();
    for _ in 0..REFINE_MAX_ITERATIONS {
        // argmin_c |x - c|² = argmin_c (|c|² - 2 x·c): |x|² is the same for every centre.
        let centre_norms = (centres.clone() * centres.clone())
            .sum_dim(1)
            .transpose()
            .expand([points, clusters]);
        let distances = centre_norms
            - matmul(aggregate.maps.clone(), centres.clone().transpose()).mul_scalar(2.0);
        let next: Vec<usize> = distances
            .argmin(1)
            .into_data()
            .iter::<i64>()
            .map(|cluster| cluster as usize)
            .collect();
        if next == assignment {
            break;
        }
        assignment = next;
        let groups = clusters_members(&assignment, clusters);
        // An emptied cluster keeps its previous centre.
        let means = proposals_from_matches(
            membership_matrix::<B>(&groups, points, &device, dtype),
            aggregate.maps.clone(),
        );
        let emptied: Vec<bool> = groups.iter().map(Vec::is_empty).collect();
        let keep = Tensor::<B, 1, Bool>::from_data(TensorData::new(emptied, [clusters]), &device)
            .reshape([clusters, 1])
            .expand([clusters, points]);
        centres = means.mask_where(keep, centres);
    }
    let groups: Vec<Vec<usize>> = clusters_members(&assignment, clusters)
        .into_iter()
        .filter(|group| !group.is_empty())
        .collect();
    Proposals {
        maps: proposals_from_matches(
            membership_matrix::<B>(&groups, points, &device, dtype),
            aggregate.maps.clone(),
        ),
        height: aggregate.height,
        width: aggregate.width,
        members: groups,
    }
}

/// The points of each cluster, given each point's cluster.
fn clusters_members(assignment: &[usize], clusters: usize) -> Vec<Vec<usize>> {
    let mut groups = vec![Vec::new(); clusters];
    for (point, &cluster) in assignment.iter().enumerate() {
        groups[cluster].push(point);
    }
    groups
}

/// `[groups, columns]` 0/1 matrix with a 1 at each group's member columns.
fn membership_matrix<B: Backend>(
    groups: &[Vec<usize>],
    columns: usize,
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, 2> {
    let mut flags = vec![0f32; groups.len() * columns];
    for (row, group) in groups.iter().enumerate() {
        for &column in group {
            flags[row * columns + column] = 1.0;
        }
    }
    Tensor::from_data_dtype(
        TensorData::new(flags, [groups.len(), columns]),
        device,
        dtype,
    )
}

/// Row indices as a 1-D Int tensor.
pub(crate) fn index_tensor<B: Backend>(rows: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let index: Vec<i64> = rows.iter().map(|&row| row as i64).collect();
    Tensor::from_data(
        TensorData::new(index, [rows.len()]).convert::<B::IntElem>(),
        device,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constructor checks what it builds, and builds `Default` from the defaults.
    #[test]
    fn new_checks_and_defaults_agree() {
        let paper = MergeOptions::new(
            vec![DEFAULT_TAU],
            DEFAULT_ANCHORS,
            DEFAULT_ITERATIONS,
            false,
        );
        assert_eq!(paper.unwrap(), MergeOptions::default());
        let two_taus = MergeOptions::new(vec![1.0, 1.0], DEFAULT_ANCHORS, 3, false);
        assert!(
            matches!(two_taus, Err(Error::Options(message)) if message.contains("2 KL thresholds"))
        );
        assert!(MergeOptions::new(vec![1.1], 1, 3, false).is_err());
    }

    /// The CPU kernel and Burn's composition give the same KL, so merges do not depend on
    /// the path. Run alone they agree bit for bit; one full-suite run under heavy load saw a
    /// difference (the GEMM's summation order under a busy thread pool is the suspect), so
    /// the check is 1e-5 relative (1e-3 floor), far below what moves a τ decision in tests.
    /// Sizes are odd so that the kernel's 64-row blocks and the GEMM's micro-tiles end in
    /// partial ones; exact zeros exercise the log floor.
    #[test]
    fn kl_kernel_equals_the_composition() {
        type Cpu = burn::backend::NdArray<f32>;
        let device = Default::default();
        let maps = |rows: usize, columns: usize, seed: u32| {
            let values: Vec<f32> = (0..rows * columns)
                .map(|i| {
                    let hash = (i as u32).wrapping_mul(2654435761) ^ seed;
                    if hash % 97 == 0 {
                        0.0
                    } else {
                        (hash % 10_000) as f32 / 10_000.0 / columns as f32
                    }
                })
                .collect();
            Tensor::<Cpu, 2>::from_data(TensorData::new(values, [rows, columns]), &device)
        };
        for (m, p, n) in [(37, 301, 1100), (256, 130, 4096), (5, 5, 3)] {
            let (a, b) = (maps(m, n, 7), maps(p, n, 11));
            let fused = kl_matrix(a.clone(), b.clone())
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let composed = kl_matrix_composed(a, b)
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let worst = fused
                .iter()
                .zip(&composed)
                .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-5, "{m}×{n} against {p}×{n}: {worst:e}");
        }
    }

    /// `tau` is a public field: an iteration without its threshold is an
    /// error, not an index out of bounds.
    #[test]
    fn tau_at_refuses_an_iteration_without_a_threshold() {
        let none = MergeOptions::default().with_taus(Vec::new());
        assert!(matches!(none.tau_at(0), Err(Error::Options(_))));
        let two = MergeOptions::default().with_taus(vec![1.0, 1.2]);
        assert_eq!(two.tau_at(1).unwrap(), 1.2);
        assert!(
            matches!(two.tau_at(2), Err(Error::Options(message)) if message.contains("iteration 2"))
        );
        let one = MergeOptions::default().with_tau(0.9);
        assert_eq!(one.tau_at(usize::MAX).unwrap(), 0.9);
    }
}
