//! The paper's metric (docs/method.md §7): per-image Hungarian matching of predicted
//! segments to ground-truth classes, TP/FP/FN summed over the dataset, pixel
//! accuracy and mean IoU.
//!
//! The matching maximises matched pixels on the 27 × max(27, K) confusion matrix
//! with [`lsap`], a translation of scipy's `linear_sum_assignment`, which the
//! paper's code calls. Which optimum is picked matters: a class absent from an
//! image still gets a column, and that column's pixels count as its false
//! positives, so the choice among tied optima (every absent class is a zero row)
//! moves per-class IoU; an arbitrary optimal choice moved mIoU by 0.4–0.9 points in
//! simulations. `lsap` makes scipy's choice in every case; `pathfinding`'s
//! Kuhn–Munkres finds the same optimum and usually, not always, the same choice
//! (it differs on 9 of the 60 tie-heavy matrices of the test fixture).

use super::dataset::{IGNORED, NUM_CLASSES};

/// The confusion matrix of one image: rows are the 27 ground-truth classes, columns
/// the predicted segments `0..max(27, K)`, K = largest predicted label + 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    columns: usize,
    counts: Vec<u64>,
}

impl Confusion {
    /// Counts pixel pairs. `classes` holds a class in `0..27` or [`IGNORED`] per
    /// pixel, `segments` the predicted segment per pixel; ignored pixels are not
    /// counted, but their segments still widen the matrix (K is taken over every
    /// pixel, as the paper's code does).
    ///
    /// # Panics
    ///
    /// If the two maps differ in length.
    pub fn new(classes: &[u8], segments: &[u16]) -> Confusion {
        assert_eq!(classes.len(), segments.len(), "label maps of one size");
        let segment_count = segments.iter().max().map_or(0, |&max| max as usize + 1);
        let columns = segment_count.max(NUM_CLASSES);
        let mut counts = vec![0u64; NUM_CLASSES * columns];
        for (&class, &segment) in classes.iter().zip(segments) {
            if class != IGNORED {
                counts[class as usize * columns + segment as usize] += 1;
            }
        }
        Confusion { columns, counts }
    }

    /// The number of columns, max(27, K).
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// The pixels of `class` predicted as `segment`.
    pub fn count(&self, class: usize, segment: usize) -> u64 {
        self.counts[class * self.columns + segment]
    }

    /// The labelled pixels of `class`.
    pub fn class_total(&self, class: usize) -> u64 {
        self.counts[class * self.columns..(class + 1) * self.columns]
            .iter()
            .sum()
    }

    /// The labelled pixels predicted as `segment`.
    pub fn segment_total(&self, segment: usize) -> u64 {
        (0..NUM_CLASSES)
            .map(|class| self.count(class, segment))
            .sum()
    }
}

/// A maximum-weight assignment of a `rows` × `columns` matrix (row-major
/// `weights`), either orientation: `min(rows, columns)` (row, column) pairs sorted
/// by row, chosen among tied optima exactly as scipy's
/// `linear_sum_assignment(weights, maximize=True)` chooses.
///
/// # Panics
///
/// If `weights` does not hold `rows * columns` values.
pub(crate) fn max_weight_assignment(
    rows: usize,
    columns: usize,
    weights: &[u64],
) -> Vec<(usize, usize)> {
    assert_eq!(weights.len(), rows * columns, "a rows × columns matrix");
    // Pixel counts are far below 2^53, so the f64 costs and the solver's dual
    // arithmetic on them are exact, as in scipy (which converts to float64 too).
    let costs: Vec<f64> = weights.iter().map(|&weight| weight as f64).collect();
    let (matched_rows, matched_columns) = lsap::solve(rows, columns, &costs, true)
        .expect("a dense matrix of finite costs always has an assignment");
    matched_rows.into_iter().zip(matched_columns).collect()
}

/// The segment matched to each ground-truth class: the assignment that maximises
/// the matched pixels of the image's confusion matrix. Every class gets a column
/// (there are at least 27), possibly one no pixel was predicted as.
pub fn match_segments(confusion: &Confusion) -> [usize; NUM_CLASSES] {
    let mut matched = [0usize; NUM_CLASSES];
    for (class, segment) in max_weight_assignment(NUM_CLASSES, confusion.columns, &confusion.counts)
    {
        matched[class] = segment;
    }
    matched
}

