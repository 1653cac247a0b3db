//! The worker role: claims tasks from the queue and runs them in Chromium.
//!
//! - [`agent`]: `agent` tasks: the model client, the page observation, the tools and
//!   the observe → ask → act loop with its budget, loop guard and records.
//! - [`browser`]: the Chromium pool (launch, warm browser, isolated contexts, spare
//!   pages, crash and hang recovery, blocking pool).
//! - [`cdp`]: our Chrome DevTools Protocol connection (one WebSocket per browser,
//!   flattened page sessions, answers and events routed by a reader task).
//! - [`input`]: mouse and keyboard input (clicks, hovers, key presses, typing).
//! - [`guard`]: the network policy applied to every request a page makes.
//! - [`resolve`]: DNS look-ups checked against the network policy.
//! - [`egress`]: the proxy every browser connection goes through, which connects only
//!   to addresses the network policy allows (WebSockets, WebRTC, service workers, new
//!   windows, DNS rebinding: what request interception does not see).
//! - [`events`]: what a page did (lifecycle, network and console logs).
//! - [`steps`]: the step executor for `script`, `content` and `scrape` tasks.
//! - [`render`]: what happens in a page (navigate, wait, screenshot or PDF).
//! - [`runner`]: one task from claim to recorded outcome (leases, retries, artifacts).
//! - [`source`]: the apalis backend that feeds workers from our queue.
//! - [`webhooks`]: the webhook dispatcher (drains the delivery outbox, signs, retries).
//!
//! apalis is the runtime: a monitor with one worker whose concurrency layer bounds the
//! tasks in flight, and whose graceful shutdown stops claiming and drains running tasks.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{Data, Monitor, WorkerBuilder, WorkerBuilderExt};
use operator_config::{ServedQueues, Settings};
use operator_domain::QueueName;
use operator_domain::error::CodedError;
use operator_store::db::{TaskRepository, WebhookRepository};
use operator_store::queue::{Claim, SharedQueue};
use operator_store::storage::ArtifactStore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub mod agent;
pub mod browser;
pub mod cdp;
pub mod egress;
pub mod events;
pub mod guard;
pub mod input;
pub mod render;
pub mod resolve;
pub mod runner;
pub mod session;
pub mod source;
pub mod webhooks;

use browser::BrowserPool;
use runner::{RetryPolicy, TaskRunner};
use source::ClaimSource;
use webhooks::Dispatcher;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("browser: {0}")]
    Browser(#[from] CodedError),
    #[error("invalid network policy: {0}")]
    Policy(String),
    #[error("worker runtime: {0}")]
    Runtime(String),
}

/// A worker process's task runner and browser pool, ready to run.
pub struct Worker {
    runner: Arc<TaskRunner>,
    concurrency: usize,
    shutdown_grace: Duration,
    /// The webhook dispatcher, unless `webhooks.dispatcher` turned it off.
    dispatcher: Option<Arc<Dispatcher>>,
    /// `worker.queues = *`: the queues served follow the queue list.
    follows_all_queues: bool,
}

/// How often a worker serving every queue (`*`) reads the queue list, so that a queue
/// created while it runs is served within this long.
const QUEUE_LIST_REFRESH: Duration = Duration::from_secs(2);

impl Worker {
    /// Builds the worker and starts its browser, so the first task does not wait for it.
    pub async fn build(
        settings: &Settings,
        repo: TaskRepository,
        queue: SharedQueue,
        storage: ArtifactStore,
    ) -> Result<Self, WorkerError> {
        let concurrency = settings.worker.concurrency;
        let policy = settings
            .network_policy()
            .map_err(|error| WorkerError::Policy(error.to_string()))?;
        let pool = BrowserPool::new(settings.browser.clone(), concurrency, &policy)?;
        pool.warm_up().await?;
        pool.spawn_keepalive(settings.browser.call_timeout / 3);
        let worker_id = settings.worker.id.clone().unwrap_or_else(default_worker_id);
        let follows_all_queues = match settings.served_queues() {
            ServedQueues::All => {
                follow_queue_list(&repo, &queue, &mut Vec::new()).await;
                true
            }
            ServedQueues::Only(queues) => {
                warn_of_missing_queues(&repo, &queues).await;
                false
            }
        };
        let dispatcher = settings.webhooks.dispatcher.then(|| {
            Arc::new(Dispatcher::new(
                WebhookRepository::new(repo.connection().clone()),
                policy.clone(),
                settings.webhooks.clone(),
                settings.public_url(settings.server.port),
                Some(storage.clone()),
            ))
        });
        let agent = Arc::new(
            agent::AgentRuntime::new(&settings.llm, &settings.agent, repo.connection().clone())
                .map_err(|error| WorkerError::Runtime(error.message))?,
        );
        let runner = TaskRunner {
            worker_id,
            repo,
            queue,
            storage,
            pool,
            policy,
            lease_ttl: settings.queue.lease_ttl,
            retry: RetryPolicy {
                base: settings.tasks.retry_base_delay,
                max: settings.tasks.retry_max_delay,
            },
            hard_stop: CancellationToken::new(),
            agent,
        };
        Ok(Self {
            runner: Arc::new(runner),
            concurrency,
            shutdown_grace: settings.worker.shutdown_grace,
            dispatcher,
            follows_all_queues,
        })
    }

