//! The step executor: `script` tasks, and `content` and `scrape`, which are a start URL,
//! optional steps and a final capture (HTML, or data by selectors).
//!
//! Each step runs under its own timeout (default 10 s) and the task's deadline, whichever
//! comes first; when the task's deadline is what ran out, the error is `task_timeout`
//! (the task is `timed_out`), otherwise the step's own error. Each step's outcome
//! (action, duration, error) is reported as the task's progress as soon as it ends.
//!
//! Elements are found with `document.querySelector` polled every 25 ms; clicks and
//! hovers are real mouse events at the element's centre after scrolling it into view.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::{
    BrowseInput, CookieSpec, ElementState, Extraction, PageEvent, Step, TaskKind, WaitSpec,
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use crate::input::{self, Point, PressError};
use crate::render::{Clip, Rendered, RenderedFile, Session};

/// How often an element is looked for while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Quiet time that counts as network idle.
const NETWORK_QUIET: Duration = Duration::from_millis(500);

/// Receives the list of step outcomes each time a step ends.
pub type ProgressSink<'a> = &'a (dyn Fn(Value) + Sync);

/// Runs a browse task (content, scrape, script) in the session's page.
pub(crate) async fn browse(
    session: &Session<'_>,
    kind: TaskKind,
    input: &BrowseInput,
    progress: ProgressSink<'_>,
) -> Result<Rendered, CodedError> {
    session.apply_page_options(input).await?;
    let mut run = Run {
        session,
        files: Vec::new(),
        data: serde_json::Map::new(),
        outcomes: Vec::new(),
        progress,
        previous_step_sequence: session.events.sequence(),
    };
    if let Some(url) = &input.url {
        let started = Instant::now();
        let opened = session
            .open(
                url.as_str(),
                &WaitSpec {
                    wait_until: input.wait_until,
                    wait_for_selector: input.wait_for_selector.clone(),
                    delay_ms: input.delay_ms,
                },
            )
            .await;
        run.record(None, "open", started, opened.as_ref().err());
        opened?;
    }
    for (index, step) in input.steps.iter().enumerate() {
        session.check_stop()?;
        let started = Instant::now();
        let sequence_at_start = session.events.sequence();
        let outcome = run.step(index, step).await;
        run.record(Some(index), step.action(), started, outcome.as_ref().err());
        run.previous_step_sequence = sequence_at_start;
        outcome.map_err(|error| name_step(error, index, step))?;
        session.check_document_allowed()?;
    }
    for (index, extraction) in input.extract.iter().enumerate() {
        let value = run.extract(extraction).await.map_err(|error| {
            CodedError::new(
                error.code,
                format!("extract[{index}] ({}): {}", extraction.name, error.message),
            )
        })?;
        run.data.insert(extraction.name.clone(), value);
    }
    let mut extra = serde_json::Map::new();
    if kind == TaskKind::Content || input.save_html {
        let html = session.html().await?;
        run.files.push(RenderedFile {
            name: "page.html".to_owned(),
            content_type: "text/html; charset=utf-8".to_owned(),
            bytes: html.into_bytes(),
        });
    }
    if input.storage_state {
        extra.insert("storage_state".to_owned(), session.storage_state().await?);
    }
    if !run.data.is_empty() || kind == TaskKind::Scrape {
        extra.insert("data".to_owned(), Value::Object(run.data));
    }
    extra.insert("steps".to_owned(), Value::Array(run.outcomes));
    Ok(Rendered {
        files: run.files,
        page: session.facts().await?,
        extra,
    })
}

/// Prefixes an error with the step it came from (`steps[3] (click): ...`).
fn name_step(error: CodedError, index: usize, step: &Step) -> CodedError {
    if matches!(error.code, ErrorCode::Cancelled | ErrorCode::UrlNotAllowed) {
        return error;
    }
    CodedError::new(
        error.code,
        format!("steps[{index}] ({}): {}", step.action(), error.message),
    )
}

