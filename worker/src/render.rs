//! The three kinds of task body a worker runs in a page: `screenshot`, `pdf`, and the
//! browse tasks (`content`, `scrape`, `script`: a start URL, optional steps and a final
//! capture of HTML or data). `render` opens the task's page in a fresh context with its
//! event log and request guard, runs the body through a [`Session`], and returns the
//! files with the page's network and console logs.
//!
//! A browse task's steps come from `operator_domain::steps` (one module per action).
//! Each step runs under its own timeout (default 10 s) and the task's deadline,
//! whichever comes first; when the task's deadline is what ran out, the error is
//! `task_timeout` (the task is `timed_out`), otherwise the step's own error. Each
//! step's outcome (action, duration, error) is reported as the task's progress as soon
//! as it ends.

use std::sync::Arc;
use std::time::Instant;

use operator_domain::agent::{mask_secrets, mask_secrets_in};
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::network::NetworkPolicy;
use operator_domain::steps::{StepFile, StepOutput, StepPage};
use operator_domain::{
    BlockableResource, BrowseInput, PdfInput, ScreenshotInput, Step, TaskKind, TaskSpec, WaitSpec,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::agent::journal::Journal;
use crate::agent::model::ModelClient;
use crate::agent::{self, AgentRun, AgentRuntime};
use crate::browser::{BrowserHandle, PreparedPage};
use crate::events::{ConsoleEntry, PageEvents};
use crate::guard::RequestGuard;
use crate::session::{Session, StopSignal};

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

/// What one render needs besides the page.
pub struct RenderJob<'a> {
    pub spec: &'a TaskSpec,
    pub policy: &'a NetworkPolicy,
    pub deadline: Instant,
    pub stop: &'a StopSignal,
    pub progress: ProgressSink<'a>,
    pub log_sink: mpsc::UnboundedSender<ConsoleEntry>,
    pub agent: &'a AgentRuntime,
    /// The model an agent task talks to (the tenant's own or the service's), or why
    /// there is none.
    pub model: Option<&'a Result<Arc<ModelClient>, CodedError>>,
    /// Where an agent task's steps are recorded (none when the task holds no lease).
    pub journal: Option<&'a Journal>,
}

