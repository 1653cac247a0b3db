//! End to end through the API on PostgreSQL: K HTTP clients submit screenshot tasks to an
//! in-process API (`Roles::API`), while C consumers do to the records exactly what a
//! worker does, minus the browser: claim → `start_attempt` → `finish(Succeeded)` → ack.
//! (No browser worker runs, so the URL is validated, never fetched.)
//!
//! With `authenticated`, every request presents an owner key (the API verifies it, from
//! its cache after the first); without, authentication is off.
//!
//! The API gets a PostgreSQL database of its own (created, migrated, dropped after) and
//! the bench's Redis under a key prefix of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use operator::{Application, Roles};
use operator_config::{QueueBackendKind, Settings};
use operator_domain::TaskId;
use operator_domain::auth::Role;
use operator_store::db::{self, TaskRepository};
use operator_store::queue::SharedQueue;
use operator_store::queue::redis::RedisQueue;
use operator_testkit::{ApiClient, TestDatabase, complete_without_browser, issue_key};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::profile::{Profile, Profiler};
use crate::stats::Latencies;

const SUBMISSION: &str = r#"{"kind":"screenshot","input":{"url":"https://example.com/"}}"#;
const LEASE: Duration = Duration::from_secs(300);
const CLAIM_WAIT: Duration = Duration::from_millis(100);
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// The API's and the consumers' pools, each (the default `database.max_connections`).
const POOL_SIZE: u32 = 16;

#[derive(Debug)]
pub struct EndToEndOutcome {
    pub tasks: usize,
    /// From the first request to the last `202`.
    pub submit_elapsed: Duration,
    /// From the first request to the last `finish` + ack.
    pub complete_elapsed: Duration,
    /// POST /v1/tasks round trips.
    pub http_latency: Latencies,
    /// Request sent → task recorded `succeeded` and acked.
    pub submit_to_done: Latencies,
    pub profile: Profile,
}

/// One submitted task: id, when its request was sent, when its answer came.
struct Submitted {
    id: TaskId,
    sent_at: Instant,
    answered_at: Instant,
}

