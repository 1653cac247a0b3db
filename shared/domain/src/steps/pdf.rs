//! `pdf`: the page printed to PDF, as a file of the result.

use serde::{Deserialize, Serialize};

use super::{Action, StepContext, StepFile, StepOutput, StepPage, check_name};
use crate::error::CodedError;
use crate::spec::PaperFormat;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pdf {
    /// File name without extension (default `document-<step>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub format: PaperFormat,
    #[serde(default)]
    pub landscape: bool,
    #[serde(default = "crate::spec::default_true")]
    pub print_background: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

impl Action for Pdf {
    const NAME: &'static str = "pdf";

    fn timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        check_name(&format!("{field}.name"), self.name.as_deref())
    }

    async fn run<P: StepPage>(
        &self,
        page: &P,
        step: &StepContext,
        out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        let bytes = page
            .print(self.format, self.landscape, self.print_background)
            .await?;
        let base = self
            .name
            .clone()
            .unwrap_or_else(|| format!("document-{}", step.index));
        out.files.push(StepFile {
            name: format!("{base}.pdf"),
            content_type: "application/pdf".to_owned(),
            bytes,
        });
        Ok(())
    }
}
