//! Runs one claimed task from start to recorded outcome.
//!
//! 1. Start an attempt in the database, guarded by the claim's lease token (a task that
//!    was cancelled or finished meanwhile is dropped; one still leased elsewhere waits).
//! 2. Heartbeat: renew the lease in the queue and the database every third of its life;
//!    the database renewal is authoritative and also carries cancellation requests,
//!    which the event bus pushes too, so a cancelled task stops at once.
//! 3. Check the target against the network policy, render in a fresh browser context
//!    under the task's deadline, upload the files.
//! 4. Record exactly one outcome (guarded by the token), then ack or requeue the claim.
//!
//! Failures are classified: final ones fail the task at once, retryable ones go back to
//! the queue with exponential backoff and full jitter until the attempts run out (`dead`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::network::NetworkPolicy;
use operator_domain::{
    ArtifactId, LeaseToken, NewArtifact, TaskId, TaskOutcome, TaskRecord, TaskSpec, TenantId,
};
use operator_store::db::{FinishOutcome, LeaseRenewal, StartOutcome, TaskRepository};
use operator_store::queue::{Claim, SharedQueue};
use operator_store::storage::ArtifactStore;
use rand::Rng;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, info, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::agent::AgentRuntime;
use crate::agent::journal::Journal;
use crate::browser::BrowserPool;
use crate::events::ConsoleEntry;
use crate::render::{self, RenderFailure, RenderJob, Rendered, RenderedFile};
use crate::session::StopSignal;

/// Exponential backoff with full jitter: a random delay in `[0, min(max, base·2^(n-1))]`.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1 << exponent).min(self.max);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

