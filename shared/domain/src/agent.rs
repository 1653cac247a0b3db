//! The `agent` task kind's input: a goal in plain language that a language model
//! reaches by driving the browser, under a hard budget.
//!
//! Everything is checked at submission, as for every other kind, so an error names the
//! field (`input.budget.max_tokens: must be at least 1`). Secrets (`{"password": …}`)
//! are referred to in the goal as `{{password}}`: the model only ever sees the
//! placeholder, and [`redact_input`] hides their values wherever the input is shown.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CodedError, ErrorCode};
use crate::spec::{TargetUrl, Viewport, WaitUntil, check_range, invalid_input, parse_input};
use crate::steps::{BlockableResource, BrowseInput, CookieSpec};

/// Steps an agent takes when the task sets no `max_steps`.
pub const DEFAULT_MAX_STEPS: u32 = 25;
/// The most steps one agent task may take.
pub const MAX_AGENT_STEPS: u32 = 200;
pub const MAX_GOAL_LENGTH: usize = 10_000;
pub const MAX_SECRETS: usize = 32;
pub const MAX_SECRET_LENGTH: usize = 4096;
pub const MAX_ALLOWED_DOMAINS: usize = 64;
/// The largest `output_schema`, serialized.
pub const MAX_SCHEMA_BYTES: usize = 32 * 1024;
/// What a redacted secret is shown as.
pub const REDACTED: &str = "[redacted]";

/// Whether the model is shown a screenshot of the page with the element indices drawn
/// on it, besides the text observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Vision {
    /// Text only: the cheapest.
    Off,
    /// A screenshot when the text says little (a page that is mostly canvas or images).
    #[default]
    Auto,
    /// A screenshot at every step.
    On,
}

/// Whether an agent reuses the script a succeeded run of the same goal recorded (per
/// tenant; the goal as written, with its placeholders, the start URL and the output
/// schema make the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScriptCache {
    /// Neither read nor written.
    #[default]
    Off,
    /// Replay the cached script first, if there is one, and ask the model only from the
    /// first step that fails (or for the output); a run that succeeds leaves its script
    /// (healed, where a step failed) as the cached one.
    Reuse,
    /// Do not replay; a run that succeeds replaces the cached script.
    Refresh,
}

/// Hard limits of one agent task; each is checked before every model call, so a task
/// never spends past a limit by more than the one call that crossed it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AgentBudget {
    /// Prompt and completion tokens, summed over every model call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// US dollars, priced by the settings' table for the model (`llm.prices`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// Milliseconds from the agent's start (the task's `timeout_ms` still applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_ms: Option<u64>,
}

/// Input of an `agent` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentInput {
    /// What to achieve, in plain language; `{{name}}` refers to a secret.
    pub goal: String,
    /// Where to start; the agent starts on a blank page without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<TargetUrl>,
    /// A JSON Schema the output must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    #[serde(default)]
    pub budget: AgentBudget,
    /// Hosts the browser may reach (a name matches itself and its subdomains; `*.` is
    /// accepted too), narrower than the network policy, for every request the page makes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_domains: Vec<String>,
    /// Values the model never sees, typed where the model writes `{{name}}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    #[serde(default)]
    pub vision: Vision,
    /// The model to ask; the settings' `llm.model` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub cache: ScriptCache,
    // The page options a `script` task takes.
    #[serde(default)]
    pub wait_until: WaitUntil,
    #[serde(default)]
    pub viewport: Viewport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<CookieSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_resources: Vec<BlockableResource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_urls: Vec<String>,
}

fn default_max_steps() -> u32 {
    DEFAULT_MAX_STEPS
}

impl AgentInput {
    pub(crate) fn parse(input: &Value) -> Result<Self, CodedError> {
        let parsed: Self = parse_input(input)?;
        parsed.validate()?;
        Ok(parsed)
    }

    /// The page options as a browse input without steps: the worker applies them as it
    /// does a script's, and they are checked by the same code.
    pub fn page_options(&self) -> BrowseInput {
        BrowseInput {
            url: self.url.clone(),
            wait_until: self.wait_until,
            viewport: self.viewport,
            user_agent: self.user_agent.clone(),
            locale: self.locale.clone(),
            timezone: self.timezone.clone(),
            extra_headers: self.extra_headers.clone(),
            cookies: self.cookies.clone(),
            block_resources: self.block_resources.clone(),
            block_urls: self.block_urls.clone(),
            ..BrowseInput::default()
        }
    }

