//! DiffCut (Couairon et al., NeurIPS 2024) after the UNet: one self-attention layer's output
//! features in, segmentation out, as published in PaulCouairon/DiffCut at commit
//! aa16df45619515abe1d7a728ce7927ad1019f950 (`diffcut/recursive_normalized_cut.py`,
//! `tools/utils.py`, `tools/pamr.py`, `eval_diffcut.py`).
//!
//! Steps (docs/method.md, "DiffCut"), each a documented function:
//! [`FeatureMap`] → [`normalize_features`] → [`affinity_matrix`] →
//! [`recursive_normalized_cut`] (each cut: [`second_smallest_eigenvector`],
//! [`deterministic_sign_flip`], [`best_bipartition`]) → [`assemble_clusters`] →
//! [`mask_pooling`] → [`assign_labels`] → optional [`pamr`] and [`median_filter_3x3`].
//! [`cut_features`] runs them all.
//!
//! Plain Rust on `f32`/`f64` slices: the work is small dense linear algebra on one
//! `pixels x pixels` matrix, done on the CPU with faer whatever backend produced the features.

use faer::{
    linalg::matmul::{
        matmul,
        triangular::{self, BlockStructure},
    },
    Accum, Mat, MatMut, MatRef, Side,
};

use crate::{Error, Segmentation};

/// The published default stopping threshold τ on the normalized cut value.
pub const DEFAULT_CUT_TAU: f32 = 0.5;
/// The published default affinity exponent α.
pub const DEFAULT_CUT_ALPHA: f32 = 10.0;
/// The published label map side: labels are assigned on a `128 x 128` grid.
pub const DEFAULT_MASK_SIZE: usize = 128;
/// Largest accepted label map side (labels and upsampled scores are `side²` values each).
pub const MAX_MASK_SIZE: usize = 4096;
/// Largest accepted feature map, in pixels: the affinity matrix holds `pixels²` values
/// (64 MiB at this size, a 64 x 64 map: DiffCut's layer at a 2048 input).
pub const MAX_CUT_PIXELS: usize = 4096;
/// Candidate thresholds on the eigenvector per two-way cut (`get_bipartition`'s `k`).
pub const BIPARTITION_THRESHOLDS: usize = 100;
/// PAMR iterations used by `eval_diffcut.py`.
pub const PAMR_ITERATIONS: usize = 10;
/// PAMR neighbourhood dilations used by `eval_diffcut.py`.
pub const PAMR_DILATIONS: [usize; 4] = [1, 2, 4, 8];

/// `F.normalize`'s floor on the norm: zero vectors stay zero.
const NORMALIZE_EPS: f32 = 1e-12;
/// `MaskPooling`'s floor on a mask's pixel count.
const MASK_POOLING_EPS: f32 = 1e-8;
/// Lanczos stops when the Ritz pair's residual `‖N x − θ x‖` is below this.
const LANCZOS_TOLERANCE: f64 = 1e-10;
/// Most Lanczos steps before the dense eigensolver takes over.
const LANCZOS_MAX_STEPS: usize = 300;
/// Smallest matrix whose Lanczos products are spread over threads.
const PARALLEL_MATVEC_SIZE: usize = 512;
/// Lanczos checks convergence every this many steps (each check is a small eigenproblem).
const LANCZOS_CHECK_EVERY: usize = 5;

/// Validated options of the DiffCut method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CutOptions {
    tau: f32,
    alpha: f32,
    mask_size: usize,
    pamr: bool,
    median: bool,
    auto_tau: bool,
}

impl Default for CutOptions {
    /// τ 0.5, α 10, 128² labels, no refinement: `generate_masks`'s defaults.
    fn default() -> Self {
        Self {
            tau: DEFAULT_CUT_TAU,
            alpha: DEFAULT_CUT_ALPHA,
            mask_size: DEFAULT_MASK_SIZE,
            pamr: false,
            median: false,
            auto_tau: false,
        }
    }
}

impl CutOptions {
    /// Checks and builds the options.
    ///
    /// - `tau`: a region is split while its best normalized cut is below it; finite, in
    ///   (0, 1]. A two-way normalized cut lies in [0, 2] and about 1 means no structure,
    ///   so larger values would split regions down to single pixels.
    /// - `alpha`: the exponent sharpening the affinities; finite and positive.
    /// - `mask_size`: side of the square label map, 1 to [`MAX_MASK_SIZE`].
    /// - `pamr`: refine the labels with PAMR on the image (as `eval_diffcut.py --refinement`).
    /// - `median`: then a 3×3 median filter (`eval_diffcut.py` applies it after PAMR).
    pub fn new(
        tau: f32,
        alpha: f32,
        mask_size: usize,
        pamr: bool,
        median: bool,
    ) -> Result<Self, Error> {
        if !(tau.is_finite() && tau > 0.0 && tau <= 1.0) {
            return Err(Error::CutOptions(format!(
                "threshold tau {tau} must be finite, above 0 and at most 1"
            )));
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(Error::CutOptions(format!(
                "affinity exponent alpha {alpha} must be finite and positive"
            )));
        }
        if mask_size == 0 || mask_size > MAX_MASK_SIZE {
            return Err(Error::CutOptions(format!(
                "mask size {mask_size} must be between 1 and {MAX_MASK_SIZE}"
            )));
        }
        Ok(Self {
            tau,
            alpha,
            mask_size,
            pamr,
            median,
            auto_tau: false,
        })
    }

    /// Chooses the segments by the eigengap instead of thresholds: with `auto`, τ and α are
    /// not used and [`auto_spectral_clusters`] replaces [`recursive_normalized_cut`]
    /// (`diffcut/autosc.py`, the variant that needs no per-dataset τ).
    pub fn with_auto_tau(mut self, auto: bool) -> Self {
        self.auto_tau = auto;
        self
    }

    /// Whether the eigengap chooses the segments ([`CutOptions::with_auto_tau`]).
    pub fn auto_tau(&self) -> bool {
        self.auto_tau
    }

    /// The stopping threshold τ.
    pub fn tau(&self) -> f32 {
        self.tau
    }

    /// The affinity exponent α.
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// Side of the square label map.
    pub fn mask_size(&self) -> usize {
        self.mask_size
    }

    /// Whether PAMR refines the labels.
    pub fn pamr(&self) -> bool {
        self.pamr
    }

    /// Whether a 3×3 median filter smooths the labels last.
    pub fn median(&self) -> bool {
        self.median
    }
}

/// A feature map `[height, width, channels]`, row-major, every value finite.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMap {
    values: Vec<f32>,
    height: usize,
    width: usize,
    channels: usize,
}

