//! `type`: focus an element and type text into it, at once or key by key.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Action, ElementState, MAX_TEXT_LENGTH, StepContext, StepOutput, StepPage, check_length,
    check_range, check_selector,
};
use crate::error::CodedError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeText {
    pub selector: String,
    pub text: String,
    /// Pause between keys, for pages that react to each key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u32>,
    /// Empty the field first.
    #[serde(default)]
    pub clear: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

impl Action for TypeText {
    const NAME: &'static str = "type";

    fn timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        check_selector(&format!("{field}.selector"), &self.selector)?;
        check_length(&format!("{field}.text"), &self.text, MAX_TEXT_LENGTH)?;
        if let Some(delay) = self.delay_ms {
            check_range(&format!("{field}.delay_ms"), delay, 0, 1_000)?;
        }
        Ok(())
    }

    async fn run<P: StepPage>(
        &self,
        page: &P,
        step: &StepContext,
        _out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        page.wait_element(&self.selector, ElementState::Visible, step.deadline)
            .await?;
        page.focus(&self.selector, self.clear).await?;
        match self.delay_ms.filter(|delay| *delay > 0) {
            None => page.insert_text(&self.text).await,
            Some(delay) => {
                for character in self.text.chars() {
                    page.insert_text(&character.to_string()).await?;
                    page.sleep(Duration::from_millis(u64::from(delay)), step.deadline)
                        .await?;
                }
                Ok(())
            }
        }
    }
}
