//! One task's page, `Session`, and what it can do: navigate and wait for a load
//! milestone, find elements, type and click, evaluate scripts, capture and print, set
//! the page's options. Every operation is an `async fn` over the CDP client, run on the
//! task's own future: no thread waits for Chromium. `Session` is the step language's
//! [`StepPage`]: the steps themselves live in `operator_domain::steps`, one module per
//! action.
//!
//! Waiting for a navigation is driven by Chromium's lifecycle events
//! (`DOMContentLoaded`, `load`, `networkIdle`) for the navigation's own loader, not by
//! polling the page, so a capture starts as soon as the page is ready. Elements are
//! found with `document.querySelector` polled every 25 ms; clicks and hovers are real
//! mouse events at the element's centre after scrolling it into view.
//!
//! Each operation stops at the task's deadline (`task_timeout`), at a stop request
//! (`cancelled`), when the browser died, and when the network policy refused the
//! page's own document.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::steps::{FRAME_OFFSET, StepPage, find_element};
use operator_domain::{
    BrowseInput, CookieSpec, ElementState, ImageFormat, PaperFormat, Viewport, WaitSpec, WaitUntil,
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::browser::{BrowserHandle, viewport_params};
use crate::cdp::{CdpError, Event, Page};
use crate::events::PageEvents;
use crate::guard::RequestGuard;
use crate::input::{self, Point, PressError};

/// How often an element is looked for while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Quiet time that counts as network idle.
const NETWORK_QUIET: Duration = Duration::from_millis(500);

/// Why a render stops early, checked between steps and while waiting.
#[derive(Clone, Default)]
pub struct StopSignal {
    stopped: Arc<AtomicBool>,
}

impl StopSignal {
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// One task's page and what watches it.
pub(crate) struct Session<'a> {
    pub(crate) handle: &'a Arc<BrowserHandle>,
    pub(crate) page: &'a Page,
    pub(crate) guard: &'a RequestGuard,
    pub(crate) events: &'a PageEvents,
    pub(crate) deadline: Instant,
    pub(crate) stop: &'a StopSignal,
}

impl Session<'_> {
    /// Captures the viewport, the whole page, or `clip` (page coordinates).
    pub(crate) async fn capture_clip(
        &self,
        image_type: ImageFormat,
        quality: Option<u8>,
        full_page: bool,
        clip: Option<Clip>,
    ) -> Result<Vec<u8>, CodedError> {
        let clip = if full_page {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct LayoutMetrics {
                css_content_size: Size,
            }
            #[derive(Deserialize)]
            struct Size {
                width: f64,
                height: f64,
            }
            let metrics: LayoutMetrics =
                self.page
                    .call("Page.getLayoutMetrics", json!({}))
                    .await
                    .map_err(|error| self.handle.classify(&error, "cannot measure the page"))?;
            let size = metrics.css_content_size;
            Some(Clip {
                x: 0.0,
                y: 0.0,
                width: size.width.max(1.0),
                height: size.height.max(1.0),
            })
        } else {
            clip
        };
        let format = match image_type {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Webp => "webp",
        };
        let mut params = json!({
            "format": format,
            "fromSurface": true,
            "captureBeyondViewport": full_page || clip.is_some(),
        });
        if let Some(quality) = quality {
            params["quality"] = json!(quality);
        }
        if let Some(clip) = clip {
            params["clip"] = json!({
                "x": clip.x, "y": clip.y, "width": clip.width, "height": clip.height, "scale": 1,
            });
        }
        let capture: Data = self
            .page
            .call("Page.captureScreenshot", params)
            .await
            .map_err(|error| self.handle.classify(&error, "screenshot failed"))?;
        capture.decode("screenshot")
    }

    /// `Page.printToPDF` with `params`; a page range the document does not have is the
    /// caller's `invalid_input`.
    pub(crate) async fn print_pdf(&self, params: Value) -> Result<Vec<u8>, CodedError> {
        let printed: Data = self
            .page
            .call("Page.printToPDF", params)
            .await
            .map_err(|error| match &error {
                CdpError::Protocol { message, .. }
                    if message.contains("Page range") || message.contains("page range") =>
                {
                    CodedError::new(
                        ErrorCode::InvalidInput,
                        format!("input.page_ranges: {message}"),
                    )
                }
                _ => self.handle.classify(&error, "printing to PDF failed"),
            })?;
        printed.decode("PDF")
    }

    /// Pages come with the default viewport set (see `BrowserHandle::open_page`).
    pub(crate) async fn set_viewport_unless_default(
        &self,
        viewport: &Viewport,
    ) -> Result<(), CodedError> {
        if *viewport == Viewport::default() {
            return Ok(());
        }
        self.set_viewport(viewport).await
    }

    pub(crate) async fn set_viewport(&self, viewport: &Viewport) -> Result<(), CodedError> {
        self.page
            .call::<IgnoredAny>(
                "Emulation.setDeviceMetricsOverride",
                viewport_params(viewport),
            )
            .await
            .map_err(|error| self.handle.classify(&error, "cannot set the viewport"))?;
        Ok(())
    }

    /// Navigates and waits for the requested milestone, selector and delay.
    pub(crate) async fn open(&self, url: &str, wait: &WaitSpec) -> Result<(), CodedError> {
        self.open_until(url, wait, self.deadline).await
    }

    /// [`Session::open`] that gives up at `deadline` (a step's) with `wait_timeout`, or
    /// at the task's deadline with `task_timeout`.
    pub(crate) async fn open_until(
        &self,
        url: &str,
        wait: &WaitSpec,
        deadline: Instant,
    ) -> Result<(), CodedError> {
        let milestone = match wait.wait_until {
            WaitUntil::DomContentLoaded => "DOMContentLoaded",
            WaitUntil::Load => "load",
            WaitUntil::NetworkIdle => "networkIdle",
        };
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Lifecycle {
            loader_id: String,
            name: String,
        }
        let (sender, mut receiver) = mpsc::unbounded_channel::<(String, String)>();
        let subscription = self.page.subscribe(move |event: &Event| {
            if event.method == "Page.lifecycleEvent"
                && let Some(lifecycle) = event.parse::<Lifecycle>()
            {
                let _receiver_gone = sender.send((lifecycle.loader_id, lifecycle.name));
            }
        });
        let outcome = self
            .navigate_and_wait(url, milestone, &mut receiver, deadline)
            .await;
        drop(subscription);
        outcome?;
        if let Some(selector) = &wait.wait_for_selector {
            self.wait_for_selector(selector).await?;
        }
        if wait.delay_ms > 0 {
            self.sleep_within_task(Duration::from_millis(u64::from(wait.delay_ms)))
                .await?;
        }
        Ok(())
    }

    async fn navigate_and_wait(
        &self,
        url: &str,
        milestone: &str,
        events: &mut mpsc::UnboundedReceiver<(String, String)>,
        deadline: Instant,
    ) -> Result<(), CodedError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Navigated {
            loader_id: Option<String>,
            error_text: Option<String>,
        }
        let navigation: Navigated = self
            .page
            .call("Page.navigate", json!({ "url": url }))
            .await
            .map_err(|error| self.handle.classify(&error, "navigation failed"))?;
        self.check_document_allowed()?;
        if let Some(error_text) = navigation.error_text.filter(|text| !text.is_empty()) {
            return Err(CodedError::new(
                ErrorCode::NavigationFailed,
                format!("cannot load {url}: {error_text}"),
            ));
        }
        // A same-document navigation has no loader and fires no lifecycle events.
        let Some(loader_id) = navigation.loader_id else {
            return Ok(());
        };
        loop {
            self.check_stop()?;
            self.check_document_allowed()?;
            let remaining = self.remaining()?;
            let step_remaining = deadline.saturating_duration_since(Instant::now());
            if step_remaining.is_zero() {
                return Err(CodedError::new(
                    ErrorCode::WaitTimeout,
                    format!("{url} did not reach {milestone} within the step's timeout"),
                ));
            }
            let wait = remaining
                .min(step_remaining)
                .min(Duration::from_millis(100));
            match tokio::time::timeout(wait, events.recv()).await {
                Ok(Some((event_loader, name)))
                    if event_loader == loader_id && name == milestone =>
                {
                    return Ok(());
                }
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => {
                    self.handle.mark_broken();
                    return Err(CodedError::new(
                        ErrorCode::BrowserCrashed,
                        "the page went away while loading",
                    ));
                }
            }
        }
    }

    async fn wait_for_selector(&self, selector: &str) -> Result<(), CodedError> {
        let find = find_element(selector);
        let probe = format!(
            "(() => {{ let element; try {{ element = {find}; }} catch (error) {{ return 'invalid'; }} \
             if (!element) return false; const box = element.getBoundingClientRect(); \
             const style = element.ownerDocument.defaultView.getComputedStyle(element); \
             return box.width > 0 && box.height > 0 && style.visibility !== 'hidden' && style.display !== 'none'; }})()"
        );
        loop {
            self.check_stop()?;
            let remaining = self.remaining().map_err(|_| {
                CodedError::new(
                    ErrorCode::WaitTimeout,
                    format!("no visible element matched {selector:?} before the task's timeout"),
                )
            })?;
            match self.evaluate_json(&probe).await? {
                Value::Bool(true) => return Ok(()),
                Value::String(answer) if answer == "invalid" => {
                    return Err(CodedError::new(
                        ErrorCode::InvalidInput,
                        format!(
                            "input.wait_for_selector: {selector:?} is not a valid CSS selector"
                        ),
                    ));
                }
                _ => tokio::time::sleep(remaining.min(Duration::from_millis(50))).await,
            }
        }
    }

    /// Sleeps for `duration` within the task's deadline.
    async fn sleep_within_task(&self, duration: Duration) -> Result<(), CodedError> {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.check_stop()?;
            let remaining = self.remaining()?;
            tokio::time::sleep(
                remaining
                    .min(until - Instant::now())
                    .min(Duration::from_millis(50)),
            )
            .await;
        }
        Ok(())
    }

    /// The final URL and title, for the task's result.
    pub(crate) async fn facts(&self) -> Result<serde_json::Value, CodedError> {
        // One call, one round trip.
        let mut facts = self
            .evaluate_json("({url: location.href, title: document.title})")
            .await?;
        self.check_document_allowed()?;
        let (refused, refused_total) = self.guard.refusals();
        if refused_total > 0 {
            facts["blocked_requests"] =
                serde_json::json!({"total": refused_total, "requests": refused});
        }
        Ok(facts)
    }

    /// Fails the task when the network policy refused the page's own document (the
    /// navigation itself or a redirect of it).
    pub(crate) fn check_document_allowed(&self) -> Result<(), CodedError> {
        match self.guard.document_refusal() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    pub(crate) fn check_stop(&self) -> Result<(), CodedError> {
        self.handle.check_alive()?;
        if self.stop.is_stopped() {
            Err(CodedError::new(ErrorCode::Cancelled, "stopped"))
        } else {
            Ok(())
        }
    }

    pub(crate) fn remaining(&self) -> Result<Duration, CodedError> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            Err(CodedError::new(
                ErrorCode::TaskTimeout,
                "the task ran past its timeout",
            ))
        } else {
            Ok(remaining)
        }
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
            "(() => {{ let element; try {{ element = {}; }} catch (error) {{ return 'invalid'; }} \
             if (!element) return 'missing'; const box = element.getBoundingClientRect(); const style = element.ownerDocument.defaultView.getComputedStyle(element); \
             return box.width > 0 && box.height > 0 && style.visibility !== 'hidden' && style.display !== 'none' ? 'visible' : 'hidden'; }})()",
            find_element(selector)
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
            "(() => {{ const element = {}; element.scrollIntoView({{block: 'center', inline: 'center'}}); \
             const box = element.getBoundingClientRect(); const frame = {FRAME_OFFSET}(element); \
             return {{x: frame.x + box.left + box.width / 2, y: frame.y + box.top + box.height / 2}}; }})()",
            find_element(selector)
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
            "(() => {{ const element = {}; element.scrollIntoView({{block: 'nearest'}}); \
             const box = element.getBoundingClientRect(); const frame = {FRAME_OFFSET}(element); \
             return {{x: frame.x + box.left + window.scrollX, y: frame.y + box.top + window.scrollY, width: box.width, height: box.height}}; }})()",
            find_element(selector)
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
            "(() => {{ const element = {}; element.focus(); \
             if ({clear} && 'value' in element) {{ element.value = ''; element.dispatchEvent(new Event('input', {{bubbles: true}})); }} return true; }})()",
            find_element(selector)
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
        headers: &BTreeMap<String, String>,
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