struct Run<'s, 'a> {
    session: &'s Session<'a>,
    files: Vec<RenderedFile>,
    data: serde_json::Map<String, Value>,
    outcomes: Vec<Value>,
    progress: ProgressSink<'s>,
    /// The event sequence when the previous step started: `wait_for` navigation counts
    /// a navigation that the previous step (a click) started, even if it already ended.
    previous_step_sequence: u64,
}

impl Run<'_, '_> {
    fn record(
        &mut self,
        index: Option<usize>,
        action: &str,
        started: Instant,
        error: Option<&CodedError>,
    ) {
        let mut outcome = json!({
            "action": action,
            "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "ok": error.is_none(),
        });
        if let Some(index) = index {
            outcome["index"] = json!(index);
        }
        if let Some(error) = error {
            outcome["error"] = json!({"code": error.code, "message": error.message});
        }
        self.outcomes.push(outcome);
        (self.progress)(json!({ "steps": self.outcomes }));
    }

    async fn step(&mut self, index: usize, step: &Step) -> Result<(), CodedError> {
        let session = self.session;
        let deadline = session.step_deadline(step.timeout_ms());
        match step {
            Step::Goto {
                url, wait_until, ..
            } => {
                session
                    .open_until(
                        url.as_str(),
                        &WaitSpec {
                            wait_until: *wait_until,
                            wait_for_selector: None,
                            delay_ms: 0,
                        },
                        deadline,
                    )
                    .await
            }
            Step::Click { selector, .. } => {
                let point = session.element_centre(selector, deadline).await?;
                input::click(session.page, point)
                    .await
                    .map_err(|error| session.handle.classify(&error, "click failed"))
            }
            Step::Hover { selector, .. } => {
                let point = session.element_centre(selector, deadline).await?;
                input::move_mouse(session.page, point)
                    .await
                    .map_err(|error| session.handle.classify(&error, "hover failed"))
            }
            Step::Type {
                selector,
                text,
                delay_ms,
                clear,
                ..
            } => {
                session
                    .wait_element(selector, ElementState::Visible, deadline)
                    .await?;
                session.focus(selector, *clear).await?;
                match delay_ms.filter(|delay| *delay > 0) {
                    None => session.insert_text(text).await,
                    Some(delay) => {
                        for character in text.chars() {
                            session.insert_text(&character.to_string()).await?;
                            session
                                .sleep_until(Duration::from_millis(u64::from(delay)), deadline)
                                .await?;
                        }
                        Ok(())
                    }
                }
            }
            Step::Press { key, selector, .. } => {
                if let Some(selector) = selector {
                    session
                        .wait_element(selector, ElementState::Visible, deadline)
                        .await?;
                    session.focus(selector, false).await?;
                }
                input::press_key(session.page, key)
                    .await
                    .map_err(|error| match error {
                        PressError::UnknownKey => CodedError::new(
                            ErrorCode::StepFailed,
                            format!("cannot press {key:?}: {error}"),
                        ),
                        PressError::Cdp(error) => session
                            .handle
                            .classify(&error, &format!("cannot press {key:?}")),
                    })
            }
            Step::Select {
                selector, values, ..
            } => {
                session
                    .wait_element(selector, ElementState::Visible, deadline)
                    .await?;
                let answer = session.evaluate_json(&format!(
                    "(() => {{ const element = document.querySelector({selector}); \
                     if (!element || element.tagName !== 'SELECT') return {{error: 'the element is not a <select>'}}; \
                     const wanted = {values}; const chosen = []; \
                     for (const option of element.options) {{ option.selected = wanted.includes(option.value); if (option.selected) chosen.push(option.value); }} \
                     element.dispatchEvent(new Event('input', {{bubbles: true}})); element.dispatchEvent(new Event('change', {{bubbles: true}})); \
                     const missing = wanted.filter(value => !chosen.includes(value)); \
                     return missing.length ? {{error: 'no option with value ' + JSON.stringify(missing[0])}} : {{chosen}}; }})()",
                    selector = js_string(selector),
                    values = serde_json::to_string(values).unwrap_or_else(|_| "[]".into()),
                )).await?;
                match answer.get("error").and_then(Value::as_str) {
                    Some(message) => Err(CodedError::new(ErrorCode::StepFailed, message)),
                    None => Ok(()),
                }
            }
            Step::Scroll { selector, x, y, .. } => match selector {
                Some(selector) => {
                    session
                        .wait_element(selector, ElementState::Visible, deadline)
                        .await?;
                    session
                        .evaluate_json(&format!(
                            "(() => {{ document.querySelector({}).scrollIntoView({{block: 'center'}}); return true; }})()",
                            js_string(selector)
                        )).await
                        .map(|_| ())
                }
                None => session
                    .evaluate_json(&format!(
                        "(() => {{ window.scrollBy({x}, {y}); return true; }})()"
                    ))
                    .await
                    .map(|_| ()),
            },
            Step::WaitFor {
                selector,
                state,
                event,
                delay_ms,
                ..
            } => {
                if let Some(selector) = selector {
                    return session.wait_element(selector, *state, deadline).await;
                }
                if let Some(delay) = delay_ms {
                    return session
                        .sleep_until(Duration::from_millis(u64::from(*delay)), deadline)
                        .await;
                }
                match event {
                    Some(PageEvent::Navigation) => {
                        let since = self.previous_step_sequence;
                        session
                            .poll_until(deadline, "no navigation finished", || {
                                Ok(session.events.loaded_since(since))
                            })
                            .await
                    }
                    Some(PageEvent::NetworkIdle) => {
                        session
                            .poll_until(deadline, "the network did not go idle", || {
                                Ok(session.events.network_idle_for(NETWORK_QUIET))
                            })
                            .await
                    }
                    None => Ok(()),
                }
            }
            Step::Screenshot {
                name,
                selector,
                full_page,
                image_type,
                quality,
                ..
            } => {
                let clip = match selector {
                    Some(selector) => Some(session.element_clip(selector, deadline).await?),
                    None => None,
                };
                let bytes = session
                    .capture(*image_type, *quality, *full_page, clip)
                    .await?;
                let base = name
                    .clone()
                    .unwrap_or_else(|| format!("screenshot-{index}"));
                self.files.push(RenderedFile {
                    name: format!("{base}.{}", image_type.extension()),
                    content_type: image_type.content_type().to_owned(),
                    bytes,
                });
                Ok(())
            }
            Step::Pdf {
                name,
                format,
                landscape,
                print_background,
                ..
            } => {
                let bytes = session
                    .print(*format, *landscape, *print_background)
                    .await?;
                let base = name.clone().unwrap_or_else(|| format!("document-{index}"));
                self.files.push(RenderedFile {
                    name: format!("{base}.pdf"),
                    content_type: "application/pdf".to_owned(),
                    bytes,
                });
                Ok(())
            }
            Step::Extract(extraction) => {
                let value = self.extract(extraction).await?;
                self.data.insert(extraction.name.clone(), value);
                Ok(())
            }
            Step::Evaluate {
                expression, name, ..
            } => {
                let value = session
                    .evaluate_json_until(&format!("(async () => ({expression}))()"), deadline)
                    .await?;
                let key = name.clone().unwrap_or_else(|| format!("evaluate-{index}"));
                self.data.insert(key, value);
                Ok(())
            }
            Step::SetViewport { viewport } => session.set_viewport(viewport).await,
            Step::SetUserAgent { user_agent } => session.set_user_agent(user_agent, None).await,
            Step::SetExtraHeaders { headers } => session.set_extra_headers(headers).await,
            Step::SetCookies { cookies } => session.set_cookies(cookies, None).await,
        }
    }