    /// The key of the script cache: a SHA-256 (hex) of the goal as written, the start
    /// URL and the output schema. Secrets' values are not part of it.
    pub fn cache_key(&self) -> String {
        use sha2::{Digest, Sha256};
        let identity = serde_json::json!({
            "goal": self.goal,
            "url": self.url.as_ref().map(TargetUrl::as_str),
            "output_schema": self.output_schema,
        });
        Sha256::digest(identity.to_string().as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// Whether `host` is one the task allows (every host when `allowed_domains` is empty).
    pub fn allows_host(&self, host: &str) -> bool {
        domain_allowed(&self.allowed_domains, host)
    }

    fn validate(&self) -> Result<(), CodedError> {
        if self.goal.trim().is_empty() {
            return Err(invalid_input("input.goal", "must not be empty"));
        }
        if self.goal.len() > MAX_GOAL_LENGTH {
            return Err(invalid_input(
                "input.goal",
                &format!("at most {MAX_GOAL_LENGTH} characters"),
            ));
        }
        check_range("input.max_steps", self.max_steps, 1, MAX_AGENT_STEPS)?;
        self.validate_budget()?;
        if let Some(schema) = &self.output_schema {
            check_output_schema(schema)?;
        }
        self.validate_domains()?;
        self.validate_secrets()?;
        if let Some(model) = &self.model
            && (model.trim().is_empty() || model.len() > 200 || model.chars().any(char::is_control))
        {
            return Err(invalid_input(
                "input.model",
                "must be a model name of 1-200 printable characters",
            ));
        }
        self.page_options().validate(false, false, false)
    }

    fn validate_budget(&self) -> Result<(), CodedError> {
        if self.budget.max_tokens == Some(0) {
            return Err(invalid_input(
                "input.budget.max_tokens",
                "must be at least 1",
            ));
        }
        if let Some(cost) = self.budget.max_cost_usd
            && !(cost.is_finite() && cost > 0.0)
        {
            return Err(invalid_input(
                "input.budget.max_cost_usd",
                "must be a positive number of US dollars",
            ));
        }
        if self.budget.max_duration_ms == Some(0) {
            return Err(invalid_input(
                "input.budget.max_duration_ms",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    fn validate_domains(&self) -> Result<(), CodedError> {
        if self.allowed_domains.len() > MAX_ALLOWED_DOMAINS {
            return Err(invalid_input(
                "input.allowed_domains",
                &format!("at most {MAX_ALLOWED_DOMAINS} domains"),
            ));
        }
        for (index, domain) in self.allowed_domains.iter().enumerate() {
            let name = domain.strip_prefix("*.").unwrap_or(domain);
            let well_formed = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .chars()
                            .all(|character| character.is_ascii_alphanumeric() || character == '-')
                });
            if !well_formed {
                return Err(invalid_input(
                    &format!("input.allowed_domains[{index}]"),
                    "must be a host name such as \"example.com\" or \"*.example.com\"",
                ));
            }
        }
        if let Some(url) = &self.url
            && let Some(host) = url.as_url().host_str()
            && !self.allows_host(host)
        {
            return Err(CodedError::new(
                ErrorCode::UrlNotAllowed,
                format!("input.url: host {host} is not in input.allowed_domains"),
            ));
        }
        Ok(())
    }

    fn validate_secrets(&self) -> Result<(), CodedError> {
        check_secrets(&self.secrets)
    }
}

/// `input.secrets`: at most [`MAX_SECRETS`], each named by 1-64 letters, digits or `_`
/// and 1 to [`MAX_SECRET_LENGTH`] characters long.
pub(crate) fn check_secrets(secrets: &BTreeMap<String, String>) -> Result<(), CodedError> {
    if secrets.len() > MAX_SECRETS {
        return Err(invalid_input(
            "input.secrets",
            &format!("at most {MAX_SECRETS} secrets"),
        ));
    }
    for (name, value) in secrets {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|character| character.is_ascii_alphanumeric() || character == '_');
        if !name_ok {
            return Err(invalid_input(
                &format!("input.secrets.{name}"),
                "a secret's name must be 1-64 letters, digits or '_'",
            ));
        }
        if value.is_empty() || value.len() > MAX_SECRET_LENGTH {
            return Err(invalid_input(
                &format!("input.secrets.{name}"),
                &format!("must be 1-{MAX_SECRET_LENGTH} characters"),
            ));
        }
    }
    Ok(())
}

/// A JSON Schema an agent's output must satisfy: a valid schema of a known draft whose
/// references all resolve within itself (nothing is fetched).
fn check_output_schema(schema: &Value) -> Result<(), CodedError> {
    let size = serde_json::to_vec(schema)
        .map(|bytes| bytes.len())
        .unwrap_or(0);
    if size > MAX_SCHEMA_BYTES {
        return Err(invalid_input(
            "input.output_schema",
            &format!("at most {MAX_SCHEMA_BYTES} bytes"),
        ));
    }
    if !schema.is_object() && !schema.is_boolean() {
        return Err(invalid_input(
            "input.output_schema",
            "must be a JSON Schema (an object)",
        ));
    }
    if let Err(error) = jsonschema::meta::validate(schema) {
        return Err(invalid_input(
            "input.output_schema",
            &format!("is not a valid JSON Schema: {error}"),
        ));
    }
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|error| invalid_input("input.output_schema", &format!("{error}")))
}

/// Checks `output` against `schema`: each problem as `path: message`, at most ten.
pub fn output_problems(schema: &Value, output: &Value) -> Vec<String> {
    let validator = match jsonschema::validator_for(schema) {
        Ok(validator) => validator,
        Err(error) => return vec![format!("the output schema does not compile: {error}")],
    };
    validator
        .iter_errors(output)
        .take(10)
        .map(|error| {
            let path = error.instance_path().to_string();
            let path = if path.is_empty() {
                "/".to_owned()
            } else {
                path
            };
            format!("{path}: {error}")
        })
        .collect()
}

/// Whether `host` is in `allowed` (empty: every host). `example.com` and
/// `*.example.com` both allow `example.com` and its subdomains.
pub fn domain_allowed(allowed: &[String], host: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|domain| {
        let domain = domain
            .strip_prefix("*.")
            .unwrap_or(domain)
            .to_ascii_lowercase();
        host == domain
            || host
                .strip_suffix(domain.as_str())
                .is_some_and(|rest| rest.ends_with('.'))
    })
}

/// Hides the values of an input's secrets (an `agent` task's, or a browse task's; the
/// input is stored with them, for the worker; it is shown with their names only).
pub fn redact_input(input: &mut Value) {
    if let Some(Value::Object(secrets)) = input.get_mut("secrets") {
        for value in secrets.values_mut() {
            *value = Value::String(REDACTED.to_owned());
        }
    }
}

/// Replaces every secret value in `text` by its placeholder (`{{name}}`), longest values
/// first so that a secret containing another is replaced whole.
pub fn mask_secrets(text: &str, secrets: &BTreeMap<String, String>) -> String {
    if secrets.is_empty() {
        return text.to_owned();
    }
    let mut ordered: Vec<(&String, &String)> = secrets.iter().collect();
    ordered.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
    let mut masked = text.to_owned();
    for (name, value) in ordered {
        if masked.contains(value.as_str()) {
            masked = masked.replace(value.as_str(), &format!("{{{{{name}}}}}"));
        }
    }
    masked
}

/// [`mask_secrets`] in every string of a JSON value.
pub fn mask_secrets_in(value: &mut Value, secrets: &BTreeMap<String, String>) {
    if secrets.is_empty() {
        return;
    }
    match value {
        Value::String(text) => *text = mask_secrets(text, secrets),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| mask_secrets_in(item, secrets)),
        Value::Object(fields) => fields
            .values_mut()
            .for_each(|field| mask_secrets_in(field, secrets)),
        _ => {}
    }
}

