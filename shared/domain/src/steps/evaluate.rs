//! `evaluate`: a JavaScript expression (a promise is awaited) whose JSON value goes into
//! the result under `name`.

use serde::{Deserialize, Serialize};

use super::{
    Action, MAX_SCRIPT_LENGTH, StepContext, StepOutput, StepPage, check_length, check_name,
};
use crate::error::CodedError;
use crate::spec::invalid_input;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluate {
    pub expression: String,
    /// The key in the result's `data` (default `evaluate-<step>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

impl Action for Evaluate {
    const NAME: &'static str = "evaluate";

    fn timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        if self.expression.trim().is_empty() {
            return Err(invalid_input(
                &format!("{field}.expression"),
                "must not be empty",
            ));
        }
        check_length(
            &format!("{field}.expression"),
            &self.expression,
            MAX_SCRIPT_LENGTH,
        )?;
        check_name(&format!("{field}.name"), self.name.as_deref())
    }

    async fn run<P: StepPage>(
        &self,
        page: &P,
        step: &StepContext,
        out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        let value = page
            .evaluate_until(
                &format!("(async () => ({}))()", self.expression),
                step.deadline,
            )
            .await?;
        let key = self
            .name
            .clone()
            .unwrap_or_else(|| format!("evaluate-{}", step.index));
        out.data.insert(key, value);
        Ok(())
    }
}
