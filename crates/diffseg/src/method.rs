//! [`Method`]: which segmentation method runs after the model, with its checked options,
//! and [`MethodSettings`], the one place front ends (CLI, Python, `eval`) turn the values
//! a user gave, or left out, into a [`Method`].

use std::fmt;
use std::str::FromStr;

use diffseg_core::{
    CutOptions, MergeOptions, DEFAULT_ANCHORS, DEFAULT_CUT_ALPHA, DEFAULT_CUT_TAU,
    DEFAULT_ITERATIONS, DEFAULT_MASK_SIZE, DEFAULT_TAU,
};

use crate::features::{FeatureOptions, DEFAULT_FEATURE_SEED, DIFFCUT_INPUT_SIZE, DIFFCUT_TIMESTEP};
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
    /// DiffCut (Couairon et al., NeurIPS 2024): one self-attention layer's output cut by a
    /// recursive normalized cut (docs/method.md §9).
    DiffCut(DiffCutOptions),
}

/// DiffCut's options: how the features are made (model side) and how they are cut.
/// Both parts are checked when built, so a value of this type is always valid.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DiffCutOptions {
    /// Input size, timestep and noise seed of the UNet pass.
    pub features: FeatureOptions,
    /// τ, α, mask size and refinement of the cut.
    pub cut: CutOptions,
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
            MethodKind::DiffCut => {
                settings.refuse_others(kind)?;
                Ok(Method::DiffCut(DiffCutOptions {
                    features: settings.feature_options()?,
                    cut: settings.cut_options()?,
                }))
            }
        }
    }

    /// Which method this is.
    pub fn kind(&self) -> MethodKind {
        match self {
            Method::DiffSeg(_) => MethodKind::DiffSeg,
            Method::DiffCut(_) => MethodKind::DiffCut,
        }
    }

    /// Checks options built by hand ([`MergeOptions`] has public fields).
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Method::DiffSeg(options) => Ok(options.validate()?),
            // Its parts can only be built checked.
            Method::DiffCut(_) => Ok(()),
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
    /// `diffcut`.
    DiffCut,
}

impl MethodKind {
    /// Every method, in the order help texts list them.
    pub const ALL: [MethodKind; 2] = [MethodKind::DiffSeg, MethodKind::DiffCut];

    /// The name `--method` takes.
    pub fn name(self) -> &'static str {
        match self {
            MethodKind::DiffSeg => "diffseg",
            MethodKind::DiffCut => "diffcut",
        }
    }
}

impl MethodKind {
    /// The method's name as its paper writes it, for messages.
    fn title(self) -> &'static str {
        match self {
            MethodKind::DiffSeg => "DiffSeg",
            MethodKind::DiffCut => "DiffCut",
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
    /// The threshold: DiffSeg's KL threshold, one for every iteration or one per
    /// iteration; DiffCut's cut threshold, one value.
    pub tau: Option<Vec<f32>>,
    /// DiffCut: the eigengap variant chooses the segments instead of τ (`--tau auto`);
    /// `tau` must then be left out.
    pub auto_tau: Option<bool>,
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
    /// DiffCut: the side of the model's square input in pixels.
    pub input_size: Option<usize>,
    /// DiffCut: the seed of the noise added to the latent.
    pub seed: Option<u64>,
}

impl MethodSettings {
    /// [`Error::Segment`] naming the first option given that `kind` does not take.
    fn refuse_others(&self, kind: MethodKind) -> Result<(), Error> {
        let (others, owner) = match kind {
            MethodKind::DiffSeg => (
                [
                    ("alpha", self.alpha.is_some()),
                    ("mask size", self.mask_size.is_some()),
                    ("pamr", self.pamr.is_some()),
                    ("median", self.median.is_some()),
                    ("input size", self.input_size.is_some()),
                    ("seed", self.seed.is_some()),
                ]
                .to_vec(),
                MethodKind::DiffCut,
            ),
            MethodKind::DiffCut => (
                [
                    ("anchors", self.anchors.is_some()),
                    ("iterations", self.iterations.is_some()),
                    ("refine", self.refine.is_some()),
                ]
                .to_vec(),
                MethodKind::DiffSeg,
            ),
        };
        match others.iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(diffseg_core::Error::Options(format!(
                "{name} is an option of {}, not of {}",
                owner.title(),
                kind.title()
            ))
            .into()),
            None => Ok(()),
        }
    }

    /// DiffCut's model-side options from these settings, each left out at DiffCut's value
    /// (a [`DIFFCUT_INPUT_SIZE`]-pixel input, our [`DEFAULT_FEATURE_SEED`]), checked.
    pub fn feature_options(&self) -> Result<FeatureOptions, Error> {
        FeatureOptions::new(
            self.input_size.unwrap_or(DIFFCUT_INPUT_SIZE),
            DIFFCUT_TIMESTEP,
            self.seed.unwrap_or(DEFAULT_FEATURE_SEED),
        )
    }

    /// DiffCut's cut options from these settings, each left out at the published value
    /// (τ [`DEFAULT_CUT_TAU`], α [`DEFAULT_CUT_ALPHA`], [`DEFAULT_MASK_SIZE`]², no PAMR, no
    /// median filter), checked. `tau` must then be one value: the cut has no iterations;
    /// with `auto_tau` it must be left out ([`CutOptions::with_auto_tau`]).
    pub fn cut_options(&self) -> Result<CutOptions, Error> {
        let auto_tau = self.auto_tau.unwrap_or(false);
        let tau = match self.tau.as_deref() {
            Some(_) if auto_tau => {
                return Err(diffseg_core::Error::CutOptions(
                    "tau auto and a tau value given: the eigengap variant takes no tau".into(),
                )
                .into())
            }
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
        )?
        .with_auto_tau(auto_tau))
    }

    /// DiffSeg's merging options from these settings, each left out at the paper's value,
    /// checked.
    pub fn merge_options(&self) -> Result<MergeOptions, Error> {
        if self.auto_tau == Some(true) {
            return Err(diffseg_core::Error::Options(
                "tau auto is DiffCut's eigengap variant: DiffSeg's merge needs a KL threshold \
                 (a number, e.g. 1.1)"
                    .into(),
            )
            .into());
        }
        Ok(MergeOptions::new(
            self.tau.clone().unwrap_or_else(|| vec![DEFAULT_TAU]),
            self.anchors.unwrap_or(DEFAULT_ANCHORS),
            self.iterations.unwrap_or(DEFAULT_ITERATIONS),
            self.refine.unwrap_or(false),
        )?)
    }
}
