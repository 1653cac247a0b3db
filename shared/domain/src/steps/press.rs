//! `press`: press a key, in an element if a selector is given.

use serde::{Deserialize, Serialize};

use super::{Action, ElementState, StepContext, StepOutput, StepPage, check_optional_selector};
use crate::error::CodedError;
use crate::spec::invalid_input;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Press {
    /// `Enter`, `Tab`, `ArrowDown`, or one character.
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

impl Action for Press {
    const NAME: &'static str = "press";

    fn timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        if self.key.is_empty() || self.key.len() > 32 {
            return Err(invalid_input(
                &format!("{field}.key"),
                "must be a key name such as \"Enter\" or one character",
            ));
        }
        check_optional_selector(field, self.selector.as_deref())
    }

    async fn run<P: StepPage>(
        &self,
        page: &P,
        step: &StepContext,
        _out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        if let Some(selector) = &self.selector {
            page.wait_element(selector, ElementState::Visible, step.deadline)
                .await?;
            page.focus(selector, false).await?;
        }
        page.press_key(&self.key).await
    }
}
