//! `select`: choose the options of a `<select>` by value, as a user would (the page
//! gets `input` and `change` events).

use serde::{Deserialize, Serialize};

use super::{
    Action, ElementState, StepContext, StepOutput, StepPage, check_selector, find_element,
    script_error,
};
use crate::error::CodedError;
use crate::spec::invalid_input;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Select {
    pub selector: String,
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

impl Action for Select {
    const NAME: &'static str = "select";

    fn timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        check_selector(&format!("{field}.selector"), &self.selector)?;
        if self.values.len() > 100 {
            return Err(invalid_input(
                &format!("{field}.values"),
                "at most 100 values",
            ));
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
        let answer = page
            .evaluate(&format!(
                "(() => {{ const element = {selector}; \
                 if (!element || element.tagName !== 'SELECT') return {{error: 'the element is not a <select>'}}; \
                 const wanted = {values}; const chosen = []; \
                 for (const option of element.options) {{ option.selected = wanted.includes(option.value); if (option.selected) chosen.push(option.value); }} \
                 element.dispatchEvent(new Event('input', {{bubbles: true}})); element.dispatchEvent(new Event('change', {{bubbles: true}})); \
                 const missing = wanted.filter(value => !chosen.includes(value)); \
                 return missing.length ? {{error: 'no option with value ' + JSON.stringify(missing[0])}} : {{chosen}}; }})()",
                selector = find_element(&self.selector),
                values = serde_json::to_string(&self.values).unwrap_or_else(|_| "[]".into()),
            ))
            .await?;
        script_error(&answer)
    }
}
