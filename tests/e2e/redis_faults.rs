//! Redis is the dispatch path, not the truth: a flush or a crash of Redis loses no task.
//!
//! Each test runs its own `redis-server` (so it can flush and kill it without touching
//! other tests), the real API and scheduler roles on PostgreSQL, and consumers that do
//! to the records exactly what a worker does (claim, start the attempt, finish it,
//! acknowledge) without opening a browser: the subject here is the queue, and hundreds
//! of tasks must run in seconds. The same faults with real `operator worker` processes,
//! short leases and tasks leased at the moment of the fault are in `processes.rs`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use operator::{Application, Roles};
use operator_domain::auth::Role;
use operator_domain::{QueueName, TaskState, TenantId};
use operator_store::db::{self, TaskRepository};
use operator_store::queue::redis::RedisQueue;
use operator_store::queue::{QueueStats, SharedQueue};
use operator_testkit::{
    ApiClient, TestDatabase, complete_without_browser, distributed_settings, issue_key_with,
    unique_name,
};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(30);

/// A `redis-server` of this test's own, on a free port, without persistence (a restart
/// loses everything, like a crashed cache node).
pub(crate) struct OwnRedis {
    port: u16,
    process: Option<Child>,
}

impl OwnRedis {
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free port");
        let mut redis = Self {
            port,
            process: None,
        };
        redis.restart();
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it answers.
    pub(crate) fn restart(&mut self) {
        let process = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh installs it)");
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the server and all it held are gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The API and scheduler roles on PostgreSQL and the test's own Redis.
struct Deployment {
    api: ApiClient,
    settings: operator_config::Settings,
    repo: TaskRepository,
    stop: CancellationToken,
    roles: tokio::task::JoinHandle<anyhow::Result<()>>,
    _database: TestDatabase,
}

impl Deployment {
    async fn start(redis: &OwnRedis) -> Self {
        operator_store::install_crypto_provider();
        let database = TestDatabase::postgres().await;
        let mut settings = distributed_settings(&database, &unique_name("redis-faults"));
        settings.redis.url = Some(redis.url().into());
        settings.redis.command_timeout = Duration::from_secs(1);
        settings.queue.dispatch_timeout = Duration::from_millis(500);
        let roles = Roles {
            api: true,
            worker: false,
            scheduler: true,
            migrate: false,
        };
        let application = Application::build(settings.clone(), roles)
            .await
            .expect("build");
        let url = application.public_url().expect("the API role serves");
        let repo = TaskRepository::new(
            db::connect(&settings)
                .await
                .expect("connect to the database"),
        );
        let key = issue_key_with(repo.connection(), "default", Role::Owner, true).await;
        let stop = CancellationToken::new();
        let roles = tokio::spawn(application.run_until_stopped(stop.clone().cancelled_owned()));
        Self {
            api: ApiClient::with_key(url, &key),
            settings,
            repo,
            stop,
            roles,
            _database: database,
        }
    }

    /// A queue client that claims from `default` and `reports`.
    async fn queue(&self) -> SharedQueue {
        Arc::new(
            RedisQueue::connect(&self.settings.redis)
                .await
                .expect("connect to Redis")
                .serving(vec![QueueName::default(), reports()]),
        )
    }

    /// Submits `count` tasks to `default`, 16 at a time; every submission must be accepted.
    async fn submit(&self, count: usize) -> usize {
        self.submit_to(&QueueName::default(), count).await
    }

    async fn submit_to(&self, queue: &QueueName, count: usize) -> usize {
        let mut accepted = 0;
        for chunk in (0..count).collect::<Vec<_>>().chunks(16) {
            let submissions = chunk.iter().map(|index| async move {
                let task = json!({"kind": "screenshot", "queue": queue.as_str(), "input": {"url": format!("https://example.test/{index}")}});
                self.api.submit(&task).await
            });
            for (status, body) in futures::future::join_all(submissions).await {
                assert_eq!(status, 202, "{body}");
                accepted += 1;
            }
        }
        accepted
    }

    /// Succeeded tasks in `default` and `reports`.
    async fn succeeded(&self) -> u64 {
        let mut succeeded = 0;
        for queue in [QueueName::default(), reports()] {
            succeeded += self
                .repo
                .count_by_state(&TenantId::default_tenant(), &queue)
                .await
                .expect("count")
                .into_iter()
                .find(|(state, _)| *state == TaskState::Succeeded)
                .map_or(0, |(_, count)| count);
        }
        succeeded
    }

    async fn wait_for_succeeded(&self, expected: u64) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let succeeded = self.succeeded().await;
            if succeeded == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{succeeded} of {expected} tasks succeeded after 90 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Rows in a table, straight from the database.
    async fn count_rows(&self, sql: &str) -> i64 {
        let connection = self.repo.connection();
        let row = connection
            .query_one_raw(Statement::from_string(
                connection.get_database_backend(),
                sql,
            ))
            .await
            .expect("query")
            .expect("a row");
        row.try_get_by_index(0).expect("a count")
    }