pub async fn run(
    redis_url: &str,
    profiler: &Profiler,
    clients: usize,
    consumers: usize,
    tasks: usize,
    authenticated: bool,
) -> anyhow::Result<EndToEndOutcome> {
    let database = TestDatabase::postgres().await;
    let mut settings = Settings::default();
    settings.server.port = 0;
    settings.database.url = Some(SecretString::from(database.url().to_owned()));
    settings.database.max_connections = POOL_SIZE;
    settings.redis.url = Some(SecretString::from(redis_url.to_owned()));
    settings.redis.key_prefix = format!("bench_e2e_{}", uuid::Uuid::new_v4().simple());
    settings.queue.backend = QueueBackendKind::Redis;
    settings.storage.url = Some("memory://".to_owned());
    settings.auth.enabled = authenticated;

    let application = Application::build(settings.clone(), Roles::API)
        .await
        .context("cannot build the API")?;
    let base = format!(
        "http://127.0.0.1:{}",
        application.port().context("the API has no port")?
    );
    let stop = CancellationToken::new();
    let api = tokio::spawn(application.run_until_stopped(stop.clone().cancelled_owned()));

    let repo = TaskRepository::new(db::connect(&settings).await?);
    let key = issue_key(repo.connection(), "default", Role::Owner).await;
    let completions = Arc::new(Mutex::new(HashMap::<TaskId, Instant>::with_capacity(tasks)));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut consumer_loops = tokio::task::JoinSet::new();
    for index in 0..consumers {
        let queue: SharedQueue = Arc::new(RedisQueue::connect(&settings.redis).await?);
        let consumer = Consumer {
            worker_id: format!("bench-consumer-{index}"),
            queue,
            repo: repo.clone(),
            completions: Arc::clone(&completions),
            completed: Arc::clone(&completed),
            target: tasks,
        };
        consumer_loops.spawn(consumer.run());
    }

    let http = if authenticated {
        ApiClient::with_key(base.clone(), &key).http
    } else {
        reqwest::Client::new()
    };
    let next = Arc::new(AtomicUsize::new(0));
    let before = profiler.snapshot().await?;
    let started = Instant::now();
    let mut client_loops = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let http = http.clone();
        let url = format!("{base}/v1/tasks");
        let next = Arc::clone(&next);
        client_loops.spawn(async move {
            let mut submitted = Vec::new();
            while next.fetch_add(1, Ordering::AcqRel) < tasks {
                submitted.push(submit(&http, &url).await?);
            }
            anyhow::Ok(submitted)
        });
    }
    let mut submitted = Vec::with_capacity(tasks);
    while let Some(joined) = client_loops.join_next().await {
        submitted.extend(joined.context("a client panicked")??);
    }
    let last_answer = submitted
        .iter()
        .map(|task| task.answered_at)
        .max()
        .unwrap_or(started);

    let drained = tokio::time::timeout(RUN_TIMEOUT, async {
        while let Some(joined) = consumer_loops.join_next().await {
            joined.context("a consumer panicked")??;
        }
        anyhow::Ok(())
    })
    .await;
    let after = profiler.snapshot().await?;
    stop.cancel();
    let _ = api.await;
    match drained {
        Ok(result) => result?,
        Err(_) => bail!(
            "end to end stuck: {} of {tasks} completed after {RUN_TIMEOUT:?}",
            completed.load(Ordering::Acquire)
        ),
    }

    let completions = std::mem::take(&mut *completions.lock().expect("not poisoned"));
    let last_completion = completions.values().copied().max().unwrap_or(started);
    let http_latency = submitted
        .iter()
        .map(|task| task.answered_at.saturating_duration_since(task.sent_at))
        .collect();
    let submit_to_done = submitted
        .iter()
        .filter_map(|task| {
            let done = completions.get(&task.id)?;
            Some(done.saturating_duration_since(task.sent_at))
        })
        .collect();
    drop(repo);
    drop(database);
    Ok(EndToEndOutcome {
        tasks,
        submit_elapsed: last_answer.saturating_duration_since(started),
        complete_elapsed: last_completion.saturating_duration_since(started),
        http_latency: Latencies::from_samples(http_latency),
        submit_to_done: Latencies::from_samples(submit_to_done),
        profile: before.until(&after),
    })
}

async fn submit(http: &reqwest::Client, url: &str) -> anyhow::Result<Submitted> {
    let sent_at = Instant::now();
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(SUBMISSION)
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    let answered_at = Instant::now();
    if status.as_u16() != 202 {
        bail!("submission answered {status}: {body}");
    }
    let id = body["id"].as_str().context("no id in the answer")?;
    let id = TaskId::parse(id).map_err(|error| anyhow::anyhow!("bad task id {id}: {error}"))?;
    Ok(Submitted {
        id,
        sent_at,
        answered_at,
    })
}

/// A worker without a browser: the same queue and repository calls, in the same order.
struct Consumer {
    worker_id: String,
    queue: SharedQueue,
    repo: TaskRepository,
    completions: Arc<Mutex<HashMap<TaskId, Instant>>>,
    completed: Arc<AtomicUsize>,
    target: usize,
}

impl Consumer {
    async fn run(self) -> anyhow::Result<()> {
        while self.completed.load(Ordering::Acquire) < self.target {
            let Some(claim) = self.queue.claim(&self.worker_id, LEASE, CLAIM_WAIT).await? else {
                continue;
            };
            if !complete_without_browser(&self.repo, &claim, &self.worker_id).await? {
                bail!("task {} did not run to its end", claim.task_id);
            }
            self.queue.ack(&claim).await?;
            self.completions
                .lock()
                .expect("not poisoned")
                .insert(claim.task_id, Instant::now());
            self.completed.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }
}
