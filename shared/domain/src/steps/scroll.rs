//! `scroll`: an element into view, or the page by `x`/`y` pixels.

use serde::{Deserialize, Serialize};

use super::{
    Action, ElementState, StepContext, StepOutput, StepPage, check_optional_selector, find_element,
};
use crate::error::CodedError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scroll {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default)]
    pub x: i32,
    #[serde(default)]
    pub y: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

impl Action for Scroll {
    const NAME: &'static str = "scroll";

    fn timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        check_optional_selector(field, self.selector.as_deref())
    }

    async fn run<P: StepPage>(
        &self,
        page: &P,
        step: &StepContext,
        _out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        let script = match &self.selector {
            Some(selector) => {
                page.wait_element(selector, ElementState::Visible, step.deadline)
                    .await?;
                format!(
                    "(() => {{ {}.scrollIntoView({{block: 'center'}}); return true; }})()",
                    find_element(selector)
                )
            }
            None => format!(
                "(() => {{ window.scrollBy({}, {}); return true; }})()",
                self.x, self.y
            ),
        };
        page.evaluate(&script).await.map(|_| ())
    }
}