/// Replaces `{{name}}` placeholders by the secrets' values; an unknown name is an error
/// naming it, so that the literal placeholder is never typed into a page.
pub fn fill_secrets(text: &str, secrets: &BTreeMap<String, String>) -> Result<String, String> {
    let mut filled = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        filled.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            filled.push_str(&rest[start..]);
            return Ok(filled);
        };
        let name = after[..end].trim();
        match secrets.get(name) {
            Some(value) => filled.push_str(value),
            None => return Err(format!("there is no secret named {name:?}")),
        }
        rest = &after[end + 2..];
    }
    filled.push_str(rest);
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TaskKind, TaskSpec};
    use serde_json::json;

    fn refusal(input: Value) -> CodedError {
        TaskSpec::parse(TaskKind::Agent, &input).expect_err("must be refused")
    }

    #[test]
    fn a_minimal_agent_task_gets_defaults() {
        let spec =
            TaskSpec::parse(TaskKind::Agent, &json!({"goal": "find the price"})).expect("valid");
        let TaskSpec::Agent(input) = spec else {
            panic!("wrong variant")
        };
        assert_eq!(input.max_steps, DEFAULT_MAX_STEPS);
        assert_eq!(input.vision, Vision::Auto);
        assert!(input.url.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        for (input, field) in [
            (json!({"goal": " "}), "input.goal"),
            (json!({"goal": "x", "max_steps": 0}), "input.max_steps"),
            (
                json!({"goal": "x", "budget": {"max_tokens": 0}}),
                "input.budget.max_tokens",
            ),
            (
                json!({"goal": "x", "budget": {"max_cost_usd": -1}}),
                "input.budget.max_cost_usd",
            ),
            (
                json!({"goal": "x", "budget": {"tokens": 5}}),
                "input.budget",
            ),
            (
                json!({"goal": "x", "output_schema": {"type": "nonsense"}}),
                "input.output_schema",
            ),
            (
                json!({"goal": "x", "output_schema": {"$ref": "https://example.com/schema.json"}}),
                "input.output_schema",
            ),
            (
                json!({"goal": "x", "allowed_domains": ["exa mple.com"]}),
                "input.allowed_domains[0]",
            ),
            (
                json!({"goal": "x", "secrets": {"pass word": "x"}}),
                "input.secrets.pass word",
            ),
            (
                json!({"goal": "x", "secrets": {"p": ""}}),
                "input.secrets.p",
            ),
            (json!({"goal": "x", "vision": "maybe"}), "input.vision"),
            (
                json!({"goal": "x", "viewport": {"width": 0, "height": 1}}),
                "input.viewport.width",
            ),
        ] {
            let error = refusal(input.clone());
            assert_eq!(error.code, ErrorCode::InvalidInput, "{input}");
            assert!(
                error.message.starts_with(field),
                "{input}: {}",
                error.message
            );
        }
        let error = refusal(
            json!({"goal": "x", "url": "https://other.test/", "allowed_domains": ["example.com"]}),
        );
        assert_eq!(error.code, ErrorCode::UrlNotAllowed);
    }

    #[test]
    fn domains_match_themselves_and_their_subdomains() {
        let allowed = vec!["example.com".to_owned(), "*.shop.test".to_owned()];
        assert!(domain_allowed(&allowed, "example.com"));
        assert!(domain_allowed(&allowed, "www.Example.com."));
        assert!(domain_allowed(&allowed, "shop.test"));
        assert!(domain_allowed(&allowed, "a.b.shop.test"));
        assert!(!domain_allowed(&allowed, "notexample.com"));
        assert!(!domain_allowed(&allowed, "example.com.evil.test"));
        assert!(domain_allowed(&[], "anything.test"));
    }

    #[test]
    fn secrets_are_masked_filled_and_redacted() {
        let secrets = BTreeMap::from([
            ("password".to_owned(), "hunter2".to_owned()),
            ("pin".to_owned(), "hunter".to_owned()),
        ]);
        assert_eq!(
            mask_secrets("typed hunter2 and hunter", &secrets),
            "typed {{password}} and {{pin}}"
        );
        assert_eq!(
            fill_secrets("{{password}}!{{ pin }}", &secrets).expect("known"),
            "hunter2!hunter"
        );
        assert!(fill_secrets("{{token}}", &secrets).is_err());
        assert_eq!(
            fill_secrets("no {{ end", &secrets).expect("kept"),
            "no {{ end"
        );
        let mut input = json!({"goal": "log in", "secrets": {"password": "hunter2"}});
        redact_input(&mut input);
        assert_eq!(input["secrets"]["password"], REDACTED);
        let mut nested = json!({"a": ["x hunter2", {"b": "hunter2"}]});
        mask_secrets_in(&mut nested, &secrets);
        assert_eq!(
            nested,
            json!({"a": ["x {{password}}", {"b": "{{password}}"}]})
        );
    }

    #[test]
    fn outputs_are_checked_against_the_schema() {
        let schema = json!({"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}});
        assert!(output_problems(&schema, &json!({"total": 12.5})).is_empty());
        let problems = output_problems(&schema, &json!({"total": "12.5"}));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("/total"), "{problems:?}");
        assert!(!output_problems(&schema, &json!({})).is_empty());
    }
}