impl StepPage for Session<'_> {
    fn task_deadline(&self) -> Instant {
        self.deadline
    }

    fn event_sequence(&self) -> u64 {
        self.events.sequence()
    }

    async fn open(&self, url: &str, wait: &WaitSpec, deadline: Instant) -> Result<(), CodedError> {
        self.open_until(url, wait, deadline).await
    }

    async fn wait_element(
        &self,
        selector: &str,
        state: ElementState,
        deadline: Instant,
    ) -> Result<(), CodedError> {
        Session::wait_element(self, selector, state, deadline).await
    }

    async fn click(&self, selector: &str, deadline: Instant) -> Result<(), CodedError> {
        let point = self.element_centre(selector, deadline).await?;
        input::click(self.page, point)
            .await
            .map_err(|error| self.handle.classify(&error, "click failed"))
    }

    async fn hover(&self, selector: &str, deadline: Instant) -> Result<(), CodedError> {
        let point = self.element_centre(selector, deadline).await?;
        input::move_mouse(self.page, point)
            .await
            .map_err(|error| self.handle.classify(&error, "hover failed"))
    }

    async fn focus(&self, selector: &str, clear: bool) -> Result<(), CodedError> {
        Session::focus(self, selector, clear).await
    }

    async fn insert_text(&self, text: &str) -> Result<(), CodedError> {
        Session::insert_text(self, text).await
    }

    async fn press_key(&self, key: &str) -> Result<(), CodedError> {
        input::press_key(self.page, key)
            .await
            .map_err(|error| match error {
                PressError::UnknownKey => CodedError::new(
                    ErrorCode::StepFailed,
                    format!("cannot press {key:?}: {error}"),
                ),
                PressError::Cdp(error) => self
                    .handle
                    .classify(&error, &format!("cannot press {key:?}")),
            })
    }

    async fn evaluate(&self, expression: &str) -> Result<Value, CodedError> {
        self.evaluate_json(expression).await
    }

    async fn evaluate_until(
        &self,
        expression: &str,
        deadline: Instant,
    ) -> Result<Value, CodedError> {
        self.evaluate_json_until(expression, deadline).await
    }

    async fn sleep(&self, duration: Duration, deadline: Instant) -> Result<(), CodedError> {
        self.sleep_until(duration, deadline).await
    }

    async fn wait_navigation_since(
        &self,
        sequence: u64,
        deadline: Instant,
    ) -> Result<(), CodedError> {
        self.poll_until(deadline, "no navigation finished", || {
            Ok(self.events.loaded_since(sequence))
        })
        .await
    }

    async fn wait_network_idle(&self, deadline: Instant) -> Result<(), CodedError> {
        self.poll_until(deadline, "the network did not go idle", || {
            Ok(self.events.network_idle_for(NETWORK_QUIET))
        })
        .await
    }

    async fn pause(&self, deadline: Instant, failure: &str) -> Result<(), CodedError> {
        self.wait_a_little(deadline, || failure.to_owned()).await
    }

    async fn capture(
        &self,
        format: ImageFormat,
        quality: Option<u8>,
        full_page: bool,
        element: Option<&str>,
        deadline: Instant,
    ) -> Result<Vec<u8>, CodedError> {
        let clip = match element {
            Some(selector) => Some(self.element_clip(selector, deadline).await?),
            None => None,
        };
        self.capture_clip(format, quality, full_page, clip).await
    }

    async fn print(
        &self,
        format: PaperFormat,
        landscape: bool,
        print_background: bool,
    ) -> Result<Vec<u8>, CodedError> {
        let (width, height) = format.size_inches();
        self.print_pdf(json!({
            "landscape": landscape,
            "displayHeaderFooter": false,
            "printBackground": print_background,
            "paperWidth": width,
            "paperHeight": height,
            "preferCSSPageSize": false,
        }))
        .await
    }

    async fn set_viewport(&self, viewport: &Viewport) -> Result<(), CodedError> {
        Session::set_viewport(self, viewport).await
    }

    async fn set_user_agent(&self, user_agent: &str) -> Result<(), CodedError> {
        Session::set_user_agent(self, user_agent, None).await
    }

    async fn set_extra_headers(
        &self,
        headers: &BTreeMap<String, String>,
    ) -> Result<(), CodedError> {
        Session::set_extra_headers(self, headers).await
    }

    async fn set_cookies(&self, cookies: &[CookieSpec]) -> Result<(), CodedError> {
        Session::set_cookies(self, cookies, None).await
    }
}

/// A rectangle of the page to capture, in CSS pixels from the document's top left.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clip {
    pub(crate) x: f64,
    pub(crate) y: f64,
    pub(crate) width: f64,
    pub(crate) height: f64,
}

/// The answer of `Page.captureScreenshot` and `Page.printToPDF`: the file, in base64.
#[derive(Deserialize)]
struct Data {
    data: String,
}

impl Data {
    fn decode(&self, what: &str) -> Result<Vec<u8>, CodedError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.data)
            .map_err(|error| {
                CodedError::new(
                    ErrorCode::BrowserError,
                    format!("the {what} was not base64: {error}"),
                )
            })
    }
}