    async fn shutdown(self) {
        self.stop.cancel();
        self.roles.await.expect("join").expect("roles stop cleanly");
    }
}

/// Claims, starts, finishes and acknowledges tasks until stopped, riding out Redis
/// errors the way the worker does (a failed call is retried after a pause).
fn spawn_consumer(
    name: String,
    queue: SharedQueue,
    repo: TaskRepository,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let claim = match queue.claim(&name, LEASE, Duration::from_millis(200)).await {
                Ok(Some(claim)) => claim,
                Ok(None) => continue,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            complete_without_browser(&repo, &claim, &name)
                .await
                .expect("record the attempt");
            // Redis may be down now; an unacknowledged claim is reclaimed after its
            // lease, and the database refuses to start a finished task again.
            let _ = queue.ack(&claim).await;
        }
    })
}

fn reports() -> QueueName {
    QueueName::parse("reports").expect("queue name")
}

pub(crate) async fn flush(redis: &OwnRedis) {
    let client = Client::new(
        Config::from_url(&redis.url()).expect("url"),
        None,
        None,
        None,
    );
    client.init().await.expect("connect");
    let _: () = client.flushall(false).await.expect("FLUSHALL");
    client.quit().await.expect("quit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_loses_none_of_500_queued_tasks() {
    let redis = OwnRedis::start();
    let deployment = Deployment::start(&redis).await;
    let queue = deployment.queue().await;
    assert_eq!(deployment.submit(500).await, 500);
    // And a paused named queue with 50 tasks of its own.
    let (status, _) = deployment
        .api
        .put("/v1/queues/reports", &json!({"concurrency_limit": 8}))
        .await;
    assert_eq!(status, 201);
    let (status, _) = deployment.api.post("/v1/queues/reports/pause").await;
    assert_eq!(status, 200);
    assert_eq!(deployment.submit_to(&reports(), 50).await, 50);
    let ready = |stats: &QueueStats| (stats.ready(), stats.paused);
    let default_stats = queue.stats(&QueueName::default()).await.expect("stats");
    assert_eq!(ready(&default_stats), (500, false));
    let reports_stats = queue.stats(&reports()).await.expect("stats");
    assert_eq!(ready(&reports_stats), (50, true));

    flush(&redis).await;
    for queue_name in [QueueName::default(), reports()] {
        let stats = queue.stats(&queue_name).await.expect("stats");
        assert_eq!(ready(&stats), (0, false), "all gone");
    }
    // The reconciler puts each task back on its own queue, and the pause back on
    // `reports`: its tasks wait there, ready but not handed out.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let default_stats = queue.stats(&QueueName::default()).await.expect("stats");
        let reports_stats = queue.stats(&reports()).await.expect("stats");
        if ready(&default_stats) == (500, false) && ready(&reports_stats) == (50, true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not restored after 30 s: default {default_stats:?}, reports {reports_stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = deployment.api.post("/v1/queues/reports/resume").await;
    assert_eq!(status, 200);

    let stop = CancellationToken::new();
    let consumers: Vec<_> = (0..4)
        .map(|index| {
            spawn_consumer(
                format!("consumer-{index}"),
                SharedQueue::clone(&queue),
                deployment.repo.clone(),
                stop.clone(),
            )
        })
        .collect();
    deployment.wait_for_succeeded(550).await;
    stop.cancel();
    for consumer in consumers {
        consumer.await.expect("consumer");
    }
    assert_eq!(
        deployment
            .count_rows("SELECT COUNT(*) FROM task_attempts")
            .await,
        550,
        "each task ran exactly once"
    );
    deployment.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_crash_under_load_loses_no_task_and_submissions_go_on() {
    let mut redis = OwnRedis::start();
    let deployment = Deployment::start(&redis).await;
    let stop = CancellationToken::new();
    let mut consumers = Vec::new();
    for index in 0..4 {
        consumers.push(spawn_consumer(
            format!("consumer-{index}"),
            deployment.queue().await,
            deployment.repo.clone(),
            stop.clone(),
        ));
    }
    let mut submitted = deployment.submit(150).await;

    redis.kill();
    // Submitting while Redis is down still succeeds: the row is committed and the
    // reconciler dispatches it once Redis is back.
    submitted += deployment.submit(20).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    submitted += deployment.submit(150).await;

    deployment.wait_for_succeeded(submitted as u64).await;
    stop.cancel();
    for consumer in consumers {
        consumer.await.expect("consumer");
    }
    assert_eq!(submitted, 320);
    assert_eq!(
        deployment
            .count_rows("SELECT COUNT(*) FROM task_attempts")
            .await,
        320,
        "each task ran exactly once: no lease expired, so nothing ran twice"
    );
    deployment.shutdown().await;
}
