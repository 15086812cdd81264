//! [`Method`]: which segmentation method runs after the model, with its checked options,
//! and [`MethodSettings`], the one place front ends (CLI, Python, `eval`) turn the values
//! a user gave, or left out, into a [`Method`].

use std::fmt;
use std::str::FromStr;

use diffseg_core::{
    CutOptions, MergeOptions, DEFAULT_ANCHORS, DEFAULT_CUT_ALPHA, DEFAULT_CUT_TAU,
    DEFAULT_ITERATIONS, DEFAULT_MASK_SIZE, DEFAULT_TAU,
};

use crate::Error;

/// A segmentation method with its checked options.
///
/// ```
/// use diffseg::{Method, MethodKind, MethodSettings};
///
/// # fn main() -> Result<(), diffseg::Error> {
/// // The paper's DiffSeg, except τ 0.9 (its Cityscapes value).
/// let settings = MethodSettings { tau: Some(vec![0.9]), ..MethodSettings::default() };
/// let method = Method::from_settings(MethodKind::DiffSeg, &settings)?;
/// assert_eq!(method.kind(), MethodKind::DiffSeg);
/// // Out-of-range values are refused when the method is built, not when it runs.
/// let bad = MethodSettings { anchors: Some(1), ..MethodSettings::default() };
/// assert!(Method::from_settings(MethodKind::DiffSeg, &bad).is_err());
/// // A segmenter runs the method it is built with (`.build()` then loads the model).
/// let builder = diffseg::Segmenter::builder().method(method);
/// # let _ = builder;
/// # Ok(()) }
/// ```
///
/// Not `#[non_exhaustive]`: a new method must be handled by every front end that matches.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// DiffSeg (Tian et al., CVPR 2024): self-attention maps merged by KL divergence.
    DiffSeg(MergeOptions),
}

impl Default for Method {
    /// The paper's DiffSeg.
    fn default() -> Self {
        Method::DiffSeg(MergeOptions::default())
    }
}

impl Method {
    /// The method `kind` with `settings`, each one left out at its default, checked.
    /// An option of another method is refused rather than ignored.
    pub fn from_settings(kind: MethodKind, settings: &MethodSettings) -> Result<Method, Error> {
        match kind {
            MethodKind::DiffSeg => {
                settings.refuse_others(kind)?;
                Ok(Method::DiffSeg(settings.merge_options()?))
            }
        }
    }

    /// Which method this is.
    pub fn kind(&self) -> MethodKind {
        match self {
            Method::DiffSeg(_) => MethodKind::DiffSeg,
        }
    }

    /// Checks options built by hand ([`MergeOptions`] has public fields).
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Method::DiffSeg(options) => Ok(options.validate()?),
        }
    }
}

impl From<MergeOptions> for Method {
    fn from(options: MergeOptions) -> Self {
        Method::DiffSeg(options)
    }
}

/// The name of a [`Method`], as `--method` and Python's `method=` take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MethodKind {
    /// `diffseg`.
    #[default]
    DiffSeg,
}

impl MethodKind {
    /// Every method, in the order help texts list them.
    pub const ALL: [MethodKind; 1] = [MethodKind::DiffSeg];

    /// The name `--method` takes.
    pub fn name(self) -> &'static str {
        match self {
            MethodKind::DiffSeg => "diffseg",
        }
    }
}

impl fmt::Display for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MethodKind {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        MethodKind::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::UnknownName {
                what: "method",
                name: name.to_string(),
                reason: format!(
                    "expected one of {}",
                    MethodKind::ALL.map(MethodKind::name).join(", ")
                ),
            })
    }
}

/// Method options as a user gives them: each `None` when left out, so that it takes its
/// method's default. [`Method::from_settings`] checks them and builds the [`Method`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodSettings {
    /// DiffSeg: the KL threshold, one for every iteration or one per iteration.
    pub tau: Option<Vec<f32>>,
    /// DiffSeg: anchors per side of the anchor grid.
    pub anchors: Option<usize>,
    /// DiffSeg: merge iterations.
    pub iterations: Option<usize>,
    /// DiffSeg: the k-means refinement.
    pub refine: Option<bool>,
    /// DiffCut: the affinity exponent α.
    pub alpha: Option<f32>,
    /// DiffCut: the side of the square label grid.
    pub mask_size: Option<usize>,
    /// DiffCut: PAMR refinement on the image.
    pub pamr: Option<bool>,
    /// DiffCut: the 3×3 median filter last.
    pub median: Option<bool>,
}

impl MethodSettings {
    /// [`Error::Segment`] naming the first option given that `kind` does not take.
    fn refuse_others(&self, kind: MethodKind) -> Result<(), Error> {
        let cut = [
            ("alpha", self.alpha.is_some()),
            ("mask size", self.mask_size.is_some()),
            ("pamr", self.pamr.is_some()),
            ("median", self.median.is_some()),
        ];
        match (kind, cut.iter().find(|(_, set)| *set)) {
            (MethodKind::DiffSeg, Some((name, _))) => Err(diffseg_core::Error::Options(format!(
                "{name} is an option of DiffCut, not of DiffSeg"
            ))
            .into()),
            _ => Ok(()),
        }
    }

    /// DiffCut's cut options from these settings, each left out at the published value
    /// (τ [`DEFAULT_CUT_TAU`], α [`DEFAULT_CUT_ALPHA`], [`DEFAULT_MASK_SIZE`]², no PAMR, no
    /// median filter), checked. `tau` must then be one value: the cut has no iterations.
    pub fn cut_options(&self) -> Result<CutOptions, Error> {
        let tau = match self.tau.as_deref() {
            None => DEFAULT_CUT_TAU,
            Some([tau]) => *tau,
            Some(taus) => {
                return Err(diffseg_core::Error::CutOptions(format!(
                    "{} thresholds given: DiffCut takes one tau",
                    taus.len()
                ))
                .into())
            }
        };
        Ok(CutOptions::new(
            tau,
            self.alpha.unwrap_or(DEFAULT_CUT_ALPHA),
            self.mask_size.unwrap_or(DEFAULT_MASK_SIZE),
            self.pamr.unwrap_or(false),
            self.median.unwrap_or(false),
        )?)
    }

    /// DiffSeg's merging options from these settings, each left out at the paper's value,
    /// checked.
    pub fn merge_options(&self) -> Result<MergeOptions, Error> {
        Ok(MergeOptions::new(
            self.tau.clone().unwrap_or_else(|| vec![DEFAULT_TAU]),
            self.anchors.unwrap_or(DEFAULT_ANCHORS),
            self.iterations.unwrap_or(DEFAULT_ITERATIONS),
            self.refine.unwrap_or(false),
        )?)
    }
}
