//! The step language: what `script` tasks run, and what `content` and `scrape` tasks are
//! shorthands for.
//!
//! A browse input is a starting URL (optional for `script`), page options that hold for
//! the whole task (viewport, user agent, locale, timezone, headers, cookies, blocked
//! resources) and a list of steps, each tagged by `action`. Steps are validated one by
//! one, so an error names the step: `input.steps[3].selector: must not be empty`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::spec::{
    ImageFormat, MAX_DELAY_MS, MAX_SELECTOR_LENGTH, PaperFormat, TargetUrl, Viewport, WaitUntil,
    check_range, invalid_input,
};
use crate::error::{CodedError, ErrorCode};

/// The most steps one task may run.
pub const MAX_STEPS: usize = 200;
/// A step's own timeout when it sets none (the task's deadline still applies).
pub const DEFAULT_STEP_TIMEOUT_MS: u32 = 10_000;
pub const MAX_STEP_TIMEOUT_MS: u32 = 600_000;
pub const MAX_TEXT_LENGTH: usize = 100_000;
pub const MAX_SCRIPT_LENGTH: usize = 100_000;
pub const MAX_HEADERS: usize = 64;
pub const MAX_COOKIES: usize = 200;
pub const MAX_NAME_LENGTH: usize = 100;

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

/// A cookie to set before the page loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieSpec {
    pub name: String,
    pub value: String,
    /// The cookie's URL; defaults to the task's starting URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<TargetUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub secure: bool,
    #[serde(default)]
    pub http_only: bool,
}

/// Resource types that may be blocked to save time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockableResource {
    Image,
    Font,
    Media,
    Stylesheet,
}

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Open a URL and wait for a load milestone.
    Goto {
        url: TargetUrl,
        #[serde(default)]
        wait_until: WaitUntil,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u32>,
    },
    /// Click the first visible element matching `selector`.
    Click {
        selector: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u32>,
    },
    /// Focus the element and type `text` into it.
    Type {
        selector: String,
        text: String,
        /// Pause between keys, for pages that react to each key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u32>,
        /// Empty the field first.
        #[serde(default)]
        clear: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u32>,
    },
    /// Press a key (`Enter`, `Tab`, `ArrowDown`, a character), in `selector` if given.
    Press {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selector: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u32>,
    },
    /// Choose options of a `<select>` by value.
    Select {
        selector: String,
        values: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u32>,
    },
    /// Move the mouse over an element.
    Hover {
        selector: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u32>,
    },
    /// Scroll an element into view, or the page by `x`/`y` pixels.
    Scroll {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selector: Option<String>,
        #[serde(default)]
        x: i32,
        #[serde(default)]
        y: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u32>,
    },
    /// Wait for exactly one of: an element's state, a page event, a fixed delay.
    WaitFor {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selector: Option<String>,
        #[serde(default)]
        state: ElementState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<PageEvent>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u32>,
    },
    /// Capture the viewport, the full page, or one element (`selector`).
    Screenshot {
        /// File name without extension (default `screenshot-<step>`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selector: Option<String>,
        #[serde(default)]
        full_page: bool,
        #[serde(default, rename = "type")]
        image_type: ImageFormat,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quality: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u32>,
    },
    /// Print the page to PDF.
    Pdf {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default)]
        format: PaperFormat,
        #[serde(default)]
        landscape: bool,
        #[serde(default = "default_true")]
        print_background: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u32>,
    },
    /// Take data from the page into the result.
    Extract(Extraction),
    /// Evaluate a JavaScript expression (a promise is awaited); its JSON value goes into
    /// the result under `name`.
    Evaluate {
        expression: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u32>,
    },
    SetViewport {
        viewport: Viewport,
    },
    SetUserAgent {
        user_agent: String,
    },
    SetExtraHeaders {
        headers: BTreeMap<String, String>,
    },
    SetCookies {
        cookies: Vec<CookieSpec>,
    },
}

fn default_true() -> bool {
    true
}

