//! What a worker does with a page: open it in a fresh context, wait until it is ready,
//! capture it. Everything here is blocking and runs on the browser pool's threads.
//!
//! Waiting is driven by Chromium's lifecycle events (`DOMContentLoaded`, `load`,
//! `networkIdle`) for the navigation's own loader, not by polling the page, so a capture
//! starts as soon as the page is ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use headless_chrome::Tab;
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::{Emulation, Page};
use headless_chrome::types::PrintToPdfOptions;
use operator_shared::domain::{
    BlockableResource, ImageFormat, PaperFormat, PdfInput, ScreenshotInput, TaskSpec, Viewport,
    WaitSpec, WaitUntil,
};
use operator_shared::error::{CodedError, ErrorCode};
use operator_shared::network::NetworkPolicy;

use crate::browser::{BrowserHandle, PreparedPage};
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
pub fn render(
    handle: &Arc<BrowserHandle>,
    spec: &TaskSpec,
    policy: &NetworkPolicy,
    deadline: Instant,
    stop: &StopSignal,
    progress: ProgressSink<'_>,
    log_sink: tokio::sync::mpsc::UnboundedSender<ConsoleEntry>,
) -> Result<Rendered, RenderFailure> {
    let started = Instant::now();
    // A fresh context with a blank page, opened ahead of time when a spare is ready.
    let PreparedPage { context, tab } = handle.take_page()?;
    // The guard and the event log are in place before the page loads anything.
    let mut guard = RequestGuard::new(policy.clone(), tab.get_target_id().clone());
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
    guard
        .install(&tab)
        .map_err(|error| handle.classify(&error, "cannot watch the page's requests"))?;
    let events = Arc::new(PageEvents::new(tab.get_target_id().clone()).with_log_sink(log_sink));
    events
        .install(&tab)
        .map_err(|error| handle.classify(&error, "cannot watch the page"))?;
    let page_ms = started.elapsed().as_millis() as u64;
    handle.refill_spares_in_background();
    let session = Session {
        handle,
        tab: &tab,
        guard: &guard,
        events: &events,
        deadline,
        stop,
    };
    let result = match spec {
        TaskSpec::Screenshot(input) => session.screenshot(input),
        TaskSpec::Pdf(input) => session.pdf(input),
        TaskSpec::Content(input) | TaskSpec::Scrape(input) | TaskSpec::Script(input) => {
            steps::browse(&session, spec.kind(), input, progress)
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
    // Disposing the context (and its page) is off the task's path.
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop((context, tab)));
        }
        Err(_) => drop(context),
    }
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
    pub(crate) tab: &'a Arc<Tab>,
    pub(crate) guard: &'a RequestGuard,
    pub(crate) events: &'a PageEvents,
    pub(crate) deadline: Instant,
    pub(crate) stop: &'a StopSignal,
}

