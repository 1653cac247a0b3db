//! `extract`: data taken from the page into the result under `name`: text, HTML or an
//! attribute of the first match or of every match, or one record per match. Also the
//! `extract` list of a `scrape` task, run after its steps.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    Action, DEFAULT_STEP_TIMEOUT_MS, StepContext, StepOutput, StepPage, check_name, check_selector,
    deadline_after, script_error,
};
use crate::error::{CodedError, ErrorCode};
use crate::spec::invalid_input;

/// What to take from an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExtractWhat {
    /// Its visible text (`innerText`), trimmed.
    #[default]
    Text,
    /// Its inner HTML.
    Html,
    /// One attribute (`attribute` names it).
    Attribute,
}

/// A field of a record: a selector inside the record's element (text), or the full form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldSpec {
    Selector(String),
    Detailed(FieldDetail),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDetail {
    /// Inside the record's element; absent means the record's element itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default)]
    pub what: ExtractWhat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
}

impl FieldSpec {
    /// `(selector, what, attribute)`.
    pub fn parts(&self) -> (Option<&str>, ExtractWhat, Option<&str>) {
        match self {
            Self::Selector(selector) => (Some(selector.as_str()), ExtractWhat::Text, None),
            Self::Detailed(detail) => (
                detail.selector.as_deref(),
                detail.what,
                detail.attribute.as_deref(),
            ),
        }
    }
}

/// Data taken from the page into the task's result under `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extraction {
    /// The key in the result's `data`.
    pub name: String,
    pub selector: String,
    #[serde(default)]
    pub what: ExtractWhat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    /// Every match (a list), not only the first.
    #[serde(default)]
    pub all: bool,
    /// A list of records: one per match, each field taken inside the match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, FieldSpec>>,
    /// A missing element is `null` (or `[]`) instead of an error.
    #[serde(default)]
    pub optional: bool,
    /// How long to wait for the element (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

impl Action for Extraction {
    const NAME: &'static str = "extract";

    fn timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        check_name(&format!("{field}.name"), Some(&self.name))?;
        check_selector(&format!("{field}.selector"), &self.selector)?;
        if (self.what == ExtractWhat::Attribute) != self.attribute.is_some() {
            return Err(invalid_input(
                &format!("{field}.attribute"),
                "give attribute exactly when what is \"attribute\"",
            ));
        }
        if let Some(fields) = &self.fields {
            if fields.is_empty() || fields.len() > 100 {
                return Err(invalid_input(
                    &format!("{field}.fields"),
                    "between 1 and 100 fields",
                ));
            }
            for (name, spec) in fields {
                let here = format!("{field}.fields.{name}");
                let (selector, what, attribute) = spec.parts();
                if let Some(selector) = selector {
                    check_selector(&here, selector)?;
                }
                if (what == ExtractWhat::Attribute) != attribute.is_some() {
                    return Err(invalid_input(
                        &here,
                        "give attribute exactly when what is \"attribute\"",
                    ));
                }
            }
        }
        Ok(())
    }

    async fn run<P: StepPage>(
        &self,
        page: &P,
        step: &StepContext,
        out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        let value = self.take_until(page, step.deadline).await?;
        out.data.insert(self.name.clone(), value);
        Ok(())
    }
}

impl Extraction {
    /// Takes the data, waiting up to the extraction's own timeout for a match.
    pub async fn take<P: StepPage>(&self, page: &P) -> Result<Value, CodedError> {
        let deadline = deadline_after(
            self.timeout_ms.unwrap_or(DEFAULT_STEP_TIMEOUT_MS),
            page.task_deadline(),
        );
        self.take_until(page, deadline).await
    }

    async fn take_until<P: StepPage>(
        &self,
        page: &P,
        deadline: Instant,
    ) -> Result<Value, CodedError> {
        let fields: Option<BTreeMap<&String, Value>> = self.fields.as_ref().map(|fields| {
            fields
                .iter()
                .map(|(name, spec)| {
                    let (selector, what, attribute) = spec.parts();
                    (
                        name,
                        json!({"selector": selector, "what": what, "attribute": attribute}),
                    )
                })
                .collect()
        });
        let spec = json!({
            "selector": self.selector,
            "what": self.what,
            "attribute": self.attribute,
            "all": self.all,
            "fields": fields,
        });
        let script = format!("({EXTRACT_FUNCTION})({spec})");
        let missing = format!("no element matches {:?}", self.selector);
        loop {
            let answer = page.evaluate(&script).await?;
            script_error(&answer)?;
            let found = answer.get("found").and_then(Value::as_u64).unwrap_or(0);
            if found > 0 || self.optional {
                return Ok(answer.get("value").cloned().unwrap_or(Value::Null));
            }
            let now = Instant::now();
            if now >= deadline && now < page.task_deadline() {
                return Err(CodedError::new(
                    ErrorCode::SelectorNotFound,
                    format!("{missing} within the step's timeout"),
                ));
            }
            page.pause(deadline, &missing).await?;
        }
    }
}

/// Takes text, HTML or an attribute from the matches of a selector; records when
/// `fields` is given. Returns `{found, value}` or `{error}`.
const EXTRACT_FUNCTION: &str = r#"(spec) => {
  const take = (element, what, attribute) => {
    if (what === 'html') return element.innerHTML;
    if (what === 'attribute') return element.getAttribute(attribute);
    return (element.innerText ?? element.textContent ?? '').trim();
  };
  let matches;
  try { matches = Array.from(document.querySelectorAll(spec.selector)); }
  catch (error) { return {error: `${JSON.stringify(spec.selector)} is not a valid CSS selector`}; }
  if (spec.fields) {
    return {found: matches.length, value: matches.map(match => {
      const record = {};
      for (const [name, field] of Object.entries(spec.fields)) {
        const element = field.selector ? match.querySelector(field.selector) : match;
        record[name] = element ? take(element, field.what, field.attribute) : null;
      }
      return record;
    })};
  }
  if (spec.all) return {found: matches.length, value: matches.map(match => take(match, spec.what, spec.attribute))};
  return {found: matches.length, value: matches.length ? take(matches[0], spec.what, spec.attribute) : null};
}"#;