impl Step {
    pub fn action(&self) -> &'static str {
        match self {
            Self::Goto { .. } => "goto",
            Self::Click { .. } => "click",
            Self::Type { .. } => "type",
            Self::Press { .. } => "press",
            Self::Select { .. } => "select",
            Self::Hover { .. } => "hover",
            Self::Scroll { .. } => "scroll",
            Self::WaitFor { .. } => "wait_for",
            Self::Screenshot { .. } => "screenshot",
            Self::Pdf { .. } => "pdf",
            Self::Extract(_) => "extract",
            Self::Evaluate { .. } => "evaluate",
            Self::SetViewport { .. } => "set_viewport",
            Self::SetUserAgent { .. } => "set_user_agent",
            Self::SetExtraHeaders { .. } => "set_extra_headers",
            Self::SetCookies { .. } => "set_cookies",
        }
    }

    /// The step's own timeout in milliseconds.
    pub fn timeout_ms(&self) -> u32 {
        let explicit = match self {
            Self::Goto { timeout_ms, .. }
            | Self::Click { timeout_ms, .. }
            | Self::Type { timeout_ms, .. }
            | Self::Press { timeout_ms, .. }
            | Self::Select { timeout_ms, .. }
            | Self::Hover { timeout_ms, .. }
            | Self::Scroll { timeout_ms, .. }
            | Self::WaitFor { timeout_ms, .. }
            | Self::Screenshot { timeout_ms, .. }
            | Self::Pdf { timeout_ms, .. }
            | Self::Extract(Extraction { timeout_ms, .. })
            | Self::Evaluate { timeout_ms, .. } => *timeout_ms,
            Self::SetViewport { .. }
            | Self::SetUserAgent { .. }
            | Self::SetExtraHeaders { .. }
            | Self::SetCookies { .. } => None,
        };
        explicit.unwrap_or(DEFAULT_STEP_TIMEOUT_MS)
    }

    /// Every URL the step names (checked against the network policy at submission).
    pub fn urls(&self) -> Vec<&TargetUrl> {
        match self {
            Self::Goto { url, .. } => vec![url],
            Self::SetCookies { cookies } => cookies.iter().filter_map(|c| c.url.as_ref()).collect(),
            _ => Vec::new(),
        }
    }

    fn validate(&self, field: &str) -> Result<(), CodedError> {
        let timeout_field = format!("{field}.timeout_ms");
        check_range(&timeout_field, self.timeout_ms(), 1, MAX_STEP_TIMEOUT_MS)?;
        let selector = |name: &str, value: &str| check_selector(&format!("{field}.{name}"), value);
        match self {
            Self::Goto { .. } => Ok(()),
            Self::Click { selector: s, .. } | Self::Hover { selector: s, .. } => {
                selector("selector", s)
            }
            Self::Type {
                selector: s,
                text,
                delay_ms,
                ..
            } => {
                selector("selector", s)?;
                check_length(&format!("{field}.text"), text, MAX_TEXT_LENGTH)?;
                if let Some(delay) = delay_ms {
                    check_range(&format!("{field}.delay_ms"), *delay, 0, 1_000)?;
                }
                Ok(())
            }
            Self::Press {
                key, selector: s, ..
            } => {
                if key.is_empty() || key.len() > 32 {
                    return Err(invalid_input(
                        &format!("{field}.key"),
                        "must be a key name such as \"Enter\" or one character",
                    ));
                }
                s.as_deref().map_or(Ok(()), |s| selector("selector", s))
            }
            Self::Select {
                selector: s,
                values,
                ..
            } => {
                selector("selector", s)?;
                if values.len() > 100 {
                    return Err(invalid_input(
                        &format!("{field}.values"),
                        "at most 100 values",
                    ));
                }
                Ok(())
            }
            Self::Scroll { selector: s, .. } => {
                s.as_deref().map_or(Ok(()), |s| selector("selector", s))
            }
            Self::WaitFor {
                selector: s,
                event,
                delay_ms,
                ..
            } => {
                let given = usize::from(s.is_some())
                    + usize::from(event.is_some())
                    + usize::from(delay_ms.is_some());
                if given != 1 {
                    return Err(invalid_input(
                        field,
                        "wait_for needs exactly one of selector, event (navigation, network_idle) or delay_ms",
                    ));
                }
                if let Some(delay) = delay_ms {
                    check_range(&format!("{field}.delay_ms"), *delay, 0, MAX_DELAY_MS)?;
                }
                s.as_deref().map_or(Ok(()), |s| selector("selector", s))
            }
            Self::Screenshot {
                name,
                selector: s,
                full_page,
                image_type,
                quality,
                ..
            } => {
                check_name(&format!("{field}.name"), name.as_deref())?;
                if let Some(s) = s {
                    selector("selector", s)?;
                    if *full_page {
                        return Err(invalid_input(
                            &format!("{field}.full_page"),
                            "an element screenshot cannot also be full-page",
                        ));
                    }
                }
                if let Some(quality) = quality {
                    if *image_type == ImageFormat::Png {
                        return Err(invalid_input(
                            &format!("{field}.quality"),
                            "applies to jpeg and webp only",
                        ));
                    }
                    check_range(&format!("{field}.quality"), u32::from(*quality), 0, 100)?;
                }
                Ok(())
            }
            Self::Pdf { name, .. } => check_name(&format!("{field}.name"), name.as_deref()),
            Self::Extract(extraction) => extraction.validate(field),
            Self::Evaluate {
                expression, name, ..
            } => {
                if expression.trim().is_empty() {
                    return Err(invalid_input(
                        &format!("{field}.expression"),
                        "must not be empty",
                    ));
                }
                check_length(
                    &format!("{field}.expression"),
                    expression,
                    MAX_SCRIPT_LENGTH,
                )?;
                check_name(&format!("{field}.name"), name.as_deref())
            }
            Self::SetViewport { viewport } => viewport.validate(&format!("{field}.viewport")),
            Self::SetUserAgent { user_agent } => {
                check_user_agent(&format!("{field}.user_agent"), user_agent)
            }
            Self::SetExtraHeaders { headers } => {
                check_headers(&format!("{field}.headers"), headers)
            }
            Self::SetCookies { cookies } => check_cookies(&format!("{field}.cookies"), cookies),
        }
    }
}

