//! `goto`: open a URL and wait for a load milestone.

use serde::{Deserialize, Serialize};

use super::{Action, StepContext, StepOutput, StepPage};
use crate::error::CodedError;
use crate::spec::{TargetUrl, WaitSpec, WaitUntil};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goto {
    pub url: TargetUrl,
    #[serde(default)]
    pub wait_until: WaitUntil,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

impl Action for Goto {
    const NAME: &'static str = "goto";

    fn timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    fn urls(&self) -> Vec<&TargetUrl> {
        vec![&self.url]
    }

    /// The URL was checked as it was parsed.
    fn validate(&self, _field: &str) -> Result<(), CodedError> {
        Ok(())
    }

    async fn run<P: StepPage>(
        &self,
        page: &P,
        step: &StepContext,
        _out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        let wait = WaitSpec {
            wait_until: self.wait_until,
            wait_for_selector: None,
            delay_ms: 0,
        };
        page.open(self.url.as_str(), &wait, step.deadline).await
    }
}
