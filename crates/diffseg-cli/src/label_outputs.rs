//! The outputs of the commands that turn saved tensors into one label map
//! (`merge`, `cut`): a label PNG and, on request, its JSON, refused before any
//! work when they are an input, each other, or a file diffseg did not write,
//! and written as one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use diffseg::{JsonStyle, Segmentation, SegmentsFile};

use crate::exit;

/// Where a label map goes: `--out`, `--json`, `--pretty`.
pub struct LabelOutputs<'a> {
    pub png: &'a Path,
    pub json: Option<&'a Path>,
    pub json_style: JsonStyle,
}

impl LabelOutputs<'_> {
    /// Refuses, before any work, outputs that are one of `inputs` or each
    /// other, and files in their place that diffseg did not write.
    pub fn refuse_unsafe<'p>(
        &self,
        inputs: impl IntoIterator<Item = &'p PathBuf>,
    ) -> anyhow::Result<()> {
        let mut resolved = HashMap::new();
        for input in inputs {
            if let Some(real) = diffseg::resolved_path(input) {
                resolved.insert(real, input.clone());
            }
        }
        diffseg::refuse_input_as_output(self.png, &resolved)?;
        diffseg::refuse_foreign(self.png, "a label PNG", diffseg::is_diffseg_png)?;
        if let Some(json) = self.json {
            diffseg::refuse_input_as_output(json, &resolved)?;
            if diffseg::resolved_path(json)
                .is_some_and(|json| Some(json) == diffseg::resolved_path(self.png))
            {
                return Err(exit::usage(format!(
                    "--out and --json are the same file {}",
                    json.display()
                )));
            }
            diffseg::refuse_foreign(json, "a segments JSON", diffseg::is_json_of::<SegmentsFile>)?;
        }
        Ok(())
    }

    /// Writes the label PNG and the JSON as one: both are written whole before
    /// either is renamed into place, so a failure leaves the previous ones.
    pub fn write(&self, segmentation: &Segmentation) -> anyhow::Result<()> {
        let mut staged = vec![diffseg::stage_file(
            self.png,
            &segmentation.encode_label_png(self.png)?,
        )?];
        if let Some(json) = self.json {
            let description = self.json_style.encode(&segmentation.describe(None))?;
            staged.push(diffseg::stage_file(json, &description)?);
        }
        diffseg::commit_in_order(staged)?;
        println!(
            "{}: {} segments, {}x{} labels",
            self.png.display(),
            segmentation.segment_count(),
            segmentation.width(),
            segmentation.height()
        );
        Ok(())
    }
}

/// The JSON style `--pretty` asks for.
pub fn json_style(pretty: bool) -> JsonStyle {
    if pretty {
        JsonStyle::Pretty
    } else {
        JsonStyle::Compact
    }
}