impl Extraction {
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
        for (index, step) in self.steps.iter().enumerate() {
            step.validate(&format!("input.steps[{index}]"))?;
        }
        for (index, extraction) in self.extract.iter().enumerate() {
            extraction.validate(&format!("input.extract[{index}]"))?;
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
    let mut parsed: BrowseInput = super::spec::parse_input(&serde_json::Value::Object(rest))?;
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
                "is required (goto, click, type, press, select, hover, scroll, wait_for, screenshot, pdf, extract, evaluate, set_viewport, set_user_agent, set_extra_headers, set_cookies)",
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

fn check_selector(field: &str, selector: &str) -> Result<(), CodedError> {
    if selector.trim().is_empty() || selector.len() > MAX_SELECTOR_LENGTH {
        return Err(invalid_input(
            field,
            &format!(
                "must be a non-empty CSS selector of at most {MAX_SELECTOR_LENGTH} characters"
            ),
        ));
    }
    Ok(())
}

fn check_length(field: &str, text: &str, max: usize) -> Result<(), CodedError> {
    if text.len() > max {
        return Err(invalid_input(field, &format!("at most {max} characters")));
    }
    Ok(())
}

fn check_name(field: &str, name: Option<&str>) -> Result<(), CodedError> {
    let Some(name) = name else { return Ok(()) };
    let well_formed = !name.is_empty()
        && name.len() <= MAX_NAME_LENGTH
        && name.chars().all(|character| {
            character.is_ascii_alphanumeric() || matches!(character, '_' | '-' | '.')
        });
    if well_formed {
        Ok(())
    } else {
        Err(invalid_input(
            field,
            &format!("must be 1-{MAX_NAME_LENGTH} letters, digits, '_', '-' or '.'"),
        ))
    }
}

fn check_user_agent(field: &str, user_agent: &str) -> Result<(), CodedError> {
    if user_agent.trim().is_empty()
        || user_agent.len() > 1024
        || user_agent.chars().any(char::is_control)
    {
        return Err(invalid_input(field, "must be 1-1024 printable characters"));
    }
    Ok(())
}

fn check_headers(field: &str, headers: &BTreeMap<String, String>) -> Result<(), CodedError> {
    if headers.len() > MAX_HEADERS {
        return Err(invalid_input(
            field,
            &format!("at most {MAX_HEADERS} headers"),
        ));
    }
    for (name, value) in headers {
        let name_ok = !name.is_empty()
            && name.len() <= 256
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte));
        if !name_ok {
            return Err(invalid_input(
                &format!("{field}.{name}"),
                "is not a valid header name",
            ));
        }
        if value.len() > 8192
            || value
                .chars()
                .any(|character| character == '\r' || character == '\n' || character == '\0')
        {
            return Err(invalid_input(
                &format!("{field}.{name}"),
                "is not a valid header value",
            ));
        }
    }
    Ok(())
}