impl FeatureMap {
    /// Checks the shape (no empty axis, at most [`MAX_CUT_PIXELS`] pixels) and that every
    /// value is finite.
    pub fn new(
        values: Vec<f32>,
        height: usize,
        width: usize,
        channels: usize,
    ) -> Result<Self, Error> {
        let pixels = height.checked_mul(width);
        let expected = pixels.and_then(|pixels| pixels.checked_mul(channels));
        if height == 0 || width == 0 || channels == 0 || expected != Some(values.len()) {
            return Err(Error::Shape {
                tensor: "features".into(),
                expected: format!(
                    "[{height}, {width}, {channels}] (no empty axis) = that many values"
                ),
                actual: vec![values.len()],
            });
        }
        if height * width > MAX_CUT_PIXELS {
            return Err(Error::Shape {
                tensor: "features".into(),
                expected: format!("at most {MAX_CUT_PIXELS} pixels"),
                actual: vec![height, width, channels],
            });
        }
        if let Some(index) = values.iter().position(|value| !value.is_finite()) {
            let pixel = index / channels;
            return Err(Error::Features(format!(
                "value {} at row {}, column {}, channel {} is not finite",
                values[index],
                pixel / width,
                pixel % width,
                index % channels
            )));
        }
        Ok(Self {
            values,
            height,
            width,
            channels,
        })
    }

    /// Row-major `[height, width, channels]` values.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Channels per pixel.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// `height * width`.
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }
}

/// An image `[channels, height, width]` (planar, as PyTorch holds it), every value finite.
/// PAMR compares pixel colours: DiffCut passes RGB in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanarImage<'a> {
    values: &'a [f32],
    channels: usize,
    height: usize,
    width: usize,
}

