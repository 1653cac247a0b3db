//! The browse input of `content`, `scrape` and `script` tasks: a starting URL, the page
//! options that hold for the whole task, the steps and the final extractions, parsed one
//! step at a time so an error names its step.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    CookieSpec, Extraction, MAX_STEPS, Step, check_cookies, check_headers, check_range,
    check_selector, check_user_agent,
};
use crate::error::{CodedError, ErrorCode};
use crate::spec::{MAX_DELAY_MS, TargetUrl, Viewport, WaitUntil, invalid_input};

/// Resource types that may be blocked to save time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockableResource {
    Image,
    Font,
    Media,
    Stylesheet,
}

/// Options that hold for the whole task, set before the first page loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BrowseInput {
    /// Where to start (required for `content` and `scrape`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<TargetUrl>,
    #[serde(default)]
    pub wait_until: WaitUntil,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_selector: Option<String>,
    #[serde(default)]
    pub delay_ms: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// `scrape`: what to take from the page after the steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extract: Vec<Extraction>,
    #[serde(default)]
    pub viewport: Viewport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// e.g. `de-DE`: `navigator.language`, `Accept-Language` and formatting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// An IANA zone such as `Europe/Berlin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<CookieSpec>,
    /// Put the cookies and the current origin's localStorage into the result.
    #[serde(default)]
    pub storage_state: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_resources: Vec<BlockableResource>,
    /// URL patterns (`*` wildcards) whose requests are failed, e.g. `*://ads.example/*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_urls: Vec<String>,
    /// Store the final HTML as an artifact (always on for `content`).
    #[serde(default)]
    pub save_html: bool,
    /// Values typed where a `type` step's text says `{{name}}`, and masked back to
    /// `{{name}}` in the result, the logs and the progress (a replayed agent's password).
    /// Without secrets, a step's text is typed as written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

impl BrowseInput {
    /// Validates the input; `needs_url`/`needs_steps`/`needs_extract` per kind.
    pub fn validate(
        &self,
        needs_url: bool,
        needs_steps: bool,
        needs_extract: bool,
    ) -> Result<(), CodedError> {
        if needs_url && self.url.is_none() {
            return Err(invalid_input("input.url", "is required"));
        }
        if needs_steps && self.steps.is_empty() && self.url.is_none() {
            return Err(invalid_input("input.steps", "must list at least one step"));
        }
        if needs_extract && self.extract.is_empty() {
            return Err(invalid_input(
                "input.extract",
                "must list at least one extraction",
            ));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(invalid_input(
                "input.steps",
                &format!("at most {MAX_STEPS} steps"),
            ));
        }
        check_range("input.delay_ms", self.delay_ms, 0, MAX_DELAY_MS)?;
        if let Some(selector) = &self.wait_for_selector {
            check_selector("input.wait_for_selector", selector)?;
        }
        self.viewport.validate("input.viewport")?;
        if let Some(user_agent) = &self.user_agent {
            check_user_agent("input.user_agent", user_agent)?;
        }
        if let Some(locale) = &self.locale {
            let well_formed = !locale.is_empty()
                && locale.len() <= 35
                && locale.chars().all(|character| {
                    character.is_ascii_alphanumeric() || character == '-' || character == '_'
                });
            if !well_formed {
                return Err(invalid_input(
                    "input.locale",
                    "must be a language tag such as \"de-DE\"",
                ));
            }
        }
        if let Some(timezone) = &self.timezone {
            let well_formed = !timezone.is_empty()
                && timezone.len() <= 64
                && timezone.chars().all(|character| {
                    character.is_ascii_alphanumeric() || matches!(character, '/' | '_' | '-' | '+')
                });
            if !well_formed {
                return Err(invalid_input(
                    "input.timezone",
                    "must be an IANA zone such as \"Europe/Berlin\"",
                ));
            }
        }
        check_headers("input.extra_headers", &self.extra_headers)?;
        check_cookies("input.cookies", &self.cookies)?;
        if self
            .cookies
            .iter()
            .any(|cookie| cookie.url.is_none() && cookie.domain.is_none())
            && self.url.is_none()
        {
            return Err(invalid_input(
                "input.cookies",
                "a cookie needs a url or a domain when the task has no url",
            ));
        }
        if self.block_urls.len() > 100 {
            return Err(invalid_input("input.block_urls", "at most 100 patterns"));
        }
        for (index, pattern) in self.block_urls.iter().enumerate() {
            if pattern.trim().is_empty() || pattern.len() > 1024 {
                return Err(invalid_input(
                    &format!("input.block_urls[{index}]"),
                    "must be a non-empty URL pattern of at most 1024 characters",
                ));
            }
        }
        crate::agent::check_secrets(&self.secrets)?;
        for (index, step) in self.steps.iter().enumerate() {
            step.validate(&format!("input.steps[{index}]"))?;
            if !self.secrets.is_empty()
                && let Err(problem) = step.with_secrets(&self.secrets)
            {
                return Err(invalid_input(
                    &format!("input.steps[{index}].text"),
                    &problem,
                ));
            }
        }
        for (index, extraction) in self.extract.iter().enumerate() {
            super::Action::validate(extraction, &format!("input.extract[{index}]"))?;
        }
        Ok(())
    }

    /// Every URL the input names, for the network policy's check at submission.
    pub fn urls(&self) -> Vec<&TargetUrl> {
        let mut urls: Vec<&TargetUrl> = self.url.iter().collect();
        urls.extend(self.cookies.iter().filter_map(|cookie| cookie.url.as_ref()));
        for step in &self.steps {
            urls.extend(step.urls());
        }
        urls
    }
}

/// Parses the `steps` list one step at a time, so an error names its step.
pub fn parse_browse_input(input: &serde_json::Value) -> Result<BrowseInput, CodedError> {
    let Some(object) = input.as_object() else {
        return Err(invalid_input("input", "must be a JSON object"));
    };
    let mut rest = object.clone();
    let steps = match rest.remove("steps") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(raw_steps)) => {
            if raw_steps.len() > MAX_STEPS {
                return Err(invalid_input(
                    "input.steps",
                    &format!("at most {MAX_STEPS} steps"),
                ));
            }
            raw_steps
                .iter()
                .enumerate()
                .map(|(index, raw)| parse_step(index, raw))
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(_) => return Err(invalid_input("input.steps", "must be a list of steps")),
    };
    let mut parsed: BrowseInput = crate::spec::parse_input(&serde_json::Value::Object(rest))?;
    parsed.steps = steps;
    Ok(parsed)
}

fn parse_step(index: usize, raw: &serde_json::Value) -> Result<Step, CodedError> {
    let field = format!("input.steps[{index}]");
    let Some(object) = raw.as_object() else {
        return Err(invalid_input(&field, "must be an object with an action"));
    };
    match object.get("action") {
        Some(serde_json::Value::String(_)) => {}
        _ => {
            return Err(invalid_input(
                &format!("{field}.action"),
                &format!("is required ({})", Step::ACTIONS.join(", ")),
            ));
        }
    }
    // URLs first, on their own, so their precise codes survive.
    if let Some(serde_json::Value::String(url)) = object.get("url") {
        TargetUrl::parse(url).map_err(|error| {
            CodedError::new(error.code, format!("{field}.url: {}", error.message))
        })?;
    }
    serde_path_to_error::deserialize(raw).map_err(|error| {
        let path = error.path().to_string();
        let at = if path == "." {
            field.clone()
        } else {
            format!("{field}.{path}")
        };
        CodedError::new(
            ErrorCode::InvalidInput,
            format!("{at}: {}", error.into_inner()),
        )
    })
}