/// The span of one attempt. It continues the trace of the request that submitted the
/// task (the W3C `traceparent` stored with it), so the client's trace shows the work its
/// request caused, however long the task waited in the queue. It is made after the
/// attempt has started, since a span's parent can only be set before it is first
/// entered; the claim's own `task` span stays the worker's.
pub fn attempt_span(task_id: TaskId, attempt: u32, trace_parent: Option<&str>) -> Span {
    let span = info_span!("attempt", task_id = %task_id, attempt);
    if let Some(trace_parent) = trace_parent {
        let carrier = HashMap::from([("traceparent".to_owned(), trace_parent.to_owned())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        // Without trace export (no OpenTelemetry layer) there is nothing to join.
        if let Err(error) = span.set_parent(parent) {
            debug!(error = %error, "attempt span not linked to the submitter's trace");
        }
    }
    span
}

/// Why a running task must stop before it finishes on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    None,
    /// A client cancelled it.
    Cancelled,
    /// The lease was lost: another worker may own the task now; write nothing.
    LeaseLost,
}

pub struct TaskRunner {
    pub worker_id: String,
    pub repo: TaskRepository,
    pub queue: SharedQueue,
    pub storage: ArtifactStore,
    pub pool: Arc<BrowserPool>,
    pub policy: NetworkPolicy,
    pub lease_ttl: Duration,
    pub retry: RetryPolicy,
    /// Fired when the shutdown grace period ends: running tasks hand their leases back.
    pub hard_stop: CancellationToken,
    /// The model and settings agent tasks run with.
    pub agent: Arc<AgentRuntime>,
}

impl TaskRunner {
    pub async fn run(&self, claim: Claim) {
        let span = info_span!("task", task_id = %claim.task_id, tenant = %claim.tenant);
        self.run_claim(claim).instrument(span).await;
    }

    async fn run_claim(&self, claim: Claim) {
        let record = match self
            .repo
            .start_attempt(
                claim.task_id,
                claim.token,
                &self.worker_id,
                claim.lease_until,
            )
            .await
        {
            Ok(StartOutcome::Started(record)) => *record,
            Ok(StartOutcome::Finished(state)) => {
                info!(state = %state, "claimed task is no longer runnable; dropping it");
                self.settle_claim(&claim).await;
                return;
            }
            Ok(StartOutcome::Missing) => {
                warn!("claimed task does not exist; dropping it");
                self.settle_claim(&claim).await;
                return;
            }
            Ok(StartOutcome::Held(until)) => {
                info!(until = %until, "another worker's lease is still valid; retrying later");
                self.requeue_claim(&claim, Some(until)).await;
                return;
            }
            Err(error) => {
                // The database is unreachable: leave the lease to expire and the task to
                // be claimed again.
                warn!(error = %error, "cannot start the task");
                return;
            }
        };
        info!(attempt = record.attempts, kind = %record.kind, "task started");
        let span = attempt_span(record.id, record.attempts, record.trace_parent.as_deref());
        self.run_attempt(claim, record).instrument(span).await;
    }

    /// Runs a started attempt to its recorded outcome.
    async fn run_attempt(&self, claim: Claim, record: TaskRecord) {
        let (interrupt_sender, interrupt) = watch::channel(Interrupt::None);
        let heartbeat = tokio::spawn(heartbeat(
            self.repo.clone(),
            SharedQueue::clone(&self.queue),
            claim.clone(),
            self.lease_ttl,
            interrupt_sender,
        ));
        let outcome = self.execute(&record, interrupt).await;
        heartbeat.abort();

        let Some(outcome) = outcome else {
            warn!("lease lost while running; another worker owns the task now");
            return;
        };
        let requeue_at = match &outcome {
            TaskOutcome::Retry { run_at, .. } => Some(Some(*run_at)),
            TaskOutcome::Released => Some(None),
            _ => None,
        };
        let state = outcome.next_state();
        let uploaded: Vec<String> = match &outcome {
            TaskOutcome::Succeeded { artifacts, .. } => artifacts
                .iter()
                .map(|artifact| artifact.storage_key.clone())
                .collect(),
            _ => Vec::new(),
        };
        match self.repo.finish(claim.task_id, claim.token, outcome).await {
            Ok(FinishOutcome::Recorded(_)) => {
                info!(state = %state, "task outcome recorded");
                match requeue_at {
                    Some(not_before) => self.requeue_claim(&claim, not_before).await,
                    None => self.settle_claim(&claim).await,
                }
            }
            Ok(FinishOutcome::LeaseLost) => {
                warn!("lease lost before the outcome was recorded; discarding it");
                for key in uploaded {
                    // The new owner uploads its own artifacts under its own attempt's
                    // keys; a file left here is an orphan, not a wrong result.
                    if let Err(error) = self.storage.delete(&key).await {
                        warn!(key = %key, error = %error, "cannot delete an artifact of the discarded outcome; it stays orphaned in storage");
                    }
                }
            }
            Err(error) => {
                warn!(error = %error, "cannot record the outcome; the lease will expire and the task run again");
            }
        }
    }

    /// Runs the task; `None` when the lease was lost (nothing may be written).
    async fn execute(
        &self,
        record: &TaskRecord,
        mut interrupt: watch::Receiver<Interrupt>,
    ) -> Option<TaskOutcome> {
        let spec = match record.spec() {
            Ok(spec) => spec,
            Err(error) => return Some(TaskOutcome::Failed { error }),
        };
        let timeout = Duration::from_millis(record.timeout_ms);
        let deadline = Instant::now() + timeout;
        let stop = StopSignal::default();
        let work = self.render_and_store(record, spec, deadline, stop.clone());
        tokio::pin!(work);
        // A little slack past the deadline: the render notices the deadline itself and
        // reports `task_timeout`; the async timeout is the backstop for a hung browser call.
        let backstop = tokio::time::sleep(timeout + Duration::from_secs(2));
        tokio::pin!(backstop);
        let result = loop {
            tokio::select! {
                result = &mut work => break Ok(result),
                () = &mut backstop => {
                    stop.stop();
                    warn!("a browser call overran the task deadline");
                    break Err(TaskOutcome::TimedOut {
                        error: CodedError::new(ErrorCode::TaskTimeout, format!("the task ran past its timeout of {} ms", record.timeout_ms)),
                    });
                }
                () = self.hard_stop.cancelled() => {
                    stop.stop();
                    break Err(TaskOutcome::Released);
                }
                changed = interrupt.changed() => {
                    if changed.is_err() {
                        // The heartbeat ended without a verdict (aborted): keep running.
                        continue;
                    }
                    match *interrupt.borrow() {
                        Interrupt::None => continue,
                        Interrupt::Cancelled => {
                            stop.stop();
                            break Err(TaskOutcome::Cancelled);
                        }
                        Interrupt::LeaseLost => {
                            stop.stop();
                            return None;
                        }
                    }
                }
            }
        };
        let outcome = match result {
            Err(outcome) => outcome,
            Ok(Ok((rendered_page, extra, artifacts))) => {
                let mut result = json!({
                    "page": rendered_page,
                    "artifacts": artifacts.iter().map(|artifact| json!({
                        "id": artifact.id,
                        "name": artifact.name,
                        "content_type": artifact.content_type,
                        "size_bytes": artifact.size_bytes,
                    })).collect::<Vec<_>>(),
                });
                if let Some(object) = result.as_object_mut() {
                    object.extend(extra);
                }
                TaskOutcome::Succeeded { result, artifacts }
            }
            Ok(Err(error)) => self.classify_failure(record, error),
        };
        Some(outcome)
    }

    fn classify_failure(&self, record: &TaskRecord, error: CodedError) -> TaskOutcome {
        if error.code == ErrorCode::TaskTimeout {
            return TaskOutcome::TimedOut { error };
        }
        if !error.code.is_retryable() {
            return TaskOutcome::Failed { error };
        }
        if record.attempts >= record.max_attempts {
            return TaskOutcome::Dead { error };
        }
        let delay = self.retry.delay(record.attempts);
        let run_at = operator_domain::time::later(Utc::now(), delay);
        info!(code = %error.code, delay_ms = delay.as_millis() as u64, "retryable failure; requeueing");
        TaskOutcome::Retry { error, run_at }
    }

    async fn render_and_store(
        &self,
        record: &TaskRecord,
        spec: TaskSpec,
        deadline: Instant,
        stop: StopSignal,
    ) -> Result<
        (
            serde_json::Value,
            serde_json::Map<String, serde_json::Value>,
            Vec<NewArtifact>,
        ),
        CodedError,
    > {
        if let Some(url) = spec.start_url() {
            crate::resolve::check_url(&self.policy, url.as_url()).await?;
        }
        let policy = self.policy.clone();
        // Step outcomes go from the page code to a writer task that records the
        // latest as the task's progress, guarded by the lease token.
        let (progress_sender, progress_receiver) =
            watch::channel::<Option<serde_json::Value>>(None);
        let writer = record.lease_token.map(|token| {
            tokio::spawn(write_progress(
                self.repo.clone(),
                record.id,
                token,
                progress_receiver,
            ))
        });
        // Console lines go the same way, each as a `log` event while the task runs.
        let (log_sender, log_receiver) = mpsc::unbounded_channel::<ConsoleEntry>();
        let (logs_done, logs_done_signal) = oneshot::channel::<()>();
        // Secrets typed into the page may come back in what it logs.
        let secrets = spec.secrets().clone();
        let log_writer = record.lease_token.map(|token| {
            tokio::spawn(write_logs(
                self.repo.clone(),
                record.id,
                token,
                log_receiver,
                logs_done_signal,
                secrets,
            ))
        });
        let agent = Arc::clone(&self.agent);
        // An agent records each step as it ends, and resumes from an earlier attempt's
        // last recorded step.
        let journal = match (&spec, record.lease_token) {
            (TaskSpec::Agent(_), Some(token)) => {
                let restored = match self.repo.checkpoint(record.id).await {
                    Ok(restored) => restored,
                    Err(error) => {
                        warn!(error = %error, "cannot read the agent's checkpoint; starting afresh");
                        None
                    }
                };
                Some(Journal::new(
                    self.repo.clone(),
                    self.storage.clone(),
                    record.id,
                    record.tenant.clone(),
                    record.attempts,
                    token,
                    restored,
                ))
            }
            _ => None,
        };
        let journal = journal.as_ref();
        let model = match &spec {
            TaskSpec::Agent(_) => Some(self.agent.model_for(&record.tenant).await),
            _ => None,
        };
        let model = model.as_ref();
        let rendered = self
            .pool
            .run(|handle| async move {
                let sink = move |progress: serde_json::Value| {
                    let _receiver_gone = progress_sender.send(Some(progress));
                };
                let job = RenderJob {
                    spec: &spec,
                    policy: &policy,
                    deadline,
                    stop: &stop,
                    progress: &sink,
                    log_sink: log_sender,
                    agent: &agent,
                    model,
                    journal,
                };
                Ok(render::render(&handle, job).await)
            })
            .await;
        // The sender went with the job: the writer stores the last value and ends, before
        // the outcome is recorded.
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        // The page's event listener may outlive the render (and its copy of the log
        // sender with it): tell the log writer to write what it has and stop.
        let _writer_gone = logs_done.send(());
        if let Some(log_writer) = log_writer {
            let _ = log_writer.await;
        }
        let rendered: Rendered = match rendered? {
            Ok(rendered) => rendered,
            Err(RenderFailure { error, logs }) => {
                self.store_failure_logs(record, logs).await;
                return Err(error);
            }
        };
        let mut artifacts = Vec::with_capacity(rendered.files.len());
        for file in rendered.files {
            artifacts.push(
                store_file(
                    &self.storage,
                    &record.tenant,
                    record.id,
                    record.attempts,
                    file,
                )
                .await?,
            );
        }
        Ok((rendered.page, rendered.extra, artifacts))
    }

    /// Keeps a failed attempt's page logs (`network-attempt-N.json`, ...) with the task:
    /// they usually say why it failed. Best effort: a failure here is only logged.
    async fn store_failure_logs(&self, record: &TaskRecord, logs: Vec<RenderedFile>) {
        let Some(token) = record.lease_token else {
            return;
        };
        let mut artifacts = Vec::with_capacity(logs.len());
        for mut file in logs {
            file.name = match file.name.rsplit_once('.') {
                Some((stem, extension)) => {
                    format!("{stem}-attempt-{}.{extension}", record.attempts)
                }
                None => format!("{}-attempt-{}", file.name, record.attempts),
            };
            match store_file(
                &self.storage,
                &record.tenant,
                record.id,
                record.attempts,
                file,
            )
            .await
            {
                Ok(artifact) => artifacts.push(artifact),
                Err(error) => {
                    warn!(error = %error.message, "cannot store a failed attempt's log")
                }
            }
        }
        if let Err(error) = self
            .repo
            .record_attempt_artifacts(record.id, token, &artifacts)
            .await
        {
            warn!(error = %error, "cannot record a failed attempt's logs");
        }
    }

    async fn settle_claim(&self, claim: &Claim) {
        if let Err(error) = self.queue.ack(claim).await {
            warn!(error = %error, "acknowledging the claim failed; the reconciler will tidy up");
        }
    }

    async fn requeue_claim(&self, claim: &Claim, not_before: Option<chrono::DateTime<Utc>>) {
        match self.queue.requeue(claim, not_before).await {
            Ok(true) => {}
            Ok(false) => warn!(
                "the claim's queue lease was gone at requeue; the reconciler will dispatch the task"
            ),
            Err(error) => {
                warn!(error = %error, "requeue failed; the reconciler will dispatch the task")
            }
        }
    }
}

/// Uploads one file of attempt `attempt`. The attempt is part of the key: a stale
/// attempt still uploading cannot overwrite the files of the attempt that succeeded.
pub(crate) async fn store_file(
    storage: &ArtifactStore,
    tenant: &TenantId,
    task: TaskId,
    attempt: u32,
    file: RenderedFile,
) -> Result<NewArtifact, CodedError> {
    let key = ArtifactStore::key_for(tenant, task, &format!("{attempt}/{}", file.name));
    let receipt = storage
        .put(&key, Bytes::from(file.bytes), &file.content_type)
        .await
        .map_err(|error| {
            CodedError::new(
                ErrorCode::StorageError,
                format!("storing {}: {error}", file.name),
            )
        })?;
    Ok(NewArtifact {
        id: ArtifactId::new(),
        name: file.name,
        content_type: file.content_type,
        size_bytes: receipt.size_bytes,
        storage_key: receipt.key,
        sha256: receipt.sha256,
    })
}

/// Records the latest progress each time it changes, until the sender is dropped; then
/// records the last value if it was not written yet. Each step that ended since the
/// last write also becomes a `step` event (the watch channel keeps only the latest
/// progress, so several steps may arrive in one write).
async fn write_progress(
    repo: TaskRepository,
    task_id: TaskId,
    token: LeaseToken,
    mut progress: watch::Receiver<Option<serde_json::Value>>,
) {
    let mut steps_recorded = 0;
    loop {
        let ended = progress.changed().await.is_err();
        let latest = progress.borrow_and_update().clone();
        if let Some(latest) = latest {
            let steps = latest["steps"].as_array().cloned().unwrap_or_default();
            let new_steps: Vec<_> = steps.iter().skip(steps_recorded).cloned().collect();
            match repo
                .record_progress(task_id, token, &latest, new_steps)
                .await
            {
                Ok(true) => steps_recorded = steps.len(),
                Ok(false) => return,
                Err(error) => warn!(error = %error, "recording progress failed"),
            }
        }
        if ended {
            return;
        }
    }
}

/// Most log lines written in one transaction.
const LOG_BATCH: usize = 100;

/// Writes console lines as `log` events as they come, a batch per transaction, until
/// told the task is done (then it writes what is queued) or the lease is gone.
async fn write_logs(
    repo: TaskRepository,
    task_id: TaskId,
    token: LeaseToken,
    mut lines: mpsc::UnboundedReceiver<ConsoleEntry>,
    mut done: oneshot::Receiver<()>,
    secrets: std::collections::BTreeMap<String, String>,
) {
    let mut finishing = false;
    loop {
        let mut batch = Vec::new();
        if !finishing {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(line) => batch.push(line),
                    None => finishing = true,
                },
                _ = &mut done => finishing = true,
            }
        }
        while batch.len() < LOG_BATCH {
            match lines.try_recv() {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            if finishing {
                return;
            }
            continue;
        }
        let events = batch
            .into_iter()
            .filter_map(|line| serde_json::to_value(line).ok())
            .map(|mut line| {
                operator_domain::agent::mask_secrets_in(&mut line, &secrets);
                line
            })
            .collect();
        match repo.append_events(task_id, token, "log", events).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => warn!(error = %error, "recording log lines failed"),
        }
    }
}

