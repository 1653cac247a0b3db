//! What a worker does with a page: open it in a fresh context, wait until it is ready,
//! capture it. Every page operation is an `async fn` over the CDP client, run on the
//! task's own future: no thread waits for Chromium.
//!
//! Waiting is driven by Chromium's lifecycle events (`DOMContentLoaded`, `load`,
//! `networkIdle`) for the navigation's own loader, not by polling the page, so a capture
//! starts as soon as the page is ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::network::NetworkPolicy;
use operator_domain::{
    BlockableResource, ImageFormat, PaperFormat, PdfInput, ScreenshotInput, TaskSpec, Viewport,
    WaitSpec, WaitUntil,
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::browser::{BrowserHandle, PreparedPage, viewport_params};
use crate::cdp::{CdpError, Event, Page};
use crate::events::{ConsoleEntry, PageEvents};
use crate::guard::RequestGuard;
use crate::steps::{self, ProgressSink};

/// A file the task produced, before upload.
#[derive(Debug, Clone)]
pub struct RenderedFile {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// What rendering produced.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub files: Vec<RenderedFile>,
    /// Facts about the page for the task's result.
    pub page: serde_json::Value,
    /// More top-level keys of the task's result (`data`, `steps`, `storage_state`).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A failed render: the error, and the page's logs up to the failure (none when it
/// failed before a page was open).
#[derive(Debug)]
pub struct RenderFailure {
    pub error: CodedError,
    pub logs: Vec<RenderedFile>,
}

impl From<CodedError> for RenderFailure {
    fn from(error: CodedError) -> Self {
        Self {
            error,
            logs: Vec::new(),
        }
    }
}

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

/// Renders a task in a new isolated context. Blocking.
pub async fn render(
    handle: &Arc<BrowserHandle>,
    spec: &TaskSpec,
    policy: &NetworkPolicy,
    deadline: Instant,
    stop: &StopSignal,
    progress: ProgressSink<'_>,
    log_sink: mpsc::UnboundedSender<ConsoleEntry>,
) -> Result<Rendered, RenderFailure> {
    let started = Instant::now();
    // A fresh context with a blank page, opened ahead of time when a spare is ready.
    let PreparedPage {
        context,
        page,
        interception,
    } = handle.take_page().await?;
    // The event log and the guard are in place before the page loads anything.
    let events = Arc::new(PageEvents::new(page.target_id()).with_log_sink(log_sink));
    let events_subscription = events.install(&page);
    let mut guard =
        RequestGuard::new(policy.clone(), page.target_id()).with_egress(handle.egress_refusals());
    if let TaskSpec::Content(input) | TaskSpec::Scrape(input) | TaskSpec::Script(input) = spec {
        guard = guard.blocking(
            input
                .block_resources
                .iter()
                .map(|resource| match resource {
                    BlockableResource::Image => "Image",
                    BlockableResource::Font => "Font",
                    BlockableResource::Media => "Media",
                    BlockableResource::Stylesheet => "Stylesheet",
                })
                .collect(),
            input.block_urls.clone(),
        );
    }
    let guard = Arc::new(guard);
    interception.install(Arc::clone(&guard));
    let page_ms = started.elapsed().as_millis() as u64;
    let session = Session {
        handle,
        page: &page,
        guard: &guard,
        events: &events,
        deadline,
        stop,
    };
    let result = match spec {
        TaskSpec::Screenshot(input) => session.screenshot(input).await,
        TaskSpec::Pdf(input) => session.pdf(input).await,
        TaskSpec::Content(input) | TaskSpec::Scrape(input) | TaskSpec::Script(input) => {
            steps::browse(&session, spec.kind(), input, progress).await
        }
    };
    let logs = vec![
        json_file("network.json", &events.network_log()),
        json_file("console.json", &events.console_log()),
    ];
    let result = match result {
        Ok(mut rendered) => {
            rendered.files.extend(logs);
            Ok(rendered)
        }
        Err(error) => Err(RenderFailure { error, logs }),
    };
    let rendered_ms = started.elapsed().as_millis() as u64;
    tracing::debug!(page_ms, rendered_ms, "render timings");
    // The spare this task took is replaced now that its page is captured, not while it
    // loads: Chromium opening a context and a renderer alongside a navigation slowed the
    // navigation from about 40 ms to 150-200 ms here. A client that waits between
    // requests gets the refill in that gap; back-to-back requests still overlap it.
    handle.refill_spares_in_background();
    // The page's listeners go; disposing its context is sent without waiting.
    drop((events_subscription, interception, page, context));
    result
}

fn json_file(name: &str, value: &serde_json::Value) -> RenderedFile {
    RenderedFile {
        name: name.to_owned(),
        content_type: "application/json".to_owned(),
        bytes: serde_json::to_vec_pretty(value).unwrap_or_default(),
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
    async fn screenshot(&self, input: &ScreenshotInput) -> Result<Rendered, CodedError> {
        self.set_viewport_unless_default(&input.viewport).await?;
        self.open(
            input.url.as_str(),
            &TaskSpec::Screenshot(input.clone()).wait(),
        )
        .await?;
        let bytes = self
            .capture(input.image_type, input.quality, input.full_page, None)
            .await?;
        Ok(Rendered {
            files: vec![RenderedFile {
                name: format!("screenshot.{}", input.image_type.extension()),
                content_type: input.image_type.content_type().to_owned(),
                bytes,
            }],
            page: self.facts().await?,
            extra: serde_json::Map::new(),
        })
    }

    /// Captures the viewport, the whole page, or `clip` (page coordinates).
    pub(crate) async fn capture(
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

    /// Prints the page to PDF with default margins (the `pdf` step).
    pub(crate) async fn print(
        &self,
        format: PaperFormat,
        landscape: bool,
        print_background: bool,
    ) -> Result<Vec<u8>, CodedError> {
        let (width, height) = format.size_inches();
        let printed: Data = self
            .page
            .call(
                "Page.printToPDF",
                json!({
                    "landscape": landscape,
                    "displayHeaderFooter": false,
                    "printBackground": print_background,
                    "paperWidth": width,
                    "paperHeight": height,
                    "preferCSSPageSize": false,
                }),
            )
            .await
            .map_err(|error| self.handle.classify(&error, "printing to PDF failed"))?;
        printed.decode("PDF")
    }

    async fn pdf(&self, input: &PdfInput) -> Result<Rendered, CodedError> {
        let geometry = input.geometry()?;
        self.set_viewport_unless_default(&input.viewport).await?;
        self.open(input.url.as_str(), &TaskSpec::Pdf(input.clone()).wait())
            .await?;
        let mut params = json!({
            "landscape": input.landscape,
            "displayHeaderFooter": false,
            "printBackground": input.print_background,
            "scale": input.scale,
            "paperWidth": geometry.width,
            "paperHeight": geometry.height,
            "marginTop": geometry.margin_top,
            "marginBottom": geometry.margin_bottom,
            "marginLeft": geometry.margin_left,
            "marginRight": geometry.margin_right,
            "preferCSSPageSize": false,
        });
        if let Some(ranges) = &input.page_ranges {
            params["pageRanges"] = json!(ranges);
        }
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
        Ok(Rendered {
            files: vec![RenderedFile {
                name: "document.pdf".to_owned(),
                content_type: "application/pdf".to_owned(),
                bytes: printed.decode("PDF")?,
            }],
            page: self.facts().await?,
            extra: serde_json::Map::new(),
        })
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
            self.sleep(Duration::from_millis(u64::from(wait.delay_ms)))
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
        let selector_literal = serde_json::to_string(selector).unwrap_or_default();
        let probe = format!(
            "(() => {{ let element; try {{ element = document.querySelector({selector_literal}); }} catch (error) {{ return 'invalid'; }} \
             if (!element) return false; const box = element.getBoundingClientRect(); \
             const style = getComputedStyle(element); \
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

    async fn sleep(&self, duration: Duration) -> Result<(), CodedError> {
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