impl Session<'_> {
    fn screenshot(&self, input: &ScreenshotInput) -> Result<Rendered, CodedError> {
        self.set_viewport_unless_default(&input.viewport)?;
        self.open(
            input.url.as_str(),
            &TaskSpec::Screenshot(input.clone()).wait(),
        )?;
        let bytes = self.capture(input.image_type, input.quality, input.full_page, None)?;
        Ok(Rendered {
            files: vec![RenderedFile {
                name: format!("screenshot.{}", input.image_type.extension()),
                content_type: input.image_type.content_type().to_owned(),
                bytes,
            }],
            page: self.facts()?,
            extra: serde_json::Map::new(),
        })
    }

    /// Captures the viewport, the whole page, or `clip` (page coordinates).
    pub(crate) fn capture(
        &self,
        image_type: ImageFormat,
        quality: Option<u8>,
        full_page: bool,
        clip: Option<Page::Viewport>,
    ) -> Result<Vec<u8>, CodedError> {
        let clip = if full_page {
            let metrics = self
                .tab
                .call_method(Page::GetLayoutMetrics(None))
                .map_err(|error| self.handle.classify(&error, "cannot measure the page"))?;
            let size = metrics.css_content_size;
            Some(Page::Viewport {
                x: 0.0,
                y: 0.0,
                width: size.width.max(1.0),
                height: size.height.max(1.0),
                scale: 1.0,
            })
        } else {
            clip
        };
        let format = match image_type {
            ImageFormat::Png => Page::CaptureScreenshotFormatOption::Png,
            ImageFormat::Jpeg => Page::CaptureScreenshotFormatOption::Jpeg,
            ImageFormat::Webp => Page::CaptureScreenshotFormatOption::Webp,
        };
        let beyond_viewport = full_page || clip.is_some();
        let capture = self
            .tab
            .call_method(Page::CaptureScreenshot {
                format: Some(format),
                quality: quality.map(u32::from),
                clip,
                from_surface: Some(true),
                capture_beyond_viewport: Some(beyond_viewport),
                optimize_for_speed: None,
            })
            .map_err(|error| self.handle.classify(&error, "screenshot failed"))?;
        base64::engine::general_purpose::STANDARD
            .decode(capture.data)
            .map_err(|error| {
                CodedError::new(
                    ErrorCode::BrowserError,
                    format!("screenshot was not base64: {error}"),
                )
            })
    }

    /// Prints the page to PDF with default margins (the `pdf` step).
    pub(crate) fn print(
        &self,
        format: PaperFormat,
        landscape: bool,
        print_background: bool,
    ) -> Result<Vec<u8>, CodedError> {
        let (width, height) = format.size_inches();
        self.tab
            .print_to_pdf(Some(PrintToPdfOptions {
                landscape: Some(landscape),
                display_header_footer: Some(false),
                print_background: Some(print_background),
                scale: None,
                paper_width: Some(width),
                paper_height: Some(height),
                margin_top: None,
                margin_bottom: None,
                margin_left: None,
                margin_right: None,
                page_ranges: None,
                ignore_invalid_page_ranges: None,
                header_template: None,
                footer_template: None,
                prefer_css_page_size: Some(false),
                transfer_mode: None,
                generate_document_outline: None,
                generate_tagged_pdf: None,
            }))
            .map_err(|error| self.handle.classify(&error, "printing to PDF failed"))
    }

    fn pdf(&self, input: &PdfInput) -> Result<Rendered, CodedError> {
        let geometry = input.geometry()?;
        self.set_viewport_unless_default(&input.viewport)?;
        self.open(input.url.as_str(), &TaskSpec::Pdf(input.clone()).wait())?;
        let bytes = self
            .tab
            .print_to_pdf(Some(PrintToPdfOptions {
                landscape: Some(input.landscape),
                display_header_footer: Some(false),
                print_background: Some(input.print_background),
                scale: Some(input.scale),
                paper_width: Some(geometry.width),
                paper_height: Some(geometry.height),
                margin_top: Some(geometry.margin_top),
                margin_bottom: Some(geometry.margin_bottom),
                margin_left: Some(geometry.margin_left),
                margin_right: Some(geometry.margin_right),
                page_ranges: input.page_ranges.clone(),
                ignore_invalid_page_ranges: None,
                header_template: None,
                footer_template: None,
                prefer_css_page_size: Some(false),
                transfer_mode: None,
                generate_document_outline: None,
                generate_tagged_pdf: None,
            }))
            .map_err(|error| {
                let message = error.to_string();
                if message.contains("Page range") || message.contains("page range") {
                    CodedError::new(
                        ErrorCode::InvalidInput,
                        format!("input.page_ranges: {message}"),
                    )
                } else {
                    self.handle.classify(&error, "printing to PDF failed")
                }
            })?;
        Ok(Rendered {
            files: vec![RenderedFile {
                name: "document.pdf".to_owned(),
                content_type: "application/pdf".to_owned(),
                bytes,
            }],
            page: self.facts()?,
            extra: serde_json::Map::new(),
        })
    }

    /// Pages come with the default viewport set (see `BrowserHandle::open_page`).
    pub(crate) fn set_viewport_unless_default(
        &self,
        viewport: &Viewport,
    ) -> Result<(), CodedError> {
        if *viewport == Viewport::default() {
            return Ok(());
        }
        self.set_viewport(viewport)
    }

    pub(crate) fn set_viewport(&self, viewport: &Viewport) -> Result<(), CodedError> {
        self.tab
            .call_method(Emulation::SetDeviceMetricsOverride {
                width: viewport.width,
                height: viewport.height,
                device_scale_factor: viewport.device_scale_factor,
                mobile: false,
                scale: None,
                screen_width: None,
                screen_height: None,
                position_x: None,
                position_y: None,
                dont_set_visible_size: None,
                screen_orientation: None,
                viewport: None,
                display_feature: None,
                device_posture: None,
            })
            .map_err(|error| self.handle.classify(&error, "cannot set the viewport"))?;
        Ok(())
    }

    /// Navigates and waits for the requested milestone, selector and delay.
    pub(crate) fn open(&self, url: &str, wait: &WaitSpec) -> Result<(), CodedError> {
        self.open_until(url, wait, self.deadline)
    }

    /// [`Session::open`] that gives up at `deadline` (a step's) with `wait_timeout`, or
    /// at the task's deadline with `task_timeout`.
    pub(crate) fn open_until(
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
        let (sender, receiver) = mpsc::channel::<(String, String)>();
        let listener = self
            .tab
            .add_event_listener(Arc::new(move |event: &Event| {
                if let Event::PageLifecycleEvent(lifecycle) = event {
                    let _receiver_gone = sender.send((
                        lifecycle.params.loader_id.clone(),
                        lifecycle.params.name.clone(),
                    ));
                }
            }))
            .map_err(|error| self.handle.classify(&error, "cannot watch the page"))?;
        let outcome = self.navigate_and_wait(url, milestone, &receiver, deadline);
        let _already_removed = self.tab.remove_event_listener(&listener);
        outcome?;
        if let Some(selector) = &wait.wait_for_selector {
            self.wait_for_selector(selector)?;
        }
        if wait.delay_ms > 0 {
            self.sleep(Duration::from_millis(u64::from(wait.delay_ms)))?;
        }
        Ok(())
    }

    fn navigate_and_wait(
        &self,
        url: &str,
        milestone: &str,
        events: &mpsc::Receiver<(String, String)>,
        deadline: Instant,
    ) -> Result<(), CodedError> {
        let navigation = self
            .tab
            .call_method(Page::Navigate {
                url: url.to_owned(),
                referrer: None,
                transition_Type: None,
                frame_id: None,
                referrer_policy: None,
            })
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
            match events.recv_timeout(
                remaining
                    .min(step_remaining)
                    .min(Duration::from_millis(100)),
            ) {
                Ok((event_loader, name)) if event_loader == loader_id && name == milestone => {
                    return Ok(());
                }
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.handle.mark_broken();
                    return Err(CodedError::new(
                        ErrorCode::BrowserCrashed,
                        "the page went away while loading",
                    ));
                }
            }
        }
    }

    fn wait_for_selector(&self, selector: &str) -> Result<(), CodedError> {
        let selector_literal = serde_json::to_string(selector).unwrap_or_default();
        let probe = format!(
            "(() => {{ const element = document.querySelector({selector_literal}); \
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
            let answer = self
                .tab
                .evaluate(&probe, false)
                .map_err(|error| self.handle.classify(&error, "cannot query the page"))?;
            if let Some(details) = answer
                .description
                .as_deref()
                .filter(|_| answer.value.is_none())
                && answer.Type == headless_chrome::protocol::cdp::Runtime::RemoteObjectType::Object
                && details.contains("SyntaxError")
            {
                return Err(CodedError::new(
                    ErrorCode::InvalidInput,
                    format!("input.wait_for_selector: {selector:?} is not a valid CSS selector"),
                ));
            }
            if answer.value == Some(serde_json::Value::Bool(true)) {
                return Ok(());
            }
            std::thread::sleep(remaining.min(Duration::from_millis(50)));
        }
    }

    fn sleep(&self, duration: Duration) -> Result<(), CodedError> {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.check_stop()?;
            let remaining = self.remaining()?;
            std::thread::sleep(
                remaining
                    .min(until - Instant::now())
                    .min(Duration::from_millis(50)),
            );
        }
        Ok(())
    }

    /// The final URL and title, for the task's result.
    pub(crate) fn facts(&self) -> Result<serde_json::Value, CodedError> {
        // One call: each CDP call costs up to 100 ms in headless_chrome's transport.
        let mut facts = self.evaluate_json("({url: location.href, title: document.title})")?;
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