/// True positives, false positives and false negatives per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassCounts {
    /// Pixels of the class in its matched segment.
    pub tp: [u64; NUM_CLASSES],
    /// Labelled pixels of the matched segment that belong to other classes.
    pub fp: [u64; NUM_CLASSES],
    /// Pixels of the class outside its matched segment.
    pub fn_: [u64; NUM_CLASSES],
    /// Labelled (not ignored) pixels.
    pub labelled: u64,
}

/// Scores one image: matches its segments to classes ([`match_segments`]), then
/// TP = matched count, FN = class total − TP, FP = matched segment's total − TP.
pub fn score_image(classes: &[u8], segments: &[u16]) -> ClassCounts {
    let confusion = Confusion::new(classes, segments);
    let matched = match_segments(&confusion);
    let mut counts = ClassCounts::default();
    for (class, &segment) in matched.iter().enumerate() {
        let tp = confusion.count(class, segment);
        counts.tp[class] = tp;
        counts.fn_[class] = confusion.class_total(class) - tp;
        counts.fp[class] = confusion.segment_total(segment) - tp;
        counts.labelled += confusion.class_total(class);
    }
    counts
}

/// Scores one image whose prediction is a class per pixel (the open-vocabulary protocol of
/// `diffseg eval --semantic`: each segment's name is its class, docs/method.md §10), compared
/// with the ground truth directly, without matching. TP = pixels of the class predicted as it,
/// FN = its other pixels, FP = labelled pixels of other classes predicted as it. A predicted
/// value outside `0..27` is no class: its pixels are only false negatives.
///
/// # Panics
///
/// If the two maps differ in length.
pub fn score_image_by_class(classes: &[u8], predicted: &[u16]) -> ClassCounts {
    assert_eq!(classes.len(), predicted.len(), "label maps of one size");
    let mut counts = ClassCounts::default();
    for (&class, &prediction) in classes.iter().zip(predicted) {
        if class == IGNORED {
            continue;
        }
        let (class, prediction) = (class as usize, prediction as usize);
        counts.labelled += 1;
        if prediction == class {
            counts.tp[class] += 1;
        } else {
            counts.fn_[class] += 1;
            if prediction < NUM_CLASSES {
                counts.fp[prediction] += 1;
            }
        }
    }
    counts
}

/// Dataset-level sums of per-image [`ClassCounts`], and the metrics from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scores {
    /// The summed counts.
    pub counts: ClassCounts,
    /// The images added.
    pub images: usize,
}

impl Scores {
    /// Adds one image's counts.
    pub fn add(&mut self, image: &ClassCounts) {
        for class in 0..NUM_CLASSES {
            self.counts.tp[class] += image.tp[class];
            self.counts.fp[class] += image.fp[class];
            self.counts.fn_[class] += image.fn_[class];
        }
        self.counts.labelled += image.labelled;
        self.images += 1;
    }

    /// Pixel accuracy: ΣTP / labelled pixels (`None` before any labelled pixel).
    pub fn accuracy(&self) -> Option<f64> {
        let tp: u64 = self.counts.tp.iter().sum();
        (self.counts.labelled > 0).then(|| tp as f64 / self.counts.labelled as f64)
    }

    /// Per-class IoU, TP / (TP + FP + FN); `None` for a class with no pixel at all
    /// (the paper's NaN, left out of the mean).
    pub fn class_iou(&self) -> [Option<f64>; NUM_CLASSES] {
        std::array::from_fn(|class| {
            let tp = self.counts.tp[class];
            let union = tp + self.counts.fp[class] + self.counts.fn_[class];
            (union > 0).then(|| tp as f64 / union as f64)
        })
    }

    /// Mean IoU over the classes that have one (`None` if none has).
    pub fn mean_iou(&self) -> Option<f64> {
        let ious: Vec<f64> = self.class_iou().into_iter().flatten().collect();
        (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pathfinding::prelude::{kuhn_munkres, Matrix};

    /// A small deterministic generator (64-bit LCG) for test matrices.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % bound
        }
    }