fn check_cookies(field: &str, cookies: &[CookieSpec]) -> Result<(), CodedError> {
    if cookies.len() > MAX_COOKIES {
        return Err(invalid_input(
            field,
            &format!("at most {MAX_COOKIES} cookies"),
        ));
    }
    for (index, cookie) in cookies.iter().enumerate() {
        let here = format!("{field}[{index}]");
        if cookie.name.is_empty()
            || cookie.name.len() > 256
            || cookie
                .name
                .chars()
                .any(|c| c.is_control() || c == ';' || c == '=' || c.is_whitespace())
        {
            return Err(invalid_input(
                &format!("{here}.name"),
                "is not a valid cookie name",
            ));
        }
        if cookie.value.len() > 4096 || cookie.value.chars().any(|c| c.is_control() || c == ';') {
            return Err(invalid_input(
                &format!("{here}.value"),
                "is not a valid cookie value",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error_of(input: serde_json::Value) -> CodedError {
        parse_browse_input(&input)
            .and_then(|parsed| parsed.validate(false, true, false).map(|()| parsed))
            .expect_err("must be refused")
    }

    #[test]
    fn a_login_script_parses() {
        let input = parse_browse_input(&json!({
            "url": "https://a.test/login",
            "steps": [
                {"action": "type", "selector": "#user", "text": "ada", "delay_ms": 5},
                {"action": "type", "selector": "#password", "text": "secret"},
                {"action": "click", "selector": "button[type=submit]"},
                {"action": "wait_for", "event": "navigation"},
                {"action": "extract", "name": "greeting", "selector": "h1"},
                {"action": "screenshot", "selector": "#card"}
            ]
        }))
        .expect("parses");
        input.validate(false, true, false).expect("valid");
        assert_eq!(input.steps.len(), 6);
        assert_eq!(input.steps[2].action(), "click");
        let again =
            parse_browse_input(&serde_json::to_value(&input).expect("json")).expect("round trip");
        assert_eq!(again, input);
    }

    #[test]
    fn errors_name_the_step_and_field() {
        let error = error_of(json!({"steps": [
            {"action": "goto", "url": "https://a.test"},
            {"action": "click", "selector": " "}
        ]}));
        assert_eq!(error.code, ErrorCode::InvalidInput);
        assert!(
            error.message.starts_with("input.steps[1].selector"),
            "{}",
            error.message
        );

        let error = error_of(json!({"steps": [{"action": "fly"}]}));
        assert!(
            error.message.starts_with("input.steps[0]"),
            "{}",
            error.message
        );
        assert!(error.message.contains("fly"), "{}", error.message);

        let error = error_of(json!({"steps": [{"action": "click"}]}));
        assert!(error.message.contains("selector"), "{}", error.message);

        let error = error_of(json!({"steps": [{"action": "click", "selector": "a", "colour": 1}]}));
        assert!(error.message.contains("colour"), "{}", error.message);

        let error =
            error_of(json!({"steps": [{"action": "wait_for", "selector": "a", "delay_ms": 5}]}));
        assert!(
            error.message.starts_with("input.steps[0]"),
            "{}",
            error.message
        );

        let error = error_of(json!({"steps": [{"action": "goto", "url": "file:///etc/passwd"}]}));
        assert_eq!(error.code, ErrorCode::UrlSchemeNotAllowed);
        assert!(
            error.message.starts_with("input.steps[0].url"),
            "{}",
            error.message
        );

        let error = error_of(json!({"steps": "click"}));
        assert!(
            error.message.starts_with("input.steps"),
            "{}",
            error.message
        );

        let error = error_of(json!({"steps": []}));
        assert!(
            error.message.starts_with("input.steps"),
            "{}",
            error.message
        );
    }

    #[test]
    fn extractions_need_a_consistent_attribute() {
        let error = error_of(json!({"url": "https://a.test", "steps": [
            {"action": "extract", "name": "links", "selector": "a", "what": "attribute"}
        ]}));
        assert!(
            error.message.starts_with("input.steps[0].attribute"),
            "{}",
            error.message
        );
        let parsed = parse_browse_input(&json!({"url": "https://a.test", "extract": [
            {"name": "items", "selector": "li", "fields": {"name": ".name", "href": {"selector": "a", "what": "attribute", "attribute": "href"}}}
        ]}))
        .expect("parses");
        parsed.validate(true, false, true).expect("valid");
    }

    #[test]
    fn headers_and_cookies_are_checked() {
        let error = error_of(json!({"url": "https://a.test", "extra_headers": {"bad name": "x"}}));
        assert!(
            error.message.starts_with("input.extra_headers"),
            "{}",
            error.message
        );
        let error = error_of(json!({"url": "https://a.test", "extra_headers": {"x-a": "a\r\nb"}}));
        assert!(
            error.message.starts_with("input.extra_headers"),
            "{}",
            error.message
        );
        let error =
            error_of(json!({"url": "https://a.test", "cookies": [{"name": "a;b", "value": "1"}]}));
        assert!(
            error.message.starts_with("input.cookies[0].name"),
            "{}",
            error.message
        );
    }
}
