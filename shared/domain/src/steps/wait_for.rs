//! `wait_for`: exactly one of an element's state, a page event, or a fixed delay.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Action, StepContext, StepOutput, StepPage, check_optional_selector, check_range};
use crate::error::CodedError;
use crate::spec::{MAX_DELAY_MS, invalid_input};

/// Whether an element must be shown or gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ElementState {
    #[default]
    Visible,
    Hidden,
}

/// A page event to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PageEvent {
    /// The next page load completes (after a click that navigates, a form post).
    Navigation,
    /// No network request for 500 ms.
    NetworkIdle,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitFor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default)]
    pub state: ElementState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<PageEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

impl Action for WaitFor {
    const NAME: &'static str = "wait_for";

    fn timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        let given = usize::from(self.selector.is_some())
            + usize::from(self.event.is_some())
            + usize::from(self.delay_ms.is_some());
        if given != 1 {
            return Err(invalid_input(
                field,
                "wait_for needs exactly one of selector, event (navigation, network_idle) or delay_ms",
            ));
        }
        if let Some(delay) = self.delay_ms {
            check_range(&format!("{field}.delay_ms"), delay, 0, MAX_DELAY_MS)?;
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
            return page.wait_element(selector, self.state, step.deadline).await;
        }
        if let Some(delay) = self.delay_ms {
            return page
                .sleep(Duration::from_millis(u64::from(delay)), step.deadline)
                .await;
        }
        match self.event {
            Some(PageEvent::Navigation) => {
                page.wait_navigation_since(step.previous_sequence, step.deadline)
                    .await
            }
            Some(PageEvent::NetworkIdle) => page.wait_network_idle(step.deadline).await,
            None => Ok(()),
        }
    }
}