    /// The optimum that `pathfinding`'s Kuhn–Munkres, an independent solver, finds.
    fn kuhn_munkres_total(rows: usize, columns: usize, weights: &[u64]) -> u64 {
        let wide = rows <= columns;
        let matrix = Matrix::from_fn(rows.min(columns), rows.max(columns), |(r, c)| {
            let (row, column) = if wide { (r, c) } else { (c, r) };
            weights[row * columns + column] as i64
        });
        kuhn_munkres(&matrix).0 as u64
    }

    #[test]
    fn assignment_total_is_the_kuhn_munkres_optimum_in_both_orientations() {
        let mut random = Lcg(7);
        for case in 0..300 {
            let rows = 1 + random.below(9) as usize;
            let columns = 1 + random.below(9) as usize;
            // Small values give many ties; sparse ones give zero rows, as absent classes do.
            let weights: Vec<u64> = (0..rows * columns)
                .map(|_| {
                    if random.below(3) == 0 {
                        random.below(5)
                    } else {
                        0
                    }
                })
                .collect();
            let pairs = max_weight_assignment(rows, columns, &weights);
            assert_eq!(pairs.len(), rows.min(columns), "case {case}");
            let mut used_rows: Vec<usize> = pairs.iter().map(|p| p.0).collect();
            let mut used_columns: Vec<usize> = pairs.iter().map(|p| p.1).collect();
            used_rows.dedup();
            used_columns.sort();
            used_columns.dedup();
            assert_eq!(used_rows.len(), pairs.len(), "rows sorted and distinct");
            assert_eq!(used_columns.len(), pairs.len(), "columns distinct");
            let total: u64 = pairs.iter().map(|&(r, c)| weights[r * columns + c]).sum();
            assert_eq!(
                total,
                kuhn_munkres_total(rows, columns, &weights),
                "case {case}"
            );
        }
    }

    #[test]
    fn every_class_gets_a_segment_and_counts_add_up() {
        // 4 pixels of class 0 in segment 30, 2 of class 1 split, 1 ignored pixel.
        let classes = [0, 0, 0, 0, 1, 1, IGNORED];
        let segments = [30, 30, 30, 30, 30, 2, 5];
        let confusion = Confusion::new(&classes, &segments);
        assert_eq!(confusion.columns(), 31);
        let matched = match_segments(&confusion);
        assert_eq!(matched[0], 30);
        assert_eq!(matched[1], 2);
        let counts = score_image(&classes, &segments);
        assert_eq!(counts.labelled, 6);
        assert_eq!((counts.tp[0], counts.fp[0], counts.fn_[0]), (4, 1, 0));
        assert_eq!((counts.tp[1], counts.fp[1], counts.fn_[1]), (1, 0, 1));
        let mut scores = Scores::default();
        scores.add(&counts);
        assert_eq!(scores.accuracy(), Some(5.0 / 6.0));
        let iou = scores.class_iou();
        assert_eq!(iou[0], Some(0.8));
        assert_eq!(iou[1], Some(0.5));
        // Classes 2..27 have neither pixels nor predictions matched to them.
        assert!(iou[2..].iter().all(Option::is_none));
        assert_eq!(scores.mean_iou(), Some(0.65));
    }

    #[test]
    fn by_class_counts_compare_pixels_directly() {
        // Class 0 right twice and called 1 once; class 1 right once; a pixel of class 2
        // predicted as no class (255); an ignored pixel predicted as 0 counts nowhere.
        let classes = [0, 0, 0, 1, 2, IGNORED];
        let predicted = [0, 0, 1, 1, 255, 0];
        let counts = score_image_by_class(&classes, &predicted);
        assert_eq!(counts.labelled, 5);
        assert_eq!((counts.tp[0], counts.fp[0], counts.fn_[0]), (2, 0, 1));
        assert_eq!((counts.tp[1], counts.fp[1], counts.fn_[1]), (1, 1, 0));
        assert_eq!((counts.tp[2], counts.fp[2], counts.fn_[2]), (0, 0, 1));
        let mut scores = Scores::default();
        scores.add(&counts);
        assert_eq!(scores.accuracy(), Some(3.0 / 5.0));
        assert_eq!(scores.mean_iou(), Some((2.0 / 3.0 + 0.5 + 0.0) / 3.0));
    }
}
