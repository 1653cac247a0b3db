//! The step language: what `script` tasks run, and what `content` and `scrape` tasks are
//! shorthands for.
//!
//! A browse input ([`input`]) is a starting URL (optional for `script`), page options
//! that hold for the whole task (viewport, user agent, locale, timezone, headers,
//! cookies, blocked resources) and a list of steps, each tagged by `action`. Steps are
//! validated one by one, so an error names the step: `input.steps[3].selector: must
//! not be empty`.
//!
//! Each action has one home, a module of its own, as mini-redis keeps one file per
//! command: its fields as they arrive in JSON, their checks, and what it does to a
//! page. What a page can do is [`StepPage`], which the worker implements over Chromium;
//! this crate stays free of I/O. The list of actions is written once, in the
//! `actions!` invocation below, which makes [`Step`] and its dispatch.
//!
//! - `goto`, `click`, `hover`, `type_text`, `press`, `select`, `scroll`, `wait_for`:
//!   navigating and acting on elements.
//! - `screenshot`, `pdf`, `extract`, `evaluate`: what a step takes from the page.
//! - `page_settings`: `set_viewport`, `set_user_agent`, `set_extra_headers` and
//!   `set_cookies`, which the browse input can also set for the whole task.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::spec::{
    ImageFormat, MAX_SELECTOR_LENGTH, PaperFormat, TargetUrl, Viewport, WaitSpec, invalid_input,
};
use crate::error::{CodedError, ErrorCode};

mod click;
mod evaluate;
mod extract;
mod goto;
mod hover;
mod input;
mod page_settings;
mod pdf;
mod press;
mod screenshot;
mod scroll;
mod select;
mod type_text;
mod wait_for;

pub use click::Click;
pub use evaluate::Evaluate;
pub use extract::{ExtractWhat, Extraction, FieldDetail, FieldSpec};
pub use goto::Goto;
pub use hover::Hover;
pub use input::{BlockableResource, BrowseInput, parse_browse_input};
pub use page_settings::{CookieSpec, SetCookies, SetExtraHeaders, SetUserAgent, SetViewport};
pub use pdf::Pdf;
pub use press::Press;
pub use screenshot::Screenshot;
pub use scroll::Scroll;
pub use select::Select;
pub use type_text::TypeText;
pub use wait_for::{ElementState, PageEvent, WaitFor};

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

/// What a page does for a step. The worker's `Session` is the implementation; each
/// operation ends at `deadline` (a step's) or the task's deadline, whichever comes
/// first, and fails with the error code that says which (`wait_timeout`,
/// `selector_not_found`, `task_timeout`).
pub trait StepPage: Sync {
    /// The task's deadline: a step's own never ends later.
    fn task_deadline(&self) -> Instant;

    /// How many page events have been recorded; a navigation wait counts the loads
    /// after a given sequence.
    fn event_sequence(&self) -> u64;

    /// Navigates and waits for the milestone, selector and delay in `wait`.
    fn open(
        &self,
        url: &str,
        wait: &WaitSpec,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), CodedError>> + Send;

    /// Waits until an element matching `selector` is in `state`.
    fn wait_element(
        &self,
        selector: &str,
        state: ElementState,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), CodedError>> + Send;

    /// A real mouse click at the centre of the first visible match, scrolled into view.
    fn click(
        &self,
        selector: &str,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), CodedError>> + Send;

    /// The mouse moved to the centre of the first visible match, scrolled into view.
    fn hover(
        &self,
        selector: &str,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), CodedError>> + Send;

    /// Focuses the first match; with `clear`, empties its value first.
    fn focus(
        &self,
        selector: &str,
        clear: bool,
    ) -> impl Future<Output = Result<(), CodedError>> + Send;

    /// Inserts `text` where the focus is, as typing would.
    fn insert_text(&self, text: &str) -> impl Future<Output = Result<(), CodedError>> + Send;

    /// Presses and releases a key; an unknown key name is a `step_failed`.
    fn press_key(&self, key: &str) -> impl Future<Output = Result<(), CodedError>> + Send;

    /// Evaluates an expression (a promise is awaited) and returns its JSON value; a
    /// thrown exception is a `step_failed`.
    fn evaluate(&self, expression: &str) -> impl Future<Output = Result<Value, CodedError>> + Send;

    /// [`StepPage::evaluate`] of an expression that may never settle, bounded by
    /// `deadline`.
    fn evaluate_until(
        &self,
        expression: &str,
        deadline: Instant,
    ) -> impl Future<Output = Result<Value, CodedError>> + Send;

    /// Sleeps for `duration`; a `wait_timeout` when that passes `deadline`.
    fn sleep(
        &self,
        duration: Duration,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), CodedError>> + Send;