/// Renews the lease every third of its life until aborted, reporting cancellation
/// requests and a lost lease. A cancellation pushed on the event bus for this task
/// renews at once: the renewal reads the request from the database, the truth, so a
/// running task stops within a round trip of the client's request, and a lost push
/// only delays it to the next renewal.
async fn heartbeat(
    repo: TaskRepository,
    queue: SharedQueue,
    claim: Claim,
    lease_ttl: Duration,
    interrupt: watch::Sender<Interrupt>,
) {
    let interval = (lease_ttl / 3).max(Duration::from_millis(200));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut cancels = repo.cancel_requests();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            pushed = next_cancel(&mut cancels, claim.task_id) => {
                if !pushed {
                    cancels = None;
                    continue;
                }
            }
        }
        // The queue's lease decides who may claim the task next; a failure here is
        // logged, and the database lease (the truth) still guards every write.
        let lease_until = match queue.renew(&claim, lease_ttl).await {
            Ok(Some(until)) => until,
            Ok(None) => {
                warn!(task_id = %claim.task_id, "queue lease gone; the database lease still guards the task");
                operator_domain::time::later(Utc::now(), lease_ttl)
            }
            Err(error) => {
                warn!(task_id = %claim.task_id, error = %error, "renewing the queue lease failed");
                operator_domain::time::later(Utc::now(), lease_ttl)
            }
        };
        match repo
            .renew_lease(claim.task_id, claim.token, lease_until)
            .await
        {
            Ok(LeaseRenewal::Held {
                cancel_requested: true,
            }) => {
                let _ = interrupt.send(Interrupt::Cancelled);
            }
            Ok(LeaseRenewal::Held {
                cancel_requested: false,
            }) => {}
            Ok(LeaseRenewal::Lost) => {
                let _ = interrupt.send(Interrupt::LeaseLost);
                return;
            }
            Err(error) => {
                warn!(task_id = %claim.task_id, error = %error, "renewing the database lease failed")
            }
        }
    }
}