/// Runs a task in a new isolated context.
pub async fn render(
    handle: &Arc<BrowserHandle>,
    job: RenderJob<'_>,
) -> Result<Rendered, RenderFailure> {
    let RenderJob {
        spec,
        policy,
        deadline,
        stop,
        progress,
        log_sink,
        agent: agent_runtime,
        model,
        journal,
    } = job;
    // An agent task without a model fails before it takes a page.
    let model = match (spec, model) {
        (TaskSpec::Agent(_), Some(model)) => {
            Some(Arc::clone(model.as_ref().map_err(Clone::clone)?))
        }
        (TaskSpec::Agent(_), None) => {
            return Err(CodedError::new(ErrorCode::LlmNotConfigured, "no language model").into());
        }
        _ => None,
    };
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
    let blocked = match spec {
        TaskSpec::Content(input) | TaskSpec::Scrape(input) | TaskSpec::Script(input) => {
            Some((&input.block_resources, &input.block_urls))
        }
        TaskSpec::Agent(input) => {
            guard = guard.confined_to(input.allowed_domains.clone());
            Some((&input.block_resources, &input.block_urls))
        }
        TaskSpec::Screenshot(_) | TaskSpec::Pdf(_) => None,
    };
    if let Some((resources, urls)) = blocked {
        guard = guard.blocking(
            resources
                .iter()
                .map(|resource| match resource {
                    BlockableResource::Image => "Image",
                    BlockableResource::Font => "Font",
                    BlockableResource::Media => "Media",
                    BlockableResource::Stylesheet => "Stylesheet",
                })
                .collect(),
            urls.clone(),
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
        TaskSpec::Screenshot(input) => screenshot(&session, input).await,
        TaskSpec::Pdf(input) => pdf(&session, input).await,
        TaskSpec::Content(input) | TaskSpec::Scrape(input) | TaskSpec::Script(input) => {
            browse(&session, spec.kind(), input, progress).await
        }
        TaskSpec::Agent(input) => match (model, journal) {
            (Some(model), Some(journal)) => {
                agent::run(AgentRun {
                    session: &session,
                    input,
                    model: &model,
                    settings: &agent_runtime.settings,
                    policy,
                    journal,
                })
                .await
            }
            // The model was checked above, before the page was taken.
            _ => Err(CodedError::new(
                ErrorCode::BrowserError,
                "an agent task runs only under a lease (its steps are recorded under it)",
            )),
        },
    };
    // A secret typed into a page may come back in a URL, a console line, the page's
    // text or an error message: each is masked back to its placeholder.
    let secrets = spec.secrets();
    let (mut network_log, mut console_log) = (events.network_log(), events.console_log());
    mask_secrets_in(&mut network_log, secrets);
    mask_secrets_in(&mut console_log, secrets);
    let logs = vec![
        json_file("network.json", &network_log),
        json_file("console.json", &console_log),
    ];
    let result = match result {
        Ok(mut rendered) => {
            rendered.files.extend(logs);
            rendered
                .extra
                .values_mut()
                .for_each(|value| mask_secrets_in(value, secrets));
            Ok(rendered)
        }
        Err(mut error) => {
            error.message = mask_secrets(&error.message, secrets);
            Err(RenderFailure { error, logs })
        }
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

async fn screenshot(
    session: &Session<'_>,
    input: &ScreenshotInput,
) -> Result<Rendered, CodedError> {
    session.set_viewport_unless_default(&input.viewport).await?;
    session
        .open(
            input.url.as_str(),
            &TaskSpec::Screenshot(input.clone()).wait(),
        )
        .await?;
    let bytes = session
        .capture_clip(input.image_type, input.quality, input.full_page, None)
        .await?;
    Ok(Rendered {
        files: vec![RenderedFile {
            name: format!("screenshot.{}", input.image_type.extension()),
            content_type: input.image_type.content_type().to_owned(),
            bytes,
        }],
        page: session.facts().await?,
        extra: serde_json::Map::new(),
    })
}

async fn pdf(session: &Session<'_>, input: &PdfInput) -> Result<Rendered, CodedError> {
    let geometry = input.geometry()?;
    session.set_viewport_unless_default(&input.viewport).await?;
    session
        .open(input.url.as_str(), &TaskSpec::Pdf(input.clone()).wait())
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
    Ok(Rendered {
        files: vec![RenderedFile {
            name: "document.pdf".to_owned(),
            content_type: "application/pdf".to_owned(),
            bytes: session.print_pdf(params).await?,
        }],
        page: session.facts().await?,
        extra: serde_json::Map::new(),
    })
}

/// Receives the list of step outcomes each time a step ends.
pub type ProgressSink<'a> = &'a (dyn Fn(Value) + Sync);

/// Runs a browse task (content, scrape, script) in the session's page.
async fn browse(
    session: &Session<'_>,
    kind: TaskKind,
    input: &BrowseInput,
    progress: ProgressSink<'_>,
) -> Result<Rendered, CodedError> {
    session.apply_page_options(input).await?;
    let mut outcomes = Outcomes {
        list: Vec::new(),
        progress,
        secrets: &input.secrets,
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
        outcomes.record(None, "open", started, opened.as_ref().err());
        opened?;
    }
    let mut output = StepOutput::default();
    let mut previous_sequence = session.event_sequence();
    for (index, step) in input.steps.iter().enumerate() {
        session.check_stop()?;
        let started = Instant::now();
        let sequence_at_start = session.event_sequence();
        // Without secrets the text is typed as written; with them, validation saw to it
        // that every placeholder names one.
        let filled = if input.secrets.is_empty() {
            std::borrow::Cow::Borrowed(step)
        } else {
            std::borrow::Cow::Owned(
                step.with_secrets(&input.secrets)
                    .map_err(|problem| CodedError::new(ErrorCode::InvalidInput, problem))?,
            )
        };
        let outcome = filled
            .run(session, index, previous_sequence, &mut output)
            .await;
        outcomes.record(Some(index), step.action(), started, outcome.as_ref().err());
        previous_sequence = sequence_at_start;
        outcome.map_err(|error| name_step(error, index, step))?;
        session.check_document_allowed()?;
    }
    for (index, extraction) in input.extract.iter().enumerate() {
        let value = extraction.take(session).await.map_err(|error| {
            CodedError::new(
                error.code,
                format!("extract[{index}] ({}): {}", extraction.name, error.message),
            )
        })?;
        output.data.insert(extraction.name.clone(), value);
    }
    let StepOutput { files, data } = output;
    let mut files: Vec<RenderedFile> = files.into_iter().map(RenderedFile::from).collect();
    let mut extra = serde_json::Map::new();
    if kind == TaskKind::Content || input.save_html {
        let html = session.html().await?;
        files.push(RenderedFile {
            name: "page.html".to_owned(),
            content_type: "text/html; charset=utf-8".to_owned(),
            bytes: html.into_bytes(),
        });
    }
    if input.storage_state {
        extra.insert("storage_state".to_owned(), session.storage_state().await?);
    }
    if !data.is_empty() || kind == TaskKind::Scrape {
        extra.insert("data".to_owned(), Value::Object(data));
    }
    extra.insert("steps".to_owned(), Value::Array(outcomes.list));
    Ok(Rendered {
        files,
        page: session.facts().await?,
        extra,
    })
}

impl From<StepFile> for RenderedFile {
    fn from(file: StepFile) -> Self {
        Self {
            name: file.name,
            content_type: file.content_type,
            bytes: file.bytes,
        }
    }
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

/// The outcome of each step so far, reported as progress each time one ends.
struct Outcomes<'a> {
    list: Vec<Value>,
    progress: ProgressSink<'a>,
    secrets: &'a std::collections::BTreeMap<String, String>,
}

impl Outcomes<'_> {
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
            outcome["error"] =
                json!({"code": error.code, "message": mask_secrets(&error.message, self.secrets)});
        }
        self.list.push(outcome);
        (self.progress)(json!({ "steps": self.list }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_errors_name_the_step() {
        let step = Step::Click(operator_domain::steps::Click {
            selector: "#missing".into(),
            timeout_ms: None,
        });
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