    pub fn id(&self) -> &str {
        &self.runner.worker_id
    }

    pub fn browser_pool(&self) -> &Arc<BrowserPool> {
        &self.runner.pool
    }

    /// Runs until `shutdown` resolves; then stops claiming, lets running tasks finish
    /// for the grace period, and hands the leases of the rest back to the queue.
    pub async fn run_until_stopped<F>(self, shutdown: F) -> Result<(), WorkerError>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let runner = Arc::clone(&self.runner);
        let concurrency = self.concurrency;
        let worker_name = runner.worker_id.clone();
        let hard_stop = runner.hard_stop.clone();
        let grace = self.shutdown_grace;
        let dispatcher_stop = CancellationToken::new();
        let follower = self.follows_all_queues.then(|| {
            let runner = Arc::clone(&self.runner);
            let stop = dispatcher_stop.clone();
            tokio::spawn(async move {
                let mut served = Vec::new();
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(QUEUE_LIST_REFRESH) => {}
                    }
                    follow_queue_list(&runner.repo, &runner.queue, &mut served).await;
                }
            })
        });
        let dispatcher = self
            .dispatcher
            .clone()
            .map(|dispatcher| tokio::spawn(dispatcher.run_until_stopped(dispatcher_stop.clone())));
        let stop_dispatcher = dispatcher_stop.clone();
        let signal = async move {
            shutdown.await;
            stop_dispatcher.cancel();
            info!(
                grace_secs = grace.as_secs(),
                "worker stopping: no new claims, draining running tasks"
            );
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                warn!("shutdown grace period over; handing running tasks back to the queue");
                hard_stop.cancel();
            });
            Ok(())
        };
        let monitor = Monitor::new().register(move |_restarts| {
            WorkerBuilder::new(worker_name.clone())
                .backend(ClaimSource::new(
                    SharedQueue::clone(&runner.queue),
                    runner.worker_id.clone(),
                    runner.lease_ttl,
                ))
                .concurrency(concurrency)
                .data(Arc::clone(&runner))
                .build(run_task)
        });
        info!(worker = %self.runner.worker_id, concurrency, "worker running");
        let result = monitor.run_with_signal(signal).await;
        dispatcher_stop.cancel();
        if let Some(follower) = follower {
            let _ = follower.await;
        }
        if let Some(dispatcher) = dispatcher
            && tokio::time::timeout(webhooks::DRAIN_TIMEOUT, dispatcher)
                .await
                .is_err()
        {
            warn!("the webhook dispatcher did not stop in time; its leases will expire");
        }
        self.runner.pool.shutdown();
        result.map_err(|error| WorkerError::Runtime(error.to_string()))
    }
}

async fn run_task(
    claim: Claim,
    runner: Data<Arc<TaskRunner>>,
) -> Result<(), apalis::prelude::BoxDynError> {
    runner.run(claim).await;
    Ok(())
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Serves every queue there is; `served` is the list served so far (nothing is changed
/// when the list is the same). A failed read keeps the current list.
async fn follow_queue_list(
    repo: &TaskRepository,
    queue: &SharedQueue,
    served: &mut Vec<QueueName>,
) {
    match repo.queues().await {
        Ok(records) => {
            let names: Vec<QueueName> = records.into_iter().map(|record| record.name).collect();
            if names != *served {
                info!(queues = ?names.iter().map(QueueName::as_str).collect::<Vec<_>>(), "serving every queue");
                queue.serve(names.clone());
                *served = names;
            }
        }
        Err(error) => {
            warn!(error = %error, "could not read the queue list; serving the queues known so far")
        }
    }
}

/// A worker serving a queue nobody created idles on it; say so at start, since the
/// likely cause is a typo in `worker.queues` or a queue not created yet.
async fn warn_of_missing_queues(repo: &TaskRepository, queues: &[QueueName]) {
    for queue in queues {
        match repo.queue(queue).await {
            Ok(Some(_)) => {}
            Ok(None) => warn!(
                queue = %queue,
                "worker.queues names a queue that does not exist (yet); tasks can go to it once it is created with PUT /v1/queues/{queue}"
            ),
            Err(error) => {
                warn!(queue = %queue, error = %error, "could not check that a served queue exists")
            }
        }
    }
}