impl<'a> PlanarImage<'a> {
    /// Checks the shape (no empty axis) and that every value is finite.
    pub fn new(
        values: &'a [f32],
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<Self, Error> {
        let expected = channels
            .checked_mul(height)
            .and_then(|plane| plane.checked_mul(width));
        if channels == 0 || height == 0 || width == 0 || expected != Some(values.len()) {
            return Err(Error::Shape {
                tensor: "image".into(),
                expected: format!("[{channels}, {height}, {width}] (no empty axis)"),
                actual: vec![values.len()],
            });
        }
        if let Some(value) = values.iter().find(|value| !value.is_finite()) {
            return Err(Error::Size(format!("image value {value} is not finite")));
        }
        Ok(Self {
            values,
            channels,
            height,
            width,
        })
    }
}

/// The cosine affinities of all pixel pairs, min-max normalised and raised to α:
/// row-major `pixels x pixels`.
#[derive(Debug, Clone, PartialEq)]
pub struct Affinity {
    values: Vec<f32>,
    pixels: usize,
}

impl Affinity {
    /// Row-major `pixels x pixels` values in [0, 1].
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Pixels of the feature map (the matrix side).
    pub fn pixels(&self) -> usize {
        self.pixels
    }
}

/// Divides each pixel's feature vector by its L2 norm (floored at 1e-12, so zero vectors
/// stay zero), as `F.normalize(feats, dim=channels)`.
pub fn normalize_features(features: &FeatureMap) -> FeatureMap {
    let mut values = features.values.clone();
    for pixel in values.chunks_exact_mut(features.channels) {
        // Eight running sums, so the sum of squares vectorises.
        let mut sums = [0f32; 8];
        let chunks = pixel.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        for chunk in chunks {
            for lane in 0..8 {
                sums[lane] += chunk[lane] * chunk[lane];
            }
        }
        let norm = (sums.iter().sum::<f32>() + tail).sqrt();
        let divisor = norm.max(NORMALIZE_EPS);
        pixel.iter_mut().for_each(|v| *v /= divisor);
    }
    FeatureMap {
        values,
        ..*features
    }
}

/// The affinity matrix of normalised features: cosine similarities `F Fᵀ`, min-max
/// normalised to [0, 1] over the whole matrix, then raised to `alpha` (all in f32, as
/// published: the exact zeros this leaves matter to [`recursive_normalized_cut`]).
///
/// `None` when every pair has the same similarity (one pixel, or identical features):
/// the normalisation is undefined there (the published code divides by zero) and there is
/// nothing to cut.
pub fn affinity_matrix(normalized: &FeatureMap, alpha: f32) -> Option<Affinity> {
    let pixels = normalized.pixels();
    let features = MatRef::from_row_major_slice(&normalized.values, pixels, normalized.channels);
    // Only the lower triangle is computed (half the work), then mirrored: the matrix is
    // exactly symmetric, as the cut's bookkeeping and Lanczos assume.
    let mut values = vec![0f32; pixels * pixels];
    triangular::matmul(
        MatMut::from_column_major_slice_mut(&mut values, pixels, pixels),
        BlockStructure::TriangularLower,
        Accum::Replace,
        features,
        BlockStructure::Rectangular,
        features.transpose(),
        BlockStructure::Rectangular,
        1.0,
        faer::get_global_parallelism(),
    );
    // Column `c` holds its lower part (rows c..) contiguously.
    let lower = |column: usize| column * pixels + column..(column + 1) * pixels;
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    for column in 0..pixels {
        for &v in &values[lower(column)] {
            min = min.min(v);
            max = max.max(v);
        }
    }
    // Not `max > min`: a NaN cannot occur (finite, normalised inputs), but be explicit.
    if !(max - min > 0.0) {
        return None;
    }
    let range = max - min;
    for column in 0..pixels {
        let part = &mut values[lower(column)];
        part.iter_mut().for_each(|v| *v = (*v - min) / range);
        power_in_place(part, alpha);
    }
    // Mirror the lower triangle into the upper one, in tiles that stay in cache.
    const TILE: usize = 64;
    for column_start in (0..pixels).step_by(TILE) {
        for row_start in (0..=column_start).step_by(TILE) {
            for column in column_start..(column_start + TILE).min(pixels) {
                for row in row_start..(row_start + TILE).min(column) {
                    values[row + column * pixels] = values[column + row * pixels];
                }
            }
        }
    }
    Some(Affinity { values, pixels })
}

/// Raises every value to `alpha`. A whole exponent (the published α is an int) goes by
/// repeated squaring, as `powi` does, but a block of values at a time so that it
/// vectorises: within an ulp of `powf`, and much faster.
fn power_in_place(values: &mut [f32], alpha: f32) {
    if !(alpha.fract() == 0.0 && alpha <= u32::MAX as f32) {
        values.iter_mut().for_each(|v| *v = v.powf(alpha));
        return;
    }
    const BLOCK: usize = 256;
    for block in values.chunks_mut(BLOCK) {
        let mut base = [0f32; BLOCK];
        let base = &mut base[..block.len()];
        base.copy_from_slice(block);
        block.fill(1.0);
        let mut exponent = alpha as u32;
        while exponent > 0 {
            if exponent & 1 == 1 {
                block.iter_mut().zip(base.iter()).for_each(|(r, b)| *r *= b);
            }
            base.iter_mut().for_each(|b| *b *= *b);
            exponent >>= 1;
        }
    }
}

/// The second-smallest eigenvector of the normalised Laplacian `D^-½ (D − A) D^-½` of a
/// dense symmetric affinity `a` (row-major, `degrees.len()` square, every degree positive),
/// as a unit vector (sign arbitrary).
///
/// Tries [`second_smallest_eigenvector_lanczos`] and falls back to
/// [`second_smallest_eigenvector_dense`] when it does not converge.
pub fn second_smallest_eigenvector(a: &[f64], degrees: &[f64]) -> Result<Vec<f64>, Error> {
    match second_smallest_eigenvector_lanczos(a, degrees) {
        Some(vector) => Ok(vector),
        None => second_smallest_eigenvector_dense(a, degrees),
    }
}

/// [`second_smallest_eigenvector`] by a full dense self-adjoint eigendecomposition
/// (faer), as the published `torch.linalg.eigh`.
pub fn second_smallest_eigenvector_dense(a: &[f64], degrees: &[f64]) -> Result<Vec<f64>, Error> {
    let n = degrees.len();
    if n < 2 {
        return Err(Error::Features(format!(
            "a cut needs at least 2 pixels, got {n}"
        )));
    }
    let inv_sqrt: Vec<f64> = degrees.iter().map(|d| 1.0 / d.sqrt()).collect();
    let laplacian = Mat::<f64>::from_fn(n, n, |i, j| {
        let degree = if i == j { degrees[i] } else { 0.0 };
        inv_sqrt[i] * (degree - a[i * n + j]) * inv_sqrt[j]
    });
    let eigen = laplacian
        .self_adjoint_eigen(Side::Lower)
        .map_err(|error| Error::Features(format!("eigendecomposition failed: {error:?}")))?;
    Ok(eigen.U().col(1).iter().copied().collect())
}

/// [`second_smallest_eigenvector`] by Lanczos iteration, for that one vector only.
///
/// The smallest eigenpair of `D^-½ (D − A) D^-½` is known (`D^½ 1`, eigenvalue 0), so the
/// wanted vector is the top eigenvector of `N = D^-½ A D^-½` orthogonal to `D^½ 1`. Lanczos
/// with full reorthogonalisation against that vector and its own basis finds it from a
/// fixed start (deterministic results). `None` when it has not converged to a residual of
/// 1e-10 within 300 steps (or the matrix is too small to bother).
pub fn second_smallest_eigenvector_lanczos(a: &[f64], degrees: &[f64]) -> Option<Vec<f64>> {
    let n = degrees.len();
    if n < 3 {
        return None;
    }
    let inv_sqrt: Vec<f64> = degrees.iter().map(|d| 1.0 / d.sqrt()).collect();
    let mut trivial: Vec<f64> = degrees.iter().map(|d| d.sqrt()).collect();
    normalize(&mut trivial);
    // `a` is symmetric, so reading it column-major is the same matrix.
    let matrix = MatRef::from_column_major_slice(a, n, n);
    // Threads only for large matrices: a small product is over before they synchronise.
    let parallelism = if n >= PARALLEL_MATVEC_SIZE {
        faer::get_global_parallelism()
    } else {
        faer::Par::Seq
    };
    let apply = |x: &[f64], out: &mut [f64]| {
        let scaled: Vec<f64> = x.iter().zip(&inv_sqrt).map(|(x, s)| x * s).collect();
        matmul(
            MatMut::from_column_major_slice_mut(out, n, 1),
            Accum::Replace,
            matrix,
            MatRef::from_column_major_slice(&scaled, n, 1),
            1.0,
            parallelism,
        );
        out.iter_mut().zip(&inv_sqrt).for_each(|(out, s)| *out *= s);
    };
    let max_steps = (n - 1).min(LANCZOS_MAX_STEPS);
    // A fixed, structureless start: golden-ratio sequence, centred.
    let mut q: Vec<f64> = (0..n)
        .map(|i| ((i as f64 + 1.0) * 0.618_033_988_749_894_9).fract() - 0.5)
        .collect();
    remove_component(&mut q, &trivial);
    normalize(&mut q);
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(max_steps);
    let (mut diagonal, mut off_diagonal) = (Vec::new(), Vec::new());
    let mut w = vec![0.0; n];
    for step in 0..max_steps {
        apply(&q, &mut w);
        diagonal.push(dot(&q, &w));
        basis.push(q);
        // Twice, as one classical Gram-Schmidt pass leaves rounding-level overlaps.
        for _ in 0..2 {
            remove_component(&mut w, &trivial);
            for vector in &basis {
                remove_component(&mut w, vector);
            }
        }
        let beta = dot(&w, &w).sqrt();
        let exhausted = beta <= 1e-12;
        if exhausted || (step + 1) % LANCZOS_CHECK_EVERY == 0 || step + 1 == max_steps {
            let ritz = top_ritz_vector(&diagonal, &off_diagonal)?;
            let residual = beta * ritz[ritz.len() - 1].abs();
            if exhausted || residual <= LANCZOS_TOLERANCE {
                let mut vector = vec![0.0; n];
                for (coefficient, basis_vector) in ritz.iter().zip(&basis) {
                    vector
                        .iter_mut()
                        .zip(basis_vector)
                        .for_each(|(v, b)| *v += coefficient * b);
                }
                normalize(&mut vector);
                return Some(vector);
            }
        }
        off_diagonal.push(beta);
        q = w.iter().map(|v| v / beta).collect();
    }
    None
}

/// The eigenvector of the largest eigenvalue of the symmetric tridiagonal matrix with this
/// diagonal and off-diagonal, in the Lanczos basis.
fn top_ritz_vector(diagonal: &[f64], off_diagonal: &[f64]) -> Option<Vec<f64>> {
    let m = diagonal.len();
    let tridiagonal = Mat::<f64>::from_fn(m, m, |i, j| {
        if i == j {
            diagonal[i]
        } else if i == j + 1 {
            off_diagonal[j]
        } else if j == i + 1 {
            off_diagonal[i]
        } else {
            0.0
        }
    });
    let eigen = tridiagonal.self_adjoint_eigen(Side::Lower).ok()?;
    Some(eigen.U().col(m - 1).iter().copied().collect())
}

/// Dot product with eight running sums, so the compiler can vectorise it (one running
/// sum is a chain of dependent additions).
fn dot(x: &[f64], y: &[f64]) -> f64 {
    let mut sums = [0f64; 8];
    let (x_chunks, y_chunks) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f64 = x_chunks
        .remainder()
        .iter()
        .zip(y_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in x_chunks.zip(y_chunks) {
        for lane in 0..8 {
            sums[lane] += x[lane] * y[lane];
        }
    }
    sums.iter().sum::<f64>() + tail
}

fn normalize(x: &mut [f64]) {
    let norm = dot(x, x).sqrt();
    x.iter_mut().for_each(|v| *v /= norm);
}

/// Removes from `x` its component along the unit vector `unit`.
fn remove_component(x: &mut [f64], unit: &[f64]) {
    let overlap = dot(x, unit);
    x.iter_mut().zip(unit).for_each(|(x, u)| *x -= overlap * u);
}

/// Multiplies `u` by the sign of its largest-magnitude entry (the first one on ties), so
/// that entry is positive: an eigenvector's arbitrary sign made deterministic, as the
/// published `deterministic_vector_sign_flip`.
pub fn deterministic_sign_flip(u: &mut [f64]) {
    let mut largest = 0;
    for (index, value) in u.iter().enumerate() {
        if value.abs() > u[largest].abs() {
            largest = index;
        }
    }
    let sign = match u.get(largest) {
        Some(value) if *value > 0.0 => 1.0,
        Some(value) if *value < 0.0 => -1.0,
        _ => 0.0, // torch.sign(0) is 0
    };
    u.iter_mut().for_each(|v| *v *= sign);
}

/// The best of [`BIPARTITION_THRESHOLDS`] two-way cuts `{y > t}` of the graph `a`, as the
/// published `get_bipartition`: thresholds evenly spaced from `0.99 min y` to `0.99 max y`
/// (`torch.linspace`'s formula), each cut's normalized cut value
/// `cut/vol(S) + cut/vol(S̄)` (= `yᵀ(D−A)y / yᵀDy` for the published two-valued `y`), and
/// the first threshold with the smallest value.
///
/// Returns the membership of each row in `S` and the cut value. Degenerate cuts (one side
/// empty) have the published value NaN and are chosen as the published code chooses them
/// (`np.argmin` picks the first NaN, Python's `min` skips NaNs after the first value).
pub fn best_bipartition(y: &[f64], a: &[f64], degrees: &[f64]) -> (Vec<bool>, f64) {
    let n = y.len();
    let (y_min, y_max) = y
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let (start, end) = (y_min * 0.99, y_max * 0.99);
    let steps = BIPARTITION_THRESHOLDS;
    let step = (end - start) / (steps - 1) as f64;
    let thresholds: Vec<f64> = (0..steps)
        .map(|index| {
            if index < steps / 2 {
                start + step * index as f64
            } else {
                end - step * (steps - index - 1) as f64
            }
        })
        .collect();

    // Rows by decreasing y: each cut {y > t} is a prefix, growing as t decreases.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| y[j].total_cmp(&y[i]));
    let total_volume: f64 = degrees.iter().sum();
    // Each row's total affinity to the rows in the set so far.
    let mut to_set = vec![0.0f64; n];
    let mut members = 0;
    let (mut volume, mut association) = (0.0f64, 0.0f64);
    let mut values = vec![0.0f64; steps];
    for index in (0..steps).rev() {
        while members < n && y[order[members]] > thresholds[index] {
            let row = order[members];
            let row_values = &a[row * n..(row + 1) * n];
            association += 2.0 * to_set[row] + row_values[row];
            volume += degrees[row];
            // `a` is symmetric: the row is also the column.
            to_set
                .iter_mut()
                .zip(row_values)
                .for_each(|(sum, value)| *sum += value);
            members += 1;
        }
        let cut = volume - association;
        values[index] = cut / volume + cut / (total_volume - volume);
        if members == 0 || members == n {
            values[index] = f64::NAN;
        }
    }
    let chosen = values.iter().position(|v| v.is_nan()).unwrap_or_else(|| {
        let mut best = 0;
        for (index, value) in values.iter().enumerate() {
            if *value < values[best] {
                best = index;
            }
        }
        best
    });
    // Python's `min(values)`: the first value, replaced by each later one below it.
    let mut smallest = values[0];
    for value in &values[1..] {
        if *value < smallest {
            smallest = *value;
        }
    }
    let membership = (0..n).map(|row| y[row] > thresholds[chosen]).collect();
    (membership, smallest)
}

/// One pending call of the published `recursive_ncut`.
struct CutCall {
    /// Pixels explored by the caller (`painting`).
    painting: Vec<bool>,
    /// The caller's area to exclude now (`mask`).
    mask: Vec<bool>,
    /// The first call: all pixels take part and nothing is masked.
    top: bool,
}

/// The recursive two-way normalized cut, as the published `recursive_ncut`: returns the
/// accepted bipartitions (masks over all pixels) in the published order.
///
/// Each call marks its `mask` as explored (`painting |= mask`) and cuts the remaining
/// pixels: the top call takes all pixels; deeper calls take the unexplored pixels whose row
/// of the affinity has no exact zero (the published code drops every row with a zero after
/// masking, which also drops the least similar pair and pairs whose `x^α` underflowed).
/// It finds the second-smallest eigenvector of their normalised Laplacian, flips its sign
/// deterministically, scales it by `D^-½` and takes the best of 100 thresholds. If that cut's
/// value is below `tau`, the cut is kept and both sides are cut in turn, depth first: first
/// the call masking the complement (which cuts the cut's `S`), then the one masking `S`.
pub fn recursive_normalized_cut(affinity: &Affinity, tau: f32) -> Result<Vec<Vec<bool>>, Error> {
    let pixels = affinity.pixels;
    let values = &affinity.values;
    let row_has_zero: Vec<bool> = values
        .chunks_exact(pixels)
        .map(|row| row.contains(&0.0))
        .collect();
    let mut accepted = Vec::new();
    // Each cut's affinity, in one buffer for all of them (its pages are touched once).
    let mut a: Vec<f64> = Vec::with_capacity(pixels * pixels);
    let mut pending = vec![CutCall {
        painting: vec![false; pixels],
        mask: vec![false; pixels],
        top: true,
    }];
    while let Some(call) = pending.pop() {
        let painting: Vec<bool> = call
            .painting
            .iter()
            .zip(&call.mask)
            .map(|(painted, masked)| *painted || *masked)
            .collect();
        let kept: Vec<usize> = (0..pixels)
            .filter(|&p| call.top || !(painting[p] || row_has_zero[p]))
            .collect();
        let n = kept.len();
        if n <= 1 {
            continue;
        }
        a.clear();
        if n == pixels {
            a.extend(values.iter().map(|&v| v as f64));
        } else {
            for &row in &kept {
                let row_values = &values[row * pixels..(row + 1) * pixels];
                a.extend(kept.iter().map(|&column| row_values[column] as f64));
            }
        }
        let ones = vec![1.0; n];
        let degrees: Vec<f64> = a.chunks_exact(n).map(|row| dot(row, &ones)).collect();
        if let Some(position) = degrees.iter().position(|d| !(*d > 0.0)) {
            let pixel = kept[position];
            return Err(Error::Features(format!(
                "pixel {pixel} has zero affinity to every pixel (a zero feature vector?): \
                 the normalized cut is undefined"
            )));
        }
        let eigenvector = second_smallest_eigenvector(&a, &degrees)?;
        let mut y: Vec<f64> = eigenvector
            .iter()
            .zip(&degrees)
            .map(|(v, d)| v / d.sqrt())
            .collect();
        deterministic_sign_flip(&mut y);
        let (membership, value) = best_bipartition(&y, &a, &degrees);
        if value < tau as f64 {
            let mut bipartition = vec![false; pixels];
            for (&pixel, &member) in kept.iter().zip(&membership) {
                bipartition[pixel] = member;
            }
            let complement: Vec<bool> = bipartition.iter().map(|b| !b).collect();
            // A stack: push the second recursive call first so the first runs first.
            pending.push(CutCall {
                painting: painting.clone(),
                mask: bipartition.clone(),
                top: false,
            });
            pending.push(CutCall {
                painting,
                mask: complement,
                top: false,
            });
            accepted.push(bipartition);
        }
    }
    Ok(accepted)
}

/// The affinity exponents the eigengap variant tries (`autosc.py`'s `ncut`).
pub const AUTO_TAU_ALPHAS: [f32; 4] = [1.0, 5.0, 10.0, 15.0];

/// Added to the running mean in [`relative_eigengap`]'s denominator, as published.
const EIGENGAP_EPS: f64 = 1e-6;

/// The normalised Laplacian `D^-½ (D − A) D^-½` of an affinity (f64) and `D^-½`'s diagonal.
fn normalized_laplacian(affinity: &Affinity) -> (Mat<f64>, Vec<f64>) {
    let n = affinity.pixels;
    let a = &affinity.values;
    let degrees: Vec<f64> = a
        .chunks_exact(n)
        .map(|row| row.iter().map(|&v| v as f64).sum())
        .collect();
    let inv_sqrt: Vec<f64> = degrees.iter().map(|d| 1.0 / d.sqrt()).collect();
    let laplacian = Mat::<f64>::from_fn(n, n, |i, j| {
        let degree = if i == j { degrees[i] } else { 0.0 };
        inv_sqrt[i] * (degree - a[i * n + j] as f64) * inv_sqrt[j]
    });
    (laplacian, inv_sqrt)
}

/// All eigenvalues (ascending) of an affinity's normalised Laplacian `D^-½ (D − A) D^-½`
/// (dense, faer, f64).
pub fn laplacian_eigenvalues(affinity: &Affinity) -> Result<Vec<f64>, Error> {
    let (laplacian, _) = normalized_laplacian(affinity);
    laplacian
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|error| Error::Features(format!("eigendecomposition failed: {error:?}")))
}

/// [`laplacian_eigenvalues`] and the eigenvectors mapped back by `D^-½` (the random-walk
/// ones, as `autosc.py`'s `eigen_decomposition`), one per column.
pub fn laplacian_eigen(affinity: &Affinity) -> Result<(Vec<f64>, Mat<f64>), Error> {
    let (laplacian, inv_sqrt) = normalized_laplacian(affinity);
    let eigen = laplacian
        .self_adjoint_eigen(Side::Lower)
        .map_err(|error| Error::Features(format!("eigendecomposition failed: {error:?}")))?;
    let values = eigen.S().column_vector().iter().copied().collect();
    let vectors = Mat::from_fn(inv_sqrt.len(), inv_sqrt.len(), |i, j| {
        inv_sqrt[i] * eigen.U()[(i, j)]
    });
    Ok((values, vectors))
}

/// The eigengap heuristic of `autosc.py`: for ascending eigenvalues λ, the relative gap
/// `(λ_i − m_i) / (m_i + 1e-6)` with `m_i` the mean of `λ_0..=λ_i`. Returns its largest
/// value and the first index reaching it, the number of clusters the variant takes.
pub fn relative_eigengap(eigenvalues: &[f64]) -> (f64, usize) {
    let mut sum = 0.0;
    let mut best = (f64::NEG_INFINITY, 0);
    for (i, &value) in eigenvalues.iter().enumerate() {
        sum += value;
        let mean = sum / (i + 1) as f64;
        let gap = (value - mean) / (mean + EIGENGAP_EPS);
        if gap > best.0 {
            best = (gap, i);
        }
    }
    best
}

/// Clusters the rows of `vectors` (`pixels x k`) by `cluster_qr` (Damle, Minden and Ying,
/// as scikit-learn's and `autosc.py`'s): the k rows a column-pivoted QR of `vectorsᵀ` picks
/// first give, by their SVD `U S Vᵀ`, the rotation `U Vᵀ`; each pixel takes the column of
/// `|vectors · U Vᵀ|` where it is largest (the first on ties).
pub fn cluster_qr(vectors: MatRef<'_, f64>) -> Result<Vec<u32>, Error> {
    let (pixels, k) = (vectors.nrows(), vectors.ncols());
    if k == 0 || pixels < k {
        return Ok(vec![0; pixels]);
    }
    let qr = vectors.transpose().to_owned().col_piv_qr();
    let pivots: Vec<usize> = qr.P().arrays().0[..k].to_vec();
    let chosen = Mat::<f64>::from_fn(k, k, |i, j| vectors[(pivots[j], i)]);
    let svd = chosen
        .svd()
        .map_err(|error| Error::Features(format!("SVD failed: {error:?}")))?;
    let rotation = svd.U() * svd.V().transpose();
    let rotated = vectors * &rotation;
    Ok((0..pixels)
        .map(|pixel| {
            let mut best = (f64::NEG_INFINITY, 0);
            for column in 0..k {
                let value = rotated[(pixel, column)].abs();
                if value > best.0 {
                    best = (value, column);
                }
            }
            best.1 as u32
        })
        .collect())
}

/// The eigengap variant of DiffCut (`diffcut/autosc.py`, `ncut`), choosing the number of
/// segments itself instead of cutting at a threshold τ: for each α of [`AUTO_TAU_ALPHAS`],
/// the Laplacian of the affinity raised to α ([`laplacian_eigenvalues`]) and its
/// [`relative_eigengap`]; the α with the largest gap (the first on ties, and only gaps above
/// 0) sets the cluster count k, and [`cluster_qr`] splits the pixels by the first k
/// eigenvectors. As published, those eigenvectors are the last α's (15), not the chosen
/// α's. Returns the labels renumbered 0..K in increasing order of cluster (as
/// `torch.unique`) and K; one segment when no gap is positive or the affinity is constant
/// (the published code fails there).
pub fn auto_spectral_clusters(normalized: &FeatureMap) -> Result<(Vec<u32>, usize), Error> {
    let pixels = normalized.pixels();
    let mut largest_gap = 0.0;
    let mut clusters = 0;
    let mut last_vectors = None;
    for (step, alpha) in AUTO_TAU_ALPHAS.into_iter().enumerate() {
        let Some(affinity) = affinity_matrix(normalized, alpha) else {
            return Ok((vec![0; pixels], 1));
        };
        // Only the last α's eigenvectors are used: the others need their values alone.
        let values = if step + 1 == AUTO_TAU_ALPHAS.len() {
            let (values, vectors) = laplacian_eigen(&affinity)?;
            last_vectors = Some(vectors);
            values
        } else {
            laplacian_eigenvalues(&affinity)?
        };
        let (gap, index) = relative_eigengap(&values);
        if gap > largest_gap {
            (largest_gap, clusters) = (gap, index);
        }
    }
    let labels = match last_vectors {
        Some(vectors) if clusters > 0 => cluster_qr(vectors.as_ref().subcols(0, clusters))?,
        _ => vec![0; pixels],
    };
    let mut distinct = labels.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let renumbered = labels
        .iter()
        .map(|label| distinct.binary_search(label).expect("a label of the map") as u32)
        .collect();
    Ok((renumbered, distinct.len()))
}

/// Labels pixels by which accepted bipartitions hold them, as the published
/// `assemble_clusters`: each mask adds a weight (one more than the running maximum, in f32
/// as published) to its pixels, and the distinct sums, in increasing order, become labels
/// 0..K−1. No masks: one label. Returns the labels and K.
pub fn assemble_clusters(masks: &[Vec<bool>], pixels: usize) -> (Vec<u32>, usize) {
    let mut codes = vec![0f32; pixels];
    let mut weight = 1f32;
    for mask in masks {
        for (code, _) in codes.iter_mut().zip(mask).filter(|(_, inside)| **inside) {
            *code += weight;
        }
        weight = codes.iter().copied().fold(f32::NEG_INFINITY, f32::max) + 1.0;
    }
    let mut distinct = codes.clone();
    distinct.sort_by(f32::total_cmp);
    distinct.dedup();
    let labels = codes
        .iter()
        .map(|code| {
            distinct
                .binary_search_by(|probe| probe.total_cmp(code))
                .expect("every code is among the distinct ones") as u32
        })
        .collect();
    (labels, distinct.len())
}

/// Each cluster's embedding: the mean normalised feature of its pixels (not renormalised),
/// as the published `MaskPooling`. Returns `count x channels` values, row-major.
pub fn mask_pooling(normalized: &FeatureMap, labels: &[u32], count: usize) -> Vec<f32> {
    let channels = normalized.channels;
    let mut sums = vec![0f32; count * channels];
    let mut sizes = vec![0f32; count];
    for (pixel, &label) in normalized.values.chunks_exact(channels).zip(labels) {
        let label = label as usize;
        sizes[label] += 1.0;
        sums[label * channels..(label + 1) * channels]
            .iter_mut()
            .zip(pixel)
            .for_each(|(sum, v)| *sum += v);
    }
    for (sum, size) in sums.chunks_exact_mut(channels).zip(&sizes) {
        let divisor = size + MASK_POOLING_EPS;
        sum.iter_mut().for_each(|v| *v /= divisor);
    }
    sums
}

/// Labels a `mask_size x mask_size` grid: each cell takes the cluster whose embedding has
/// the largest dot product with the normalised features bilinearly upsampled there
/// (half-pixel centres, PyTorch `Upsample(mode="bilinear")`), the first on ties.
///
/// Upsampling is linear, so the dot products are taken at the feature resolution and the
/// `clusters` score maps are upsampled instead of the `channels` feature maps: the same
/// scores up to rounding, without the `mask_size² x channels` upsampled features.
pub fn assign_labels(
    normalized: &FeatureMap,
    embeddings: &[f32],
    clusters: usize,
    mask_size: usize,
) -> Vec<u32> {
    let (height, width, channels) = (normalized.height, normalized.width, normalized.channels);
    let pixels = normalized.pixels();
    // Planar scores [clusters, height, width]: column-major [pixels, clusters].
    let mut scores = vec![0f32; clusters * pixels];
    matmul(
        MatMut::from_column_major_slice_mut(&mut scores, pixels, clusters),
        Accum::Replace,
        MatRef::from_row_major_slice(&normalized.values, pixels, channels),
        MatRef::from_row_major_slice(embeddings, clusters, channels).transpose(),
        1.0,
        faer::get_global_parallelism(),
    );
    let upsampled = resize_planar(&scores, clusters, height, width, mask_size, mask_size);
    let cells = mask_size * mask_size;
    (0..cells)
        .map(|cell| {
            let mut best = 0;
            for cluster in 1..clusters {
                if upsampled[cluster * cells + cell] > upsampled[best * cells + cell] {
                    best = cluster;
                }
            }
            best as u32
        })
        .collect()
}

/// One output sample of half-pixel bilinear resampling: the two source indices and the
/// weight of the upper one (PyTorch `align_corners=False` without antialiasing: source
/// coordinate `(o + 0.5) in/out − 0.5`, clamped at 0; the same formula as
/// `resize_bilinear_half_pixel`).
fn bilinear_taps(in_size: usize, out_size: usize) -> Vec<(usize, usize, f32)> {
    let scale = in_size as f64 / out_size as f64;
    (0..out_size)
        .map(|out| {
            let source = ((out as f64 + 0.5) * scale - 0.5).max(0.0);
            let lower = (source.floor() as usize).min(in_size - 1);
            let upper = (lower + 1).min(in_size - 1);
            (lower, upper, (source - lower as f64) as f32)
        })
        .collect()
}

/// Resizes planar `[planes, height, width]` values with half-pixel bilinear interpolation.
fn resize_planar(
    values: &[f32],
    planes: usize,
    height: usize,
    width: usize,
    out_height: usize,
    out_width: usize,
) -> Vec<f32> {
    let rows = bilinear_taps(height, out_height);
    let columns = bilinear_taps(width, out_width);
    let mut out = vec![0f32; planes * out_height * out_width];
    for (plane, out_plane) in values
        .chunks_exact(height * width)
        .zip(out.chunks_exact_mut(out_height * out_width))
    {
        // Columns first, then rows, each a two-tap blend.
        let mut widened = vec![0f32; height * out_width];
        for (row, out_row) in plane
            .chunks_exact(width)
            .zip(widened.chunks_exact_mut(out_width))
        {
            for (out, &(lower, upper, weight)) in out_row.iter_mut().zip(&columns) {
                *out = row[lower] * (1.0 - weight) + row[upper] * weight;
            }
        }
        for (out_row, &(lower, upper, weight)) in out_plane.chunks_exact_mut(out_width).zip(&rows) {
            let (above, below) = (
                &widened[lower * out_width..(lower + 1) * out_width],
                &widened[upper * out_width..(upper + 1) * out_width],
            );
            for ((out, a), b) in out_row.iter_mut().zip(above).zip(below) {
                *out = a * (1.0 - weight) + b * weight;
            }
        }
    }
    out
}

/// The 8 neighbour offsets of a 3×3 kernel in PAMR's order (row by row, centre skipped),
/// in units of the dilation.
const PAMR_NEIGHBOURS: [(isize, isize); 8] = [
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, -1),
    (0, 1),
    (1, -1),
    (1, 0),
    (1, 1),
];