/// Waits for a cancellation of `task_id` on the bus: `true` when one (or, after
/// falling behind, possibly one) arrived, `false` when the bus is gone. Pends forever
/// without a bus.
async fn next_cancel(
    cancels: &mut Option<tokio::sync::broadcast::Receiver<TaskId>>,
    task_id: TaskId,
) -> bool {
    let Some(receiver) = cancels else {
        return std::future::pending().await;
    };
    loop {
        match receiver.recv().await {
            Ok(id) if id == task_id => return true,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return true,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attempt_span_continues_the_submitters_trace() {
        use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
        use tracing_subscriber::layer::SubscriberExt;

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("worker")));
        let submitted = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        tracing::subscriber::with_default(subscriber, || {
            let span = attempt_span(TaskId::new(), 1, Some(submitted));
            span.in_scope(|| info!("working"));
            drop(span);
            let without = attempt_span(TaskId::new(), 1, None);
            without.in_scope(|| info!("working"));
        });
        provider.force_flush().expect("flush");
        let spans = exporter.get_finished_spans().expect("spans");
        assert_eq!(spans.len(), 2, "{spans:?}");
        let linked = &spans[0];
        assert_eq!(linked.name, "attempt");
        assert_eq!(
            linked.span_context.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex")
        );
        assert_eq!(
            linked.parent_span_id,
            SpanId::from_hex("00f067aa0ba902b7").expect("hex")
        );
        // Without a stored traceparent the attempt starts a trace of its own.
        assert_ne!(
            spans[1].span_context.trace_id(),
            linked.span_context.trace_id()
        );
        assert_eq!(spans[1].parent_span_id, SpanId::INVALID);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let policy = RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        for attempt in 1..=12 {
            let ceiling =
                Duration::from_secs(1 << (attempt - 1).min(30)).min(Duration::from_secs(10));
            for _ in 0..50 {
                assert!(policy.delay(attempt) <= ceiling);
            }
        }
        let distinct: std::collections::HashSet<_> = (0..50).map(|_| policy.delay(5)).collect();
        assert!(distinct.len() > 10, "full jitter spreads the delays");
    }
}
