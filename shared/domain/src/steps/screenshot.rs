//! `screenshot`: the viewport, the full page, or one element, as a file of the result.

use serde::{Deserialize, Serialize};

use super::{
    Action, StepContext, StepFile, StepOutput, StepPage, check_name, check_range, check_selector,
};
use crate::error::CodedError;
use crate::spec::{ImageFormat, invalid_input};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Screenshot {
    /// File name without extension (default `screenshot-<step>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default)]
    pub full_page: bool,
    #[serde(default, rename = "type")]
    pub image_type: ImageFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

impl Action for Screenshot {
    const NAME: &'static str = "screenshot";

    fn timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        check_name(&format!("{field}.name"), self.name.as_deref())?;
        if let Some(selector) = &self.selector {
            check_selector(&format!("{field}.selector"), selector)?;
            if self.full_page {
                return Err(invalid_input(
                    &format!("{field}.full_page"),
                    "an element screenshot cannot also be full-page",
                ));
            }
        }
        if let Some(quality) = self.quality {
            if self.image_type == ImageFormat::Png {
                return Err(invalid_input(
                    &format!("{field}.quality"),
                    "applies to jpeg and webp only",
                ));
            }
            check_range(&format!("{field}.quality"), u32::from(quality), 0, 100)?;
        }
        Ok(())
    }

    async fn run<P: StepPage>(
        &self,
        page: &P,
        step: &StepContext,
        out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        let bytes = page
            .capture(
                self.image_type,
                self.quality,
                self.full_page,
                self.selector.as_deref(),
                step.deadline,
            )
            .await?;
        let base = self
            .name
            .clone()
            .unwrap_or_else(|| format!("screenshot-{}", step.index));
        out.files.push(StepFile {
            name: format!("{base}.{}", self.image_type.extension()),
            content_type: self.image_type.content_type().to_owned(),
            bytes,
        });
        Ok(())
    }
}