    /// Waits for one page load that finished after event `sequence`.
    fn wait_navigation_since(
        &self,
        sequence: u64,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), CodedError>> + Send;

    /// Waits until no request has been in flight for 500 ms.
    fn wait_network_idle(
        &self,
        deadline: Instant,
    ) -> impl Future<Output = Result<(), CodedError>> + Send;

    /// One poll interval of a wait the caller loops on; at `deadline`, a
    /// `wait_timeout` saying `failure` (or `task_timeout` when it was the task's).
    fn pause(
        &self,
        deadline: Instant,
        failure: &str,
    ) -> impl Future<Output = Result<(), CodedError>> + Send;

    /// Captures the viewport, the full page or the first visible match of `element`.
    fn capture(
        &self,
        format: ImageFormat,
        quality: Option<u8>,
        full_page: bool,
        element: Option<&str>,
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<u8>, CodedError>> + Send;

    /// Prints the page to PDF with default margins.
    fn print(
        &self,
        format: PaperFormat,
        landscape: bool,
        print_background: bool,
    ) -> impl Future<Output = Result<Vec<u8>, CodedError>> + Send;

    fn set_viewport(
        &self,
        viewport: &Viewport,
    ) -> impl Future<Output = Result<(), CodedError>> + Send;

    fn set_user_agent(
        &self,
        user_agent: &str,
    ) -> impl Future<Output = Result<(), CodedError>> + Send;

    fn set_extra_headers(
        &self,
        headers: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), CodedError>> + Send;

    /// Sets cookies in the task's context; one without `url` or `domain` belongs to the
    /// current page.
    fn set_cookies(
        &self,
        cookies: &[CookieSpec],
    ) -> impl Future<Output = Result<(), CodedError>> + Send;
}

/// Where a step runs: its place in the script and its deadline.
#[derive(Debug, Clone, Copy)]
pub struct StepContext {
    pub index: usize,
    /// The step's own timeout from its start, or the task's deadline if sooner.
    pub deadline: Instant,
    /// The event sequence when the previous step started: `wait_for` navigation counts
    /// a navigation that the previous step (a click) started, even if it already ended.
    pub previous_sequence: u64,
}

/// What the steps of a run took from the page: files and named data.
#[derive(Debug, Default)]
pub struct StepOutput {
    pub files: Vec<StepFile>,
    pub data: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct StepFile {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// One action: its JSON shape (the type itself), its checks and its run.
pub trait Action {
    /// The `action` tag, as serde spells the variant.
    const NAME: &'static str;

    /// The step's own timeout, when it has one.
    fn timeout_ms(&self) -> Option<u32> {
        None
    }

    /// Every URL the step names (checked against the network policy at submission).
    fn urls(&self) -> Vec<&TargetUrl> {
        Vec::new()
    }

    /// Checks beyond the JSON shape; `field` is the step's path (`input.steps[3]`).
    fn validate(&self, field: &str) -> Result<(), CodedError>;

    fn run<P: StepPage>(
        &self,
        page: &P,
        step: &StepContext,
        out: &mut StepOutput,
    ) -> impl Future<Output = Result<(), CodedError>> + Send;
}

/// Makes [`Step`], one newtype variant per action, and its dispatch to [`Action`].
macro_rules! actions {
    ($($(#[doc = $doc:literal])* $variant:ident($action:ty),)+) => {
        /// One step of a script, tagged by `action`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "action", rename_all = "snake_case")]
        pub enum Step {
            $($(#[doc = $doc])* $variant($action),)+
        }

        impl Step {
            /// Every action's name, in the order of the list.
            pub const ACTIONS: &'static [&'static str] = &[$(<$action as Action>::NAME),+];

            pub fn action(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$action as Action>::NAME,)+
                }
            }

            fn own_timeout_ms(&self) -> Option<u32> {
                match self {
                    $(Self::$variant(action) => action.timeout_ms(),)+
                }
            }

            /// Every URL the step names (checked against the network policy at
            /// submission).
            pub fn urls(&self) -> Vec<&TargetUrl> {
                match self {
                    $(Self::$variant(action) => action.urls(),)+
                }
            }

            fn validate_action(&self, field: &str) -> Result<(), CodedError> {
                match self {
                    $(Self::$variant(action) => action.validate(field),)+
                }
            }

            async fn run_action<P: StepPage>(
                &self,
                page: &P,
                step: &StepContext,
                out: &mut StepOutput,
            ) -> Result<(), CodedError> {
                match self {
                    $(Self::$variant(action) => action.run(page, step, out).await,)+
                }
            }
        }
    };
}

actions! {
    /// Open a URL and wait for a load milestone.
    Goto(Goto),
    /// Click the first visible element matching `selector`.
    Click(Click),
    /// Focus the element and type `text` into it.
    Type(TypeText),
    /// Press a key (`Enter`, `Tab`, `ArrowDown`, a character), in `selector` if given.
    Press(Press),
    /// Choose options of a `<select>` by value.
    Select(Select),
    /// Move the mouse over an element.
    Hover(Hover),
    /// Scroll an element into view, or the page by `x`/`y` pixels.
    Scroll(Scroll),
    /// Wait for exactly one of: an element's state, a page event, a fixed delay.
    WaitFor(WaitFor),
    /// Capture the viewport, the full page, or one element (`selector`).
    Screenshot(Screenshot),
    /// Print the page to PDF.
    Pdf(Pdf),
    /// Take data from the page into the result.
    Extract(Extraction),
    /// Evaluate a JavaScript expression (a promise is awaited); its JSON value goes into
    /// the result under `name`.
    Evaluate(Evaluate),
    SetViewport(SetViewport),
    SetUserAgent(SetUserAgent),
    SetExtraHeaders(SetExtraHeaders),
    SetCookies(SetCookies),
}

impl Step {
    /// The step with the `{{name}}` placeholders of its typed text replaced by the
    /// secrets' values (only `type` types text); an unknown name is an error naming it.
    pub fn with_secrets(&self, secrets: &BTreeMap<String, String>) -> Result<Self, String> {
        match self {
            Self::Type(typed) => Ok(Self::Type(TypeText {
                text: crate::agent::fill_secrets(&typed.text, secrets)?,
                ..typed.clone()
            })),
            other => Ok(other.clone()),
        }
    }

    /// The step's own timeout in milliseconds.
    pub fn timeout_ms(&self) -> u32 {
        self.own_timeout_ms().unwrap_or(DEFAULT_STEP_TIMEOUT_MS)
    }

    pub(crate) fn validate(&self, field: &str) -> Result<(), CodedError> {
        check_range(
            &format!("{field}.timeout_ms"),
            self.timeout_ms(),
            1,
            MAX_STEP_TIMEOUT_MS,
        )?;
        self.validate_action(field)
    }

    /// Runs the step as step `index` of its script, under its own timeout and the
    /// task's deadline; `previous_sequence` is the event sequence when the step before
    /// it started.
    pub async fn run<P: StepPage>(
        &self,
        page: &P,
        index: usize,
        previous_sequence: u64,
        out: &mut StepOutput,
    ) -> Result<(), CodedError> {
        let step = StepContext {
            index,
            deadline: deadline_after(self.timeout_ms(), page.task_deadline()),
            previous_sequence,
        };
        self.run_action(page, &step, out).await
    }
}

/// `timeout_ms` from now, or `task_deadline` if sooner.
pub(crate) fn deadline_after(timeout_ms: u32, task_deadline: Instant) -> Instant {
    (Instant::now() + Duration::from_millis(u64::from(timeout_ms))).min(task_deadline)
}

/// A JavaScript string literal for `text`.
pub fn js_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

/// Where a selector crosses into a same-origin frame's document or an open shadow
/// root: `iframe#pay >>> button.submit`, `x-card >>> input`. Each part is a CSS
/// selector, looked up in the document (or root) the part before it leads into.
pub const DEEP_SEPARATOR: &str = " >>> ";

/// The page-script function that finds the element a (deep) selector names, or null;
/// it throws on an invalid CSS part, as `querySelector` does.
const FIND_ELEMENT: &str = "((selector) => { const parts = selector.split(' >>> '); let root = document; let element = null; \
for (let i = 0; i < parts.length; i++) { element = root.querySelector(parts[i]); if (!element || i === parts.length - 1) break; \
root = element.contentDocument || element.shadowRoot; if (!root) return null; } return element; })";

/// A page-script expression for the element `selector` names (or null).
pub fn find_element(selector: &str) -> String {
    format!("{FIND_ELEMENT}({})", js_string(selector))
}

/// A page-script function of an element: the offset of its frame's viewport in the top
/// viewport (zero outside frames), to add to its `getBoundingClientRect()`.
pub const FRAME_OFFSET: &str = "((element) => { let x = 0, y = 0, view = element.ownerDocument.defaultView; \
while (view && view.frameElement) { const frame = view.frameElement; const box = frame.getBoundingClientRect(); \
x += box.left + frame.clientLeft; y += box.top + frame.clientTop; view = frame.ownerDocument.defaultView; } return {x, y}; })";

/// A `step_failed` when a page script answered `{error: "..."}`.
pub(crate) fn script_error(answer: &Value) -> Result<(), CodedError> {
    match answer.get("error").and_then(Value::as_str) {
        Some(message) => Err(CodedError::new(ErrorCode::StepFailed, message.to_owned())),
        None => Ok(()),
    }
}

pub(crate) use super::spec::check_range;

pub(crate) fn check_selector(field: &str, selector: &str) -> Result<(), CodedError> {
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

/// [`check_selector`] of `{field}.selector` when the step gives one.
pub(crate) fn check_optional_selector(
    field: &str,
    selector: Option<&str>,
) -> Result<(), CodedError> {
    match selector {
        Some(selector) => check_selector(&format!("{field}.selector"), selector),
        None => Ok(()),
    }
}

pub(crate) fn check_length(field: &str, text: &str, max: usize) -> Result<(), CodedError> {
    if text.len() > max {
        return Err(invalid_input(field, &format!("at most {max} characters")));
    }
    Ok(())
}

pub(crate) fn check_name(field: &str, name: Option<&str>) -> Result<(), CodedError> {
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

pub(crate) fn check_user_agent(field: &str, user_agent: &str) -> Result<(), CodedError> {
    if user_agent.trim().is_empty()
        || user_agent.len() > 1024
        || user_agent.chars().any(char::is_control)
    {
        return Err(invalid_input(field, "must be 1-1024 printable characters"));
    }
    Ok(())
}

pub(crate) fn check_headers(
    field: &str,
    headers: &BTreeMap<String, String>,
) -> Result<(), CodedError> {
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

pub(crate) fn check_cookies(field: &str, cookies: &[CookieSpec]) -> Result<(), CodedError> {
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
    fn strings_are_quoted_for_javascript() {
        assert_eq!(js_string("a\"b</script>"), "\"a\\\"b</script>\"");
    }

    #[test]
    fn each_action_is_named_as_its_tag() {
        let steps = json!([
            {"action": "goto", "url": "https://a.test"},
            {"action": "click", "selector": "a"},
            {"action": "type", "selector": "input", "text": "x"},
            {"action": "press", "key": "Enter"},
            {"action": "select", "selector": "select", "values": ["a"]},
            {"action": "hover", "selector": "a"},
            {"action": "scroll", "y": 100},
            {"action": "wait_for", "delay_ms": 1},
            {"action": "screenshot"},
            {"action": "pdf"},
            {"action": "extract", "name": "title", "selector": "h1"},
            {"action": "evaluate", "expression": "1"},
            {"action": "set_viewport", "viewport": {"width": 800, "height": 600}},
            {"action": "set_user_agent", "user_agent": "a"},
            {"action": "set_extra_headers", "headers": {"x-a": "1"}},
            {"action": "set_cookies", "cookies": [{"name": "a", "value": "1", "domain": "a.test"}]}
        ]);
        let input = parse_browse_input(&json!({ "steps": steps })).expect("parses");
        input.validate(false, true, false).expect("valid");
        let tags: Vec<&str> = steps
            .as_array()
            .expect("list")
            .iter()
            .map(|step| step["action"].as_str().expect("tag"))
            .collect();
        let names: Vec<&str> = input.steps.iter().map(Step::action).collect();
        assert_eq!(names, tags);
        assert_eq!(Step::ACTIONS, tags.as_slice());
        for step in &input.steps {
            let written = serde_json::to_value(step).expect("json");
            assert_eq!(written["action"], step.action());
        }
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
    fn secrets_fill_typed_placeholders_and_must_name_each_one() {
        let typed = json!({"action": "type", "selector": "#pw", "text": "{{password}}!"});
        // Without secrets, the text is the text.
        let plain = parse_browse_input(&json!({"steps": [typed]})).expect("parses");
        plain.validate(false, true, false).expect("valid");
        let with = parse_browse_input(&json!({
            "steps": [typed, {"action": "click", "selector": "#go"}],
            "secrets": {"password": "hunter2"},
        }))
        .expect("parses");
        with.validate(false, true, false).expect("valid");
        let Step::Type(filled) = with.steps[0].with_secrets(&with.secrets).expect("fills") else {
            panic!("a type step stays a type step");
        };
        assert_eq!(filled.text, "hunter2!");
        assert_eq!(
            with.steps[1].with_secrets(&with.secrets),
            Ok(with.steps[1].clone())
        );
        let error = error_of(json!({
            "steps": [{"action": "click", "selector": "a"}, {"action": "type", "selector": "#pw", "text": "{{pin}}"}],
            "secrets": {"password": "hunter2"},
        }));
        assert!(
            error.message.starts_with("input.steps[1].text") && error.message.contains("pin"),
            "{}",
            error.message
        );
        let error = error_of(json!({"steps": [typed], "secrets": {"bad name": "x"}}));
        assert!(
            error.message.starts_with("input.secrets"),
            "{}",
            error.message
        );
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