    async fn extract(&mut self, extraction: &Extraction) -> Result<Value, CodedError> {
        let session = self.session;
        let deadline = session.step_deadline(
            extraction
                .timeout_ms
                .unwrap_or(operator_domain::DEFAULT_STEP_TIMEOUT_MS),
        );
        let fields: Option<HashMap<&String, Value>> = extraction.fields.as_ref().map(|fields| {
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
            "selector": extraction.selector,
            "what": extraction.what,
            "attribute": extraction.attribute,
            "all": extraction.all,
            "fields": fields,
        });
        let script = format!("({EXTRACT_FUNCTION})({spec})");
        loop {
            let answer = session.evaluate_json(&script).await?;
            if let Some(message) = answer.get("error").and_then(Value::as_str) {
                return Err(CodedError::new(ErrorCode::StepFailed, message.to_owned()));
            }
            let found = answer.get("found").and_then(Value::as_u64).unwrap_or(0);
            if found > 0 || extraction.optional {
                return Ok(answer.get("value").cloned().unwrap_or(Value::Null));
            }
            if Instant::now() >= deadline && !session.deadline_passed() {
                return Err(CodedError::new(
                    ErrorCode::SelectorNotFound,
                    format!(
                        "no element matches {:?} within the step's timeout",
                        extraction.selector
                    ),
                ));
            }
            session
                .wait_a_little(deadline, || {
                    format!("no element matches {:?}", extraction.selector)
                })
                .await?;
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

/// A JavaScript string literal for `text`.
pub(crate) fn js_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

impl Session<'_> {
    /// The deadline of a step: its own timeout or the task's deadline, the sooner.
    pub(crate) fn step_deadline(&self, timeout_ms: u32) -> Instant {
        (Instant::now() + Duration::from_millis(u64::from(timeout_ms))).min(self.deadline)
    }

    /// Polls `ready` until it answers true, or fails at `deadline`.
    pub(crate) async fn poll_until(
        &self,
        deadline: Instant,
        failure: &str,
        mut ready: impl FnMut() -> Result<bool, CodedError>,
    ) -> Result<(), CodedError> {
        loop {
            if ready()? {
                return Ok(());
            }
            self.wait_a_little(deadline, || failure.to_owned()).await?;
        }
    }

    /// Sleeps one poll interval, or fails when `deadline` has passed: `task_timeout`
    /// when it was the task's deadline, `wait_timeout` otherwise.
    pub(crate) async fn wait_a_little(
        &self,
        deadline: Instant,
        failure: impl FnOnce() -> String,
    ) -> Result<(), CodedError> {
        self.check_stop()?;
        self.check_document_allowed()?;
        self.remaining()?;
        let now = Instant::now();
        if now >= deadline {
            return Err(CodedError::new(
                ErrorCode::WaitTimeout,
                format!("{} within the step's timeout", failure()),
            ));
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        Ok(())
    }

    pub(crate) async fn sleep_until(
        &self,
        duration: Duration,
        deadline: Instant,
    ) -> Result<(), CodedError> {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.check_stop()?;
            self.remaining()?;
            if Instant::now() >= deadline {
                return Err(CodedError::new(
                    ErrorCode::WaitTimeout,
                    "the delay is longer than the step's timeout",
                ));
            }
            tokio::time::sleep((until - Instant::now()).min(Duration::from_millis(50))).await;
        }
        Ok(())
    }

    /// Waits until an element matching `selector` is visible (or hidden/absent).
    pub(crate) async fn wait_element(
        &self,
        selector: &str,
        state: ElementState,
        deadline: Instant,
    ) -> Result<(), CodedError> {
        let probe = format!(
            "(() => {{ let element; try {{ element = document.querySelector({}); }} catch (error) {{ return 'invalid'; }} \
             if (!element) return 'missing'; const box = element.getBoundingClientRect(); const style = getComputedStyle(element); \
             return box.width > 0 && box.height > 0 && style.visibility !== 'hidden' && style.display !== 'none' ? 'visible' : 'hidden'; }})()",
            js_string(selector)
        );
        loop {
            let answer = self.evaluate_json(&probe).await?;
            match (answer.as_str(), state) {
                (Some("invalid"), _) => {
                    return Err(CodedError::new(
                        ErrorCode::InvalidInput,
                        format!("{selector:?} is not a valid CSS selector"),
                    ));
                }
                (Some("visible"), ElementState::Visible)
                | (Some("hidden" | "missing"), ElementState::Hidden) => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline && !self.deadline_passed() {
                return Err(match state {
                    ElementState::Visible => CodedError::new(
                        ErrorCode::SelectorNotFound,
                        format!(
                            "no visible element matches {selector:?} within the step's timeout"
                        ),
                    ),
                    ElementState::Hidden => CodedError::new(
                        ErrorCode::WaitTimeout,
                        format!(
                            "an element matching {selector:?} is still visible at the step's timeout"
                        ),
                    ),
                });
            }
            self.wait_a_little(deadline, || format!("no element matches {selector:?}"))
                .await?;
        }
    }

    fn deadline_passed(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Scrolls the element into view and returns its centre in viewport coordinates.
    pub(crate) async fn element_centre(
        &self,
        selector: &str,
        deadline: Instant,
    ) -> Result<Point, CodedError> {
        self.wait_element(selector, ElementState::Visible, deadline)
            .await?;
        let answer = self.evaluate_json(&format!(
            "(() => {{ const element = document.querySelector({}); element.scrollIntoView({{block: 'center', inline: 'center'}}); \
             const box = element.getBoundingClientRect(); return {{x: box.left + box.width / 2, y: box.top + box.height / 2}}; }})()",
            js_string(selector)
        )).await?;
        Ok(Point {
            x: answer["x"].as_f64().unwrap_or(0.0),
            y: answer["y"].as_f64().unwrap_or(0.0),
        })
    }

    /// The element's box in page coordinates, for an element screenshot.
    pub(crate) async fn element_clip(
        &self,
        selector: &str,
        deadline: Instant,
    ) -> Result<Clip, CodedError> {
        self.wait_element(selector, ElementState::Visible, deadline)
            .await?;
        let answer = self.evaluate_json(&format!(
            "(() => {{ const element = document.querySelector({}); element.scrollIntoView({{block: 'nearest'}}); \
             const box = element.getBoundingClientRect(); \
             return {{x: box.left + window.scrollX, y: box.top + window.scrollY, width: box.width, height: box.height}}; }})()",
            js_string(selector)
        )).await?;
        Ok(Clip {
            x: answer["x"].as_f64().unwrap_or(0.0),
            y: answer["y"].as_f64().unwrap_or(0.0),
            width: answer["width"].as_f64().unwrap_or(1.0).max(1.0),
            height: answer["height"].as_f64().unwrap_or(1.0).max(1.0),
        })
    }

    pub(crate) async fn focus(&self, selector: &str, clear: bool) -> Result<(), CodedError> {
        self.evaluate_json(&format!(
            "(() => {{ const element = document.querySelector({}); element.focus(); \
             if ({clear} && 'value' in element) {{ element.value = ''; element.dispatchEvent(new Event('input', {{bubbles: true}})); }} return true; }})()",
            js_string(selector)
        )).await
        .map(|_| ())
    }

    pub(crate) async fn insert_text(&self, text: &str) -> Result<(), CodedError> {
        input::insert_text(self.page, text)
            .await
            .map_err(|error| self.handle.classify(&error, "typing failed"))
    }

    /// Evaluates an expression in the page and returns its value as JSON (a promise is
    /// awaited). A thrown exception is a `step_failed`.
    pub(crate) async fn evaluate_json(&self, expression: &str) -> Result<Value, CodedError> {
        self.evaluate_json_allowing(expression, Duration::ZERO)
            .await
    }

    /// [`Session::evaluate_json`] of an expression that may take `work` to settle
    /// before the browser counts as hung.
    async fn evaluate_json_allowing(
        &self,
        expression: &str,
        work: Duration,
    ) -> Result<Value, CodedError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Evaluated {
            result: RemoteValue,
            exception_details: Option<ExceptionDetails>,
        }
        #[derive(Deserialize)]
        struct RemoteValue {
            value: Option<Value>,
            description: Option<String>,
        }
        #[derive(Deserialize)]
        struct ExceptionDetails {
            text: String,
            exception: Option<RemoteValue>,
        }
        let reply: Evaluated = self
            .page
            .start(
                "Runtime.evaluate",
                json!({
                    "expression": expression,
                    "silent": true,
                    "returnByValue": true,
                    // Not a user gesture: Chromium's popup blocker stays in force.
                    "userGesture": false,
                    "awaitPromise": true,
                }),
            )
            .allowing(work)
            .answer()
            .await
            .map_err(|error| {
                self.handle
                    .classify(&error, "cannot run script in the page")
            })?;
        if let Some(details) = reply.exception_details {
            let description = details
                .exception
                .and_then(|exception| exception.description)
                .unwrap_or(details.text);
            return Err(CodedError::new(
                ErrorCode::StepFailed,
                format!("the script threw: {description}"),
            ));
        }
        Ok(reply.result.value.unwrap_or(Value::Null))
    }

    /// [`Session::evaluate_json`] bounded by `deadline` (a promise that never settles).
    pub(crate) async fn evaluate_json_until(
        &self,
        expression: &str,
        deadline: Instant,
    ) -> Result<Value, CodedError> {
        // The page's own timer ends the wait at the deadline; the browser counts as hung
        // only when its answer is late beyond that by the call timeout.
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let wrapped = format!(
            "Promise.race([{expression}, new Promise((_, reject) => setTimeout(() => reject(new Error('the expression did not settle within the step\\'s timeout')), {}))])",
            budget.as_millis()
        );
        self.evaluate_json_allowing(&wrapped, budget).await
    }

    /// Task-wide options, before the first page loads.
    pub(crate) async fn apply_page_options(&self, input: &BrowseInput) -> Result<(), CodedError> {
        self.set_viewport_unless_default(&input.viewport).await?;
        if input.user_agent.is_some() || input.locale.is_some() {
            let user_agent = match &input.user_agent {
                Some(user_agent) => user_agent.clone(),
                None => self.handle.user_agent().replace("HeadlessChrome", "Chrome"),
            };
            self.set_user_agent(&user_agent, input.locale.as_deref())
                .await?;
        }
        if let Some(locale) = &input.locale {
            self.page
                .call::<IgnoredAny>("Emulation.setLocaleOverride", json!({ "locale": locale }))
                .await
                .map_err(|error| {
                    CodedError::new(ErrorCode::InvalidInput, format!("input.locale: {error}"))
                })?;
        }
        if let Some(timezone) = &input.timezone {
            self.page
                .call::<IgnoredAny>(
                    "Emulation.setTimezoneOverride",
                    json!({ "timezoneId": timezone }),
                )
                .await
                .map_err(|error| {
                    CodedError::new(ErrorCode::InvalidInput, format!("input.timezone: {error}"))
                })?;
        }
        if !input.extra_headers.is_empty() {
            self.set_extra_headers(&input.extra_headers).await?;
        }
        if !input.cookies.is_empty() {
            self.set_cookies(&input.cookies, input.url.as_ref().map(|url| url.as_str()))
                .await?;
        }
        Ok(())
    }

    /// The user agent (and with a locale, the `Accept-Language` header) of the page.
    pub(crate) async fn set_user_agent(
        &self,
        user_agent: &str,
        locale: Option<&str>,
    ) -> Result<(), CodedError> {
        let mut params = json!({ "userAgent": user_agent });
        if let Some(locale) = locale {
            params["acceptLanguage"] = json!(locale);
        }
        self.page
            .call::<IgnoredAny>("Network.setUserAgentOverride", params)
            .await
            .map_err(|error| self.handle.classify(&error, "cannot set the user agent"))?;
        Ok(())
    }

    pub(crate) async fn set_extra_headers(
        &self,
        headers: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), CodedError> {
        self.page
            .call::<IgnoredAny>("Network.setExtraHTTPHeaders", json!({ "headers": headers }))
            .await
            .map_err(|error| self.handle.classify(&error, "cannot set extra headers"))?;
        Ok(())
    }

    /// Sets cookies in the task's context. A cookie without `url` or `domain` belongs
    /// to `default_url` (the task's start URL), or to the current page.
    pub(crate) async fn set_cookies(
        &self,
        cookies: &[CookieSpec],
        default_url: Option<&str>,
    ) -> Result<(), CodedError> {
        let current = match default_url {
            Some(url) => Some(url.to_owned()),
            None => self
                .evaluate_json("location.href")
                .await?
                .as_str()
                .filter(|url| url.starts_with("http"))
                .map(str::to_owned),
        };
        let params: Vec<Value> = cookies
            .iter()
            .map(|cookie| {
                let url = cookie
                    .url
                    .as_ref()
                    .map(|url| url.as_str().to_owned())
                    .or_else(|| cookie.domain.is_none().then(|| current.clone()).flatten());
                let mut param = json!({
                    "name": cookie.name,
                    "value": cookie.value,
                    "secure": cookie.secure,
                    "httpOnly": cookie.http_only,
                });
                for (field, value) in [
                    ("url", url),
                    ("domain", cookie.domain.clone()),
                    ("path", cookie.path.clone()),
                ] {
                    if let Some(value) = value {
                        param[field] = json!(value);
                    }
                }
                param
            })
            .collect();
        self.page
            .call::<IgnoredAny>("Network.setCookies", json!({ "cookies": params }))
            .await
            .map_err(|error| {
                CodedError::new(
                    ErrorCode::StepFailed,
                    format!("cannot set cookies: {error}"),
                )
            })?;
        Ok(())
    }

    /// The HTML of the page as it is now (after its scripts ran).
    pub(crate) async fn html(&self) -> Result<String, CodedError> {
        let value = self.evaluate_json(
            "(document.doctype ? new XMLSerializer().serializeToString(document.doctype) + '\\n' : '') + document.documentElement.outerHTML",
        ).await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// The context's cookies for the current page and its origin's localStorage.
    pub(crate) async fn storage_state(&self) -> Result<Value, CodedError> {
        #[derive(Deserialize)]
        struct Cookies {
            cookies: Vec<Cookie>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Cookie {
            name: String,
            value: String,
            domain: String,
            path: String,
            expires: f64,
            http_only: bool,
            secure: bool,
        }
        // Without `urls`, the cookies the current page would send.
        let reply: Cookies = self
            .page
            .call("Network.getCookies", json!({}))
            .await
            .map_err(|error| self.handle.classify(&error, "cannot read cookies"))?;
        let cookies: Vec<Value> = reply
            .cookies
            .into_iter()
            .map(|cookie| {
                json!({
                    "name": cookie.name, "value": cookie.value, "domain": cookie.domain,
                    "path": cookie.path, "expires": cookie.expires, "http_only": cookie.http_only,
                    "secure": cookie.secure,
                })
            })
            .collect();
        let local = self.evaluate_json(
            "(() => { try { return {origin: location.origin, local_storage: Object.fromEntries(Object.entries(localStorage))}; } catch (error) { return null; } })()",
        ).await?;
        Ok(
            json!({"cookies": cookies, "origins": if local.is_null() { json!([]) } else { json!([local]) }}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_for_javascript() {
        assert_eq!(js_string("a\"b</script>"), "\"a\\\"b</script>\"");
    }

    #[test]
    fn step_errors_name_the_step() {
        let step = Step::Click {
            selector: "#missing".into(),
            timeout_ms: None,
        };
        let error = name_step(
            CodedError::new(ErrorCode::SelectorNotFound, "no visible element"),
            3,
            &step,
        );
        assert_eq!(error.code, ErrorCode::SelectorNotFound);
        assert!(
            error.message.starts_with("steps[3] (click)"),
            "{}",
            error.message
        );
    }
}
