//! What a task asks for: its kind and its validated input.
//!
//! Inputs are parsed from JSON with unknown fields refused, then range-checked, so a
//! task that reaches the queue is one a worker can run. Validation errors carry a code
//! and name the field (`input.viewport.width: must be between 1 and 8192`).

use serde::{Deserialize, Serialize};
use url::Url;

use super::agent::AgentInput;
use super::steps::{BrowseInput, parse_browse_input};
use crate::error::{CodedError, ErrorCode};

/// What kind of work a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Screenshot,
    Pdf,
    /// The page's HTML after its scripts ran.
    Content,
    /// Data taken from the page by CSS selectors, as JSON.
    Scrape,
    /// A list of steps (goto, click, type, extract, screenshot, ...).
    Script,
    /// A goal in plain language that a language model reaches by driving the browser.
    Agent,
}

impl TaskKind {
    pub const ALL: [TaskKind; 6] = [
        Self::Screenshot,
        Self::Pdf,
        Self::Content,
        Self::Scrape,
        Self::Script,
        Self::Agent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Screenshot => "screenshot",
            Self::Pdf => "pdf",
            Self::Content => "content",
            Self::Scrape => "scrape",
            Self::Script => "script",
            Self::Agent => "agent",
        }
    }

    pub fn parse(text: &str) -> Result<Self, CodedError> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|kind| kind.as_str()).collect();
                CodedError::new(
                    ErrorCode::UnknownKind,
                    format!(
                        "unknown task kind {text:?}; expected one of {}",
                        known.join(", ")
                    ),
                )
            })
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Dispatch order. Higher runs first; within a priority, first in first out.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Self::Low, Self::Normal, Self::High];

    /// The stored form: a small integer, so SQL and Redis can order by it.
    pub fn rank(self) -> i16 {
        match self {
            Self::Low => 0,
            Self::Normal => 1,
            Self::High => 2,
        }
    }

    pub fn from_rank(rank: i16) -> Self {
        match rank {
            i16::MIN..=0 => Self::Low,
            1 => Self::Normal,
            _ => Self::High,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

/// An http(s) URL a browser is asked to open.
///
/// Parsing refuses other schemes (`file:`, `chrome:`, `javascript:`, `data:`), URLs
/// without a host, and embedded credentials (they would end up in logs and events).
/// Whether the *address* may be reached is the network policy's call, made later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetUrl(Url);

/// The longest URL accepted; longer ones are almost always a mistake or an attack.
pub const MAX_URL_LENGTH: usize = 8192;

impl TargetUrl {
    pub fn parse(text: &str) -> Result<Self, CodedError> {
        if text.len() > MAX_URL_LENGTH {
            return Err(CodedError::new(
                ErrorCode::InvalidUrl,
                format!("url is longer than {MAX_URL_LENGTH} characters"),
            ));
        }
        let url = Url::parse(text.trim()).map_err(|error| {
            CodedError::new(
                ErrorCode::InvalidUrl,
                format!("url {text:?} is not a valid URL: {error}"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CodedError::new(
                ErrorCode::UrlSchemeNotAllowed,
                format!(
                    "url scheme {:?} is not allowed; use http or https",
                    url.scheme()
                ),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(CodedError::new(ErrorCode::InvalidUrl, "url has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(CodedError::new(
                ErrorCode::InvalidUrl,
                "url must not embed credentials; pass them as headers instead",
            ));
        }
        Ok(Self(url))
    }

    pub fn as_url(&self) -> &Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl TryFrom<String> for TargetUrl {
    type Error = CodedError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TargetUrl> for String {
    fn from(value: TargetUrl) -> Self {
        value.0.into()
    }
}

/// The page size the browser renders at.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
    #[serde(default = "default_scale_factor")]
    pub device_scale_factor: f64,
}

fn default_scale_factor() -> f64 {
    1.0
}

impl Default for Viewport {
    fn default() -> Self {
        Self {
            width: 1280,
            height: 800,
            device_scale_factor: 1.0,
        }
    }
}

pub const MAX_VIEWPORT_SIDE: u32 = 8192;

impl Viewport {
    pub(crate) fn validate(&self, field: &str) -> Result<(), CodedError> {
        check_range(&format!("{field}.width"), self.width, 1, MAX_VIEWPORT_SIDE)?;
        check_range(
            &format!("{field}.height"),
            self.height,
            1,
            MAX_VIEWPORT_SIDE,
        )?;
        if !(0.25..=4.0).contains(&self.device_scale_factor) {
            return Err(invalid_input(
                &format!("{field}.device_scale_factor"),
                "must be between 0.25 and 4",
            ));
        }
        Ok(())
    }
}

/// Which page-load milestone to wait for after navigating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WaitUntil {
    /// The HTML is parsed (`DOMContentLoaded`).
    DomContentLoaded,
    /// The page and its sub-resources loaded (`load`).
    #[default]
    Load,
    /// No network request for 500 ms after `load`.
    NetworkIdle,
}

/// When the page counts as ready to capture; every kind that loads a page has these fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WaitSpec {
    pub wait_until: WaitUntil,
    pub wait_for_selector: Option<String>,
    pub delay_ms: u32,
}

pub const MAX_DELAY_MS: u32 = 60_000;
pub const MAX_SELECTOR_LENGTH: usize = 1024;

impl WaitSpec {
    fn validate(&self) -> Result<(), CodedError> {
        check_range("input.delay_ms", self.delay_ms, 0, MAX_DELAY_MS)?;
        if let Some(selector) = &self.wait_for_selector
            && (selector.trim().is_empty() || selector.len() > MAX_SELECTOR_LENGTH)
        {
            return Err(invalid_input(
                "input.wait_for_selector",
                &format!(
                    "must be a non-empty CSS selector of at most {MAX_SELECTOR_LENGTH} characters"
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    #[default]
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
        }
    }
}

/// Input of a `screenshot` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScreenshotInput {
    pub url: TargetUrl,
    #[serde(default)]
    pub viewport: Viewport,
    /// Capture the whole scrollable page, not only the viewport.
    #[serde(default)]
    pub full_page: bool,
    /// Image format (`type` in Puppeteer's options).
    #[serde(default, rename = "type")]
    pub image_type: ImageFormat,
    /// 0-100, for jpeg and webp only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
    /// Which load milestone to wait for after navigating.
    #[serde(default)]
    pub wait_until: WaitUntil,
    /// A CSS selector that must match a visible element before capturing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_selector: Option<String>,
    /// An extra pause after the page is ready (animations, lazy images).
    #[serde(default)]
    pub delay_ms: u32,
}

/// Paper sizes, as Puppeteer names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PaperFormat {
    Letter,
    Legal,
    Tabloid,
    Ledger,
    A0,
    A1,
    A2,
    A3,
    #[default]
    A4,
    A5,
    A6,
}

impl PaperFormat {
    /// Width and height in inches, portrait.
    pub fn size_inches(self) -> (f64, f64) {
        match self {
            Self::Letter => (8.5, 11.0),
            Self::Legal => (8.5, 14.0),
            Self::Tabloid => (11.0, 17.0),
            Self::Ledger => (17.0, 11.0),
            Self::A0 => (33.1, 46.8),
            Self::A1 => (23.4, 33.1),
            Self::A2 => (16.54, 23.4),
            Self::A3 => (11.7, 16.54),
            Self::A4 => (8.27, 11.7),
            Self::A5 => (5.83, 8.27),
            Self::A6 => (4.13, 5.83),
        }
    }
}

/// A CSS length: a number with a unit (`px`, `in`, `cm`, `mm`), e.g. `"1cm"`; a bare number is pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CssLength {
    Pixels(f64),
    Text(String),
}

impl CssLength {
    /// The length in inches, as Chromium's print API wants it.
    pub fn to_inches(&self) -> Result<f64, String> {
        const PIXELS_PER_INCH: f64 = 96.0;
        let inches = match self {
            Self::Pixels(pixels) => pixels / PIXELS_PER_INCH,
            Self::Text(text) => {
                let text = text.trim().to_ascii_lowercase();
                let split_at = text
                    .find(|character: char| character.is_ascii_alphabetic())
                    .unwrap_or(text.len());
                let (number, unit) = text.split_at(split_at);
                let value: f64 = number
                    .trim()
                    .parse()
                    .map_err(|_| format!("{text:?} is not a CSS length like \"1cm\""))?;
                match unit {
                    "" | "px" => value / PIXELS_PER_INCH,
                    "in" => value,
                    "cm" => value / 2.54,
                    "mm" => value / 25.4,
                    other => return Err(format!("unit {other:?} is not one of px, in, cm, mm")),
                }
            }
        };
        if inches.is_finite() && (0.0..=100.0).contains(&inches) {
            Ok(inches)
        } else {
            Err("must be between 0 and 100 inches".to_owned())
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PdfMargins {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<CssLength>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub right: Option<CssLength>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottom: Option<CssLength>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<CssLength>,
}

/// Input of a `pdf` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdfInput {
    pub url: TargetUrl,
    #[serde(default)]
    pub viewport: Viewport,
    #[serde(default)]
    pub format: PaperFormat,
    /// Overrides `format`'s width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<CssLength>,
    /// Overrides `format`'s height.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<CssLength>,
    #[serde(default)]
    pub landscape: bool,
    #[serde(default)]
    pub margin: PdfMargins,
    #[serde(default = "default_true")]
    pub print_background: bool,
    #[serde(default = "default_pdf_scale")]
    pub scale: f64,
    /// e.g. `"1-3, 5"`; all pages when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_ranges: Option<String>,
    /// Which load milestone to wait for after navigating.
    #[serde(default)]
    pub wait_until: WaitUntil,
    /// A CSS selector that must match a visible element before capturing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_selector: Option<String>,
    /// An extra pause after the page is ready (animations, lazy images).
    #[serde(default)]
    pub delay_ms: u32,
}

pub(crate) fn default_true() -> bool {
    true
}

fn default_pdf_scale() -> f64 {
    1.0
}

/// Paper geometry in inches, resolved from a [`PdfInput`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperGeometry {
    pub width: f64,
    pub height: f64,
    pub margin_top: f64,
    pub margin_right: f64,
    pub margin_bottom: f64,
    pub margin_left: f64,
}

impl PdfInput {
    pub fn geometry(&self) -> Result<PaperGeometry, CodedError> {
        let (format_width, format_height) = self.format.size_inches();
        let length =
            |field: &str, value: &Option<CssLength>, default: f64| -> Result<f64, CodedError> {
                match value {
                    None => Ok(default),
                    Some(length) => length
                        .to_inches()
                        .map_err(|message| invalid_input(&format!("input.{field}"), &message)),
                }
            };
        let geometry = PaperGeometry {
            width: length("width", &self.width, format_width)?,
            height: length("height", &self.height, format_height)?,
            margin_top: length("margin.top", &self.margin.top, 0.4)?,
            margin_right: length("margin.right", &self.margin.right, 0.4)?,
            margin_bottom: length("margin.bottom", &self.margin.bottom, 0.4)?,
            margin_left: length("margin.left", &self.margin.left, 0.4)?,
        };
        if geometry.width < 1.0 || geometry.height < 1.0 {
            return Err(invalid_input(
                "input.width",
                "paper must be at least 1 inch on each side",
            ));
        }
        if geometry.margin_left + geometry.margin_right >= geometry.width
            || geometry.margin_top + geometry.margin_bottom >= geometry.height
        {
            return Err(invalid_input(
                "input.margin",
                "margins leave no room for content",
            ));
        }
        Ok(geometry)
    }
}

/// A task's validated input, one variant per kind.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskSpec {
    Screenshot(ScreenshotInput),
    Pdf(PdfInput),
    Content(BrowseInput),
    Scrape(BrowseInput),
    Script(BrowseInput),
    Agent(Box<AgentInput>),
}

impl TaskSpec {
    /// Parses and validates `input` for `kind`.
    pub fn parse(kind: TaskKind, input: &serde_json::Value) -> Result<Self, CodedError> {
        let spec = match kind {
            TaskKind::Screenshot => Self::Screenshot(parse_input(input)?),
            TaskKind::Pdf => Self::Pdf(parse_input(input)?),
            TaskKind::Content => Self::Content(parse_browse_input(input)?),
            TaskKind::Scrape => Self::Scrape(parse_browse_input(input)?),
            TaskKind::Script => Self::Script(parse_browse_input(input)?),
            TaskKind::Agent => Self::Agent(Box::new(AgentInput::parse(input)?)),
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn kind(&self) -> TaskKind {
        match self {
            Self::Screenshot(_) => TaskKind::Screenshot,
            Self::Pdf(_) => TaskKind::Pdf,
            Self::Content(_) => TaskKind::Content,
            Self::Scrape(_) => TaskKind::Scrape,
            Self::Script(_) => TaskKind::Script,
            Self::Agent(_) => TaskKind::Agent,
        }
    }

    /// The values the task types from `{{name}}` placeholders, to be masked wherever
    /// they could come back (result, logs, progress, events).
    pub fn secrets(&self) -> &std::collections::BTreeMap<String, String> {
        static NONE: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        match self {
            Self::Content(input) | Self::Scrape(input) | Self::Script(input) => &input.secrets,
            Self::Agent(input) => &input.secrets,
            Self::Screenshot(_) | Self::Pdf(_) => &NONE,
        }
    }

    /// The page the task opens first, if it names one (a script may start with `goto`).
    pub fn start_url(&self) -> Option<&TargetUrl> {
        match self {
            Self::Screenshot(input) => Some(&input.url),
            Self::Pdf(input) => Some(&input.url),
            Self::Content(input) | Self::Scrape(input) | Self::Script(input) => input.url.as_ref(),
            Self::Agent(input) => input.url.as_ref(),
        }
    }

    /// Every URL the task names (start, `goto` steps, cookie URLs), for the network
    /// policy's check at submission.
    pub fn urls(&self) -> Vec<&TargetUrl> {
        match self {
            Self::Screenshot(input) => vec![&input.url],
            Self::Pdf(input) => vec![&input.url],
            Self::Content(input) | Self::Scrape(input) | Self::Script(input) => input.urls(),
            Self::Agent(input) => input.url.iter().collect(),
        }
    }

    /// The wait condition, whatever the kind.
    pub fn wait(&self) -> WaitSpec {
        let (wait_until, wait_for_selector, delay_ms) = match self {
            Self::Screenshot(input) => (input.wait_until, &input.wait_for_selector, input.delay_ms),
            Self::Pdf(input) => (input.wait_until, &input.wait_for_selector, input.delay_ms),
            Self::Content(input) | Self::Scrape(input) | Self::Script(input) => {
                (input.wait_until, &input.wait_for_selector, input.delay_ms)
            }
            Self::Agent(input) => (input.wait_until, &None, 0),
        };
        WaitSpec {
            wait_until,
            wait_for_selector: wait_for_selector.clone(),
            delay_ms,
        }
    }

    /// The normalized input, with defaults filled in: what is stored and shown back.
    pub fn to_json(&self) -> serde_json::Value {
        let serialized = match self {
            Self::Screenshot(input) => serde_json::to_value(input),
            Self::Pdf(input) => serde_json::to_value(input),
            Self::Content(input) | Self::Scrape(input) | Self::Script(input) => {
                serde_json::to_value(input)
            }
            Self::Agent(input) => serde_json::to_value(input),
        };
        // Serializing plain data structs cannot fail; keep the fallback total anyway.
        serialized.unwrap_or(serde_json::Value::Null)
    }

    fn validate(&self) -> Result<(), CodedError> {
        match self {
            Self::Screenshot(input) => {
                input.viewport.validate("input.viewport")?;
                self.wait().validate()?;
                if let Some(quality) = input.quality {
                    if input.image_type == ImageFormat::Png {
                        return Err(invalid_input(
                            "input.quality",
                            "applies to jpeg and webp only; png is lossless",
                        ));
                    }
                    check_range("input.quality", u32::from(quality), 0, 100)?;
                }
                Ok(())
            }
            Self::Pdf(input) => {
                input.viewport.validate("input.viewport")?;
                self.wait().validate()?;
                if !(0.1..=2.0).contains(&input.scale) {
                    return Err(invalid_input("input.scale", "must be between 0.1 and 2"));
                }
                if let Some(ranges) = &input.page_ranges {
                    let well_formed = !ranges.trim().is_empty()
                        && ranges.chars().all(|character| {
                            character.is_ascii_digit() || matches!(character, '-' | ',' | ' ')
                        });
                    if !well_formed {
                        return Err(invalid_input(
                            "input.page_ranges",
                            "must look like \"1-3, 5\"",
                        ));
                    }
                }
                input.geometry().map(|_| ())
            }
            Self::Content(input) => input.validate(true, false, false),
            Self::Scrape(input) => input.validate(true, false, true),
            Self::Script(input) => input.validate(false, true, false),
            // Checked as it was parsed.
            Self::Agent(_) => Ok(()),
        }
    }
}

pub(crate) fn parse_input<T: serde::de::DeserializeOwned>(
    input: &serde_json::Value,
) -> Result<T, CodedError> {
    if !input.is_object() {
        return Err(invalid_input("input", "must be a JSON object"));
    }
    // The URL is checked first, on its own, so its precise code survives (serde would
    // flatten the error into a message).
    if let Some(serde_json::Value::String(url)) = input.get("url") {
        TargetUrl::parse(url).map_err(|error| {
            CodedError::new(error.code, format!("input.url: {}", error.message))
        })?;
    }
    serde_path_to_error::deserialize(input).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." {
            "input".to_owned()
        } else {
            format!("input.{path}")
        };
        CodedError::new(
            ErrorCode::InvalidInput,
            format!("{field}: {}", error.into_inner()),
        )
    })
}

pub(crate) fn invalid_input(field: &str, problem: &str) -> CodedError {
    CodedError::new(ErrorCode::InvalidInput, format!("{field}: {problem}"))
}

pub(crate) fn check_range(field: &str, value: u32, min: u32, max: u32) -> Result<(), CodedError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid_input(
            field,
            &format!("must be between {min} and {max}, got {value}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code_of(kind: TaskKind, input: serde_json::Value) -> ErrorCode {
        TaskSpec::parse(kind, &input)
            .expect_err("must be refused")
            .code
    }

    #[test]
    fn a_minimal_screenshot_gets_defaults() {
        let spec = TaskSpec::parse(TaskKind::Screenshot, &json!({"url": "https://example.com"}))
            .expect("valid");
        let TaskSpec::Screenshot(input) = spec else {
            panic!("wrong variant")
        };
        assert_eq!(input.viewport, Viewport::default());
        assert_eq!(input.image_type, ImageFormat::Png);
        assert_eq!(input.wait_until, WaitUntil::Load);
    }

    #[test]
    fn urls_are_checked_with_precise_codes() {
        assert_eq!(
            code_of(TaskKind::Screenshot, json!({"url": "not a url"})),
            ErrorCode::InvalidUrl
        );
        assert_eq!(
            code_of(TaskKind::Screenshot, json!({"url": "file:///etc/passwd"})),
            ErrorCode::UrlSchemeNotAllowed
        );
        assert_eq!(
            code_of(TaskKind::Pdf, json!({"url": "javascript:alert(1)"})),
            ErrorCode::UrlSchemeNotAllowed
        );
        assert_eq!(
            code_of(
                TaskKind::Screenshot,
                json!({"url": "https://user:pw@example.com"})
            ),
            ErrorCode::InvalidUrl
        );
        assert_eq!(
            code_of(TaskKind::Screenshot, json!({})),
            ErrorCode::InvalidInput
        );
    }

    #[test]
    fn errors_name_the_field() {
        let error = TaskSpec::parse(
            TaskKind::Screenshot,
            &json!({"url": "https://example.com", "viewport": {"width": 0, "height": 10}}),
        )
        .expect_err("width 0");
        assert_eq!(error.code, ErrorCode::InvalidInput);
        assert!(
            error.message.starts_with("input.viewport.width"),
            "{}",
            error.message
        );

        let error = TaskSpec::parse(
            TaskKind::Screenshot,
            &json!({"url": "https://a.test", "colour": "red"}),
        )
        .expect_err("unknown field");
        assert!(error.message.contains("colour"), "{}", error.message);
    }

    #[test]
    fn quality_is_for_lossy_formats_only() {
        assert_eq!(
            code_of(
                TaskKind::Screenshot,
                json!({"url": "https://a.test", "quality": 50})
            ),
            ErrorCode::InvalidInput
        );
        assert!(
            TaskSpec::parse(
                TaskKind::Screenshot,
                &json!({"url": "https://a.test", "type": "jpeg", "quality": 50})
            )
            .is_ok()
        );
    }

    #[test]
    fn pdf_geometry_converts_units() {
        let spec = TaskSpec::parse(
            TaskKind::Pdf,
            &json!({"url": "https://a.test", "format": "Letter", "margin": {"top": "1in", "left": "2.54cm", "right": 96, "bottom": "25.4mm"}}),
        )
        .expect("valid");
        let TaskSpec::Pdf(input) = spec else {
            panic!("wrong variant")
        };
        let geometry = input.geometry().expect("geometry");
        assert_eq!((geometry.width, geometry.height), (8.5, 11.0));
        for margin in [
            geometry.margin_top,
            geometry.margin_left,
            geometry.margin_right,
            geometry.margin_bottom,
        ] {
            assert!((margin - 1.0).abs() < 1e-9, "{margin}");
        }
        assert_eq!(
            code_of(
                TaskKind::Pdf,
                json!({"url": "https://a.test", "margin": {"top": "3furlongs"}})
            ),
            ErrorCode::InvalidInput
        );
        assert_eq!(
            code_of(
                TaskKind::Pdf,
                json!({"url": "https://a.test", "margin": {"left": "5in", "right": "5in"}})
            ),
            ErrorCode::InvalidInput
        );
    }

    #[test]
    fn unknown_kinds_are_named() {
        let error = TaskKind::parse("video").expect_err("unknown");
        assert_eq!(error.code, ErrorCode::UnknownKind);
        assert!(
            error
                .message
                .contains("screenshot, pdf, content, scrape, script, agent")
        );
    }

    #[test]
    fn normalized_input_round_trips() {
        let spec =
            TaskSpec::parse(TaskKind::Pdf, &json!({"url": "https://a.test/x"})).expect("valid");
        let again = TaskSpec::parse(TaskKind::Pdf, &spec.to_json())
            .expect("normalized form is valid input");
        assert_eq!(spec, again);
    }
}