/// PAMR (pixel-adaptive mask refinement, Araslanov & Roth 2020) as `tools/pamr.py` with
/// `eval_diffcut.py`'s settings, on a `size x size` label map and the image resized to it.
///
/// Each label becomes a one-hot map; each pixel gets weights over its 8 neighbours at each
/// dilation (replicate padding): the softmax of `−|x − x_nb| / (1e-8 + 0.1 σ)`, averaged
/// over image channels, where σ is the standard deviation of the pixel's 3×3 neighbourhoods
/// at all dilations. `iterations` times, every map is replaced by its neighbour-weighted
/// sum; the label is then the largest map (the first on ties). Labels are renumbered
/// 0..K−1 in increasing order of the given ones (the published code indexes
/// `torch.unique(labels)`).
pub fn pamr(
    image: &PlanarImage<'_>,
    labels: &[u32],
    iterations: usize,
    dilations: &[usize],
) -> Result<Vec<u32>, Error> {
    let (channels, height, width) = (image.channels, image.height, image.width);
    let pixels = height * width;
    if labels.len() != pixels {
        return Err(Error::Size(format!(
            "{} labels for a {width}x{height} image",
            labels.len()
        )));
    }
    let neighbour = |pixel: usize, dilation: usize, (dy, dx): (isize, isize)| -> usize {
        let (y, x) = ((pixel / width) as isize, (pixel % width) as isize);
        let d = dilation as isize;
        let ny = (y + dy * d).clamp(0, height as isize - 1) as usize;
        let nx = (x + dx * d).clamp(0, width as isize - 1) as usize;
        ny * width + nx
    };
    let positions = dilations.len() * PAMR_NEIGHBOURS.len();

    // Neighbour weights [pixels, positions].
    let mut weights = vec![0f32; pixels * positions];
    for channel in image.values.chunks_exact(pixels) {
        for (pixel, pixel_weights) in weights.chunks_exact_mut(positions).enumerate() {
            // Unbiased standard deviation over the 3×3 neighbourhoods (centre included) at
            // every dilation.
            let mut samples = Vec::with_capacity(dilations.len() * 9);
            for &dilation in dilations {
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        samples.push(channel[neighbour(pixel, dilation, (dy, dx))]);
                    }
                }
            }
            let mean = samples.iter().sum::<f32>() / samples.len() as f32;
            let variance = samples.iter().map(|s| (s - mean) * (s - mean)).sum::<f32>()
                / (samples.len() - 1) as f32;
            let scale = 1e-8 + 0.1 * variance.sqrt();
            let centre = channel[pixel];
            let mut position = 0;
            for &dilation in dilations {
                for &offset in &PAMR_NEIGHBOURS {
                    let difference = (centre - channel[neighbour(pixel, dilation, offset)]).abs();
                    pixel_weights[position] += -difference / scale / channels as f32;
                    position += 1;
                }
            }
        }
    }
    for pixel_weights in weights.chunks_exact_mut(positions) {
        let max = pixel_weights
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        pixel_weights.iter_mut().for_each(|w| *w = (*w - max).exp());
        let sum: f32 = pixel_weights.iter().sum();
        pixel_weights.iter_mut().for_each(|w| *w /= sum);
    }

    let mut present: Vec<u32> = labels.to_vec();
    present.sort_unstable();
    present.dedup();
    let classes = present.len();
    let mut maps = vec![0f32; classes * pixels];
    for (pixel, label) in labels.iter().enumerate() {
        let class = present.binary_search(label).expect("label is present");
        maps[class * pixels + pixel] = 1.0;
    }
    let mut next = vec![0f32; classes * pixels];
    for _ in 0..iterations {
        for (map, next_map) in maps.chunks_exact(pixels).zip(next.chunks_exact_mut(pixels)) {
            for (pixel, out) in next_map.iter_mut().enumerate() {
                let pixel_weights = &weights[pixel * positions..(pixel + 1) * positions];
                let mut position = 0;
                let mut sum = 0f32;
                for &dilation in dilations {
                    for &offset in &PAMR_NEIGHBOURS {
                        sum += map[neighbour(pixel, dilation, offset)] * pixel_weights[position];
                        position += 1;
                    }
                }
                *out = sum;
            }
        }
        std::mem::swap(&mut maps, &mut next);
    }
    Ok((0..pixels)
        .map(|pixel| {
            let mut best = 0;
            for class in 1..classes {
                if maps[class * pixels + pixel] > maps[best * pixels + pixel] {
                    best = class;
                }
            }
            best as u32
        })
        .collect())
}

