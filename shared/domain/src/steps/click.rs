//! `click`: a real mouse click at the centre of the first visible match.

use serde::{Deserialize, Serialize};

use super::{Action, StepContext, StepOutput, StepPage, check_selector};
use crate::error::CodedError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Click {
    pub selector: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

impl Action for Click {
    const NAME: &'static str = "click";

    fn timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        check_selector(&format!("{field}.selector"), &self.selector)
    }

    async fn run<P: StepPage>(
        &self,
        page: &P,
        step: &StepContext,
        _out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        page.click(&self.selector, step.deadline).await
    }
}