/// The 3×3 median of each label's neighbourhood, edges repeated (scipy
/// `median_filter(labels, 3)` in its default `reflect` mode, as `eval_diffcut.py` applies
/// it after PAMR; its extra axis of size 1 changes nothing).
pub fn median_filter_3x3(labels: &[u32], height: usize, width: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(labels.len());
    for y in 0..height {
        for x in 0..width {
            let mut window = [0u32; 9];
            let mut index = 0;
            for ny in [y.saturating_sub(1), y, (y + 1).min(height - 1)] {
                for nx in [x.saturating_sub(1), x, (x + 1).min(width - 1)] {
                    window[index] = labels[ny * width + nx];
                    index += 1;
                }
            }
            window.sort_unstable();
            out.push(window[4]);
        }
    }
    out
}

/// DiffCut from features to a `mask_size x mask_size` segmentation: normalise, affinity,
/// recursive normalized cut, cluster embeddings, assignment on the label grid, then
/// optionally PAMR on `image` (resized to the label grid as `eval_diffcut.py` does, bilinear
/// without antialiasing) and the 3×3 median filter.
///
/// A non-square feature map is cut as it is; its labels are stretched to the square grid
/// (the published code handles square maps only).
pub fn cut_features(
    features: &FeatureMap,
    options: &CutOptions,
    image: Option<&PlanarImage<'_>>,
) -> Result<Segmentation, Error> {
    let normalized = normalize_features(features);
    let (clusters, count) = if options.auto_tau {
        auto_spectral_clusters(&normalized)?
    } else {
        let masks = match affinity_matrix(&normalized, options.alpha) {
            Some(affinity) => recursive_normalized_cut(&affinity, options.tau)?,
            None => Vec::new(),
        };
        assemble_clusters(&masks, normalized.pixels())
    };
    let embeddings = mask_pooling(&normalized, &clusters, count);
    let size = options.mask_size;
    let mut labels = assign_labels(&normalized, &embeddings, count, size);
    if options.pamr {
        let image = image.ok_or_else(|| {
            Error::CutOptions("PAMR refinement needs the image, and none was given".into())
        })?;
        let resized = resize_planar(
            image.values,
            image.channels,
            image.height,
            image.width,
            size,
            size,
        );
        let resized = PlanarImage::new(&resized, image.channels, size, size)?;
        labels = pamr(&resized, &labels, PAMR_ITERATIONS, &PAMR_DILATIONS)?;
    }
    let segmentation = Segmentation::from_labels(labels, size, size)?;
    if options.median {
        let smoothed = median_filter_3x3(segmentation.labels(), size, size);
        return Segmentation::from_labels(smoothed, size, size);
    }
    Ok(segmentation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_reject_out_of_range_values() {
        for (tau, alpha, size) in [
            (f32::NAN, 10.0, 128),
            (0.0, 10.0, 128),
            (1.5, 10.0, 128),
            (0.5, 0.0, 128),
            (0.5, f32::INFINITY, 128),
            (0.5, -1.0, 128),
            (0.5, 10.0, 0),
            (0.5, 10.0, MAX_MASK_SIZE + 1),
        ] {
            assert!(
                matches!(
                    CutOptions::new(tau, alpha, size, false, false),
                    Err(Error::CutOptions(_))
                ),
                "tau {tau} alpha {alpha} size {size}"
            );
        }
        assert_eq!(
            CutOptions::new(0.5, 10.0, 128, false, false).unwrap(),
            CutOptions::default()
        );
    }

    #[test]
    fn feature_maps_reject_bad_shapes_and_values() {
        assert!(matches!(
            FeatureMap::new(vec![0.0; 5], 2, 2, 1),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            FeatureMap::new(vec![], 0, 2, 1),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            FeatureMap::new(vec![0.0; 65 * 64], 65, 64, 1),
            Err(Error::Shape { .. })
        ));
        let mut values = vec![1.0; 12];
        values[7] = f32::NAN;
        let error = FeatureMap::new(values, 2, 2, 3).unwrap_err();
        assert!(
            error.to_string().contains("row 1, column 0, channel 1"),
            "{error}"
        );
    }

    #[test]
    fn pamr_without_an_image_is_an_error() {
        let features = FeatureMap::new((0..48).map(|v| v as f32).collect(), 4, 4, 3).unwrap();
        let options = CutOptions::new(0.5, 10.0, 8, true, false).unwrap();
        assert!(matches!(
            cut_features(&features, &options, None),
            Err(Error::CutOptions(_))
        ));
    }

    #[test]
    fn identical_features_make_one_segment() {
        let features = FeatureMap::new(vec![0.5; 16 * 3], 4, 4, 3).unwrap();
        let segmentation = cut_features(&features, &CutOptions::default(), None).unwrap();
        assert_eq!(segmentation.segment_count(), 1);
        assert_eq!(segmentation.width(), DEFAULT_MASK_SIZE);
    }

    /// Two groups of pixels with opposite features: one accepted cut, then no more.
    #[test]
    fn two_opposite_groups_are_cut_apart() {
        let (height, width) = (6, 8);
        let mut values = Vec::new();
        for y in 0..height {
            for x in 0..width {
                let noise = ((y * width + x) as f32 * 0.618).fract() * 0.1;
                if x < 3 {
                    values.extend([1.0, noise, 0.0]);
                } else {
                    values.extend([-1.0, 0.0, noise]);
                }
            }
        }
        let features = FeatureMap::new(values, height, width, 3).unwrap();
        let options = CutOptions::new(0.5, 10.0, 16, false, false).unwrap();
        let segmentation = cut_features(&features, &options, None).unwrap();
        assert_eq!(segmentation.segment_count(), 2);
        let left = segmentation.label_at(0, 0);
        for y in 0..16 {
            for x in 0..16 {
                // Feature column x/2, left group up to column 2 (pixels 0..6 of 16).
                let expected_left = x < 6;
                assert_eq!(
                    segmentation.label_at(x, y) == left,
                    expected_left,
                    "({x}, {y})"
                );
            }
        }
    }

    #[test]
    fn lanczos_and_dense_find_the_same_vector() {
        // A random-looking dense affinity with three blocks.
        let n = 60;
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                let same = i * 3 / n == j * 3 / n;
                let jitter = (((i * 31 + j * 17) % 97) as f64 / 97.0) * 0.05;
                let value = if same { 0.8 } else { 0.05 } + jitter;
                a[i * n + j] = value;
                a[j * n + i] = value;
            }
        }
        let degrees: Vec<f64> = a.chunks_exact(n).map(|row| row.iter().sum()).collect();
        let mut dense = second_smallest_eigenvector_dense(&a, &degrees).unwrap();
        let mut lanczos = second_smallest_eigenvector_lanczos(&a, &degrees).unwrap();
        deterministic_sign_flip(&mut dense);
        deterministic_sign_flip(&mut lanczos);
        for (d, l) in dense.iter().zip(&lanczos) {
            assert!((d - l).abs() < 1e-7, "{d} vs {l}");
        }
    }

    #[test]
    fn bipartition_value_is_the_normalized_cut() {
        // Two pairs joined weakly: the cut {0, 1} | {2, 3} has value cut/vol + cut/vol.
        let a = [
            1.0, 0.9, 0.1, 0.1, //
            0.9, 1.0, 0.1, 0.1, //
            0.1, 0.1, 1.0, 0.9, //
            0.1, 0.1, 0.9, 1.0,
        ];
        let degrees: Vec<f64> = a.chunks_exact(4).map(|row| row.iter().sum()).collect();
        let (membership, value) = best_bipartition(&[1.0, 0.9, -0.9, -1.0], &a, &degrees);
        assert_eq!(membership, [true, true, false, false]);
        let cut = 0.4;
        assert!((value - (cut / 4.2 + cut / 4.2)).abs() < 1e-12, "{value}");
    }

    #[test]
    fn median_filter_repeats_edges() {
        // With edges repeated the corner sees eight 1s; zero padding would make it 0.
        let labels = [1, 1, 0, 1, 0, 0, 0, 0, 0];
        let filtered = median_filter_3x3(&labels, 3, 3);
        assert_eq!(filtered[0], 1);
        assert_eq!(filtered[4], 0, "the centre sees three 1s of nine");
        assert_eq!(filtered[8], 0);
    }
}
