//! The binary as a user runs it: `operator migrate`, then `operator api` and `operator
//! worker` as separate processes on PostgreSQL, Redis and S3. A task submitted to the
//! API process is run by the worker process; SIGTERM stops both cleanly and leaves no
//! Chromium behind. The faults, with real processes and short leases: a worker killed,
//! stopped (SIGSTOP) past its lease or terminated mid-task, and Redis flushed, killed
//! and restarted while tasks are leased.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use operator_testkit::{ApiClient, RedisPrefix, TestDatabase, TestServices, unique_name};
use serde_json::json;

use crate::fault_pages::FaultPages;
use crate::helpers::{ENDED, PageServer, decode_png};
use crate::redis_faults::{OwnRedis, flush};

fn operator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_operator"))
}

fn configure(command: &mut Command, database: &TestDatabase, redis: &RedisPrefix, isolation: &str) {
    let services = TestServices::from_env();
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database.url())
        .env("REDIS_URL", &services.redis_url)
        .env("OPERATOR_REDIS__KEY_PREFIX", redis.prefix())
        .env(
            "STORAGE_URL",
            format!("s3://{}/{isolation}", services.s3_bucket),
        )
        .env("AWS_ENDPOINT_URL", &services.s3_endpoint)
        .env("AWS_ACCESS_KEY_ID", &services.s3_access_key)
        .env("AWS_SECRET_ACCESS_KEY", &services.s3_secret_key)
        .env("OPERATOR_STORAGE__ALLOW_HTTP", "true")
        .env("OPERATOR_NETWORK__ALLOW", "127.0.0.0/8")
        .env("OPERATOR_SERVER__PORT", "0")
        .env("OPERATOR_TELEMETRY__LOG_FORMAT", "json");
    if let Ok(chrome) = std::env::var("CHROME_PATH") {
        command.env("CHROME_PATH", chrome);
    }
}

/// A child process that is killed (with any Chromium it started) if the test ends
/// while it still runs, so a failing test leaves nothing behind.
struct Spawned(Child);

impl std::ops::Deref for Spawned {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Spawned {
    /// SIGKILL: the process gets no chance to clean up. Its orphaned Chromium (a killed
    /// worker cannot stop it) and browser profile are removed here.
    fn kill_hard(&mut self) {
        let pid = self.0.id();
        let _ = self.0.kill();
        let _ = self.0.wait();
        for orphan in chromium_pids_of(pid) {
            let _ = Command::new("kill")
                .args(["-KILL", &orphan.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while !chromium_pids_of(pid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile_prefix = format!("operator-chromium-{pid}-");
        if let Ok(entries) = std::fs::read_dir("/tmp") {
            for entry in entries.filter_map(Result::ok) {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&profile_prefix)
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.kill_hard();
        }
    }
}

/// A migrated PostgreSQL database, a Redis prefix and an S3 prefix that API and
/// worker processes share.
struct Deployment {
    database: TestDatabase,
    redis: RedisPrefix,
    /// A Redis other than the shared one (a test's own, to flush and kill).
    redis_url: Option<String>,
    isolation: String,
}

impl Deployment {
    async fn migrated() -> Self {
        Self::migrated_on(None).await
    }

    async fn migrated_on(redis_url: Option<String>) -> Self {
        let deployment = Self {
            database: TestDatabase::postgres().await,
            redis: RedisPrefix::new(),
            redis_url,
            isolation: unique_name("processes"),
        };
        let mut migrate = deployment.command();
        assert!(
            migrate
                .arg("migrate")
                .status()
                .expect("run operator migrate")
                .success()
        );
        deployment
    }

    fn command(&self) -> Command {
        let mut command = operator();
        configure(&mut command, &self.database, &self.redis, &self.isolation);
        if let Some(url) = &self.redis_url {
            command.env("REDIS_URL", url);
        }
        command
    }

    /// `operator api`; returns the process and a client for the address it printed,
    /// holding an owner key made with `operator keys create`.
    async fn api(&self) -> (Spawned, ApiClient) {
        let key = make_key(self.command());
        spawn_api(self.command(), &key).await
    }

    /// `operator worker` with its id and any extra settings.
    fn worker(&self, id: &str, settings: &[(&str, &str)]) -> Spawned {
        let mut command = self.worker_command(id, settings);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command.spawn().map(Spawned).expect("spawn worker")
    }

    /// [`Self::worker`], with what it logs collected.
    fn logged_worker(
        &self,
        id: &str,
        settings: &[(&str, &str)],
    ) -> (Spawned, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let mut command = self.worker_command(id, settings);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut worker = command.spawn().map(Spawned).expect("spawn worker");
        let output = collect_output(&mut worker);
        (worker, output)
    }

    fn worker_command(&self, id: &str, settings: &[(&str, &str)]) -> Command {
        let mut command = self.command();
        command
            .arg("worker")
            .env("OPERATOR_WORKER__ID", id)
            .envs(settings.iter().copied());
        command
    }

    /// `operator scheduler`, reconciling every second.
    fn scheduler(&self) -> Spawned {
        let mut command = self.command();
        command
            .arg("scheduler")
            .env("OPERATOR_SCHEDULER__RECONCILE_INTERVAL", "1s")
            .env("OPERATOR_SCHEDULER__RECONCILE_GRACE", "1s")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.spawn().map(Spawned).expect("spawn scheduler")
    }
}

/// `operator keys create`: an owner key of the `default` tenant that runs the platform
/// too (it manages queues), from what it printed.
fn make_key(mut command: Command) -> String {
    let output = command
        .args([
            "keys",
            "create",
            "--tenant",
            "default",
            "--role",
            "owner",
            "--platform-admin",
        ])
        .output()
        .expect("run operator keys create");
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    printed
        .lines()
        .last()
        .filter(|line| line.starts_with("opk_"))
        .unwrap_or_else(|| panic!("operator keys create printed no key: {printed}"))
        .to_owned()
}

async fn spawn_api(mut command: Command, key: &str) -> (Spawned, ApiClient) {
    let mut api = command
        .arg("api")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(Spawned)
        .expect("spawn api");
    let stdout = api.stdout.take().expect("stdout");
    let url = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                line.strip_prefix("OperatorNext API: ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_owned)
            })
    })
    .await
    .expect("join")
    .expect("the API prints its address");
    (api, ApiClient::with_key(url, key))
}

/// Sends SIGTERM and waits for a clean exit.
fn terminate(child: &mut Child, name: &str) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(
                status.success(),
                "{name} exits cleanly on SIGTERM: {status}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Chromium processes whose profile belongs to this worker process (the child runs
/// with a cleared environment, so its profiles live under /tmp).
fn chromium_processes_of(worker_pid: u32) -> usize {
    chromium_pids_of(worker_pid).len()
}

fn chromium_pids_of(worker_pid: u32) -> Vec<u32> {
    let marker = format!("operator-chromium-{worker_pid}-");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&marker))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_worker_processes_run_a_task_together() {
    operator_store::install_crypto_provider();
    let pages = PageServer::start().await;
    let database = TestDatabase::postgres_unmigrated().await;
    let redis = RedisPrefix::new();
    let isolation = unique_name("processes");

    // An API on an unmigrated database refuses to start, and says what to do.
    let mut early = operator();
    configure(&mut early, &database, &redis, &isolation);
    let output = early.arg("api").output().expect("run operator api");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("operator migrate"),
        "{output:?}"
    );

    let mut migrate = operator();
    configure(&mut migrate, &database, &redis, &isolation);
    let status = migrate
        .arg("migrate")
        .status()
        .expect("run operator migrate");
    assert!(status.success());

    let mut keys = operator();
    configure(&mut keys, &database, &redis, &isolation);
    let key = make_key(keys);
    let mut api = operator();
    configure(&mut api, &database, &redis, &isolation);
    let (mut api, api_client) = spawn_api(api, &key).await;

    let mut worker = operator();
    configure(&mut worker, &database, &redis, &isolation);
    let mut worker = worker
        .args(["worker"])
        .env("OPERATOR_WORKER__ID", "process-worker-1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Spawned)
        .expect("spawn worker");

    let (status, task) = api_client
        .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("processes"), "viewport": {"width": 500, "height": 300}}}))
        .await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().expect("id").to_owned();
    let done = api_client
        .wait_for(
            &id,
            &["succeeded", "failed", "dead"],
            Duration::from_secs(90),
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, attempts) = api_client.get(&format!("/v1/tasks/{id}/attempts")).await;
    assert_eq!(
        attempts["items"][0]["worker_id"], "process-worker-1",
        "the worker process ran it"
    );
    let (content_type, bytes) = api_client
        .download(done["artifacts"][0]["url"].as_str().expect("url"))
        .await;
    assert_eq!(content_type, "image/png");
    assert_eq!(decode_png(&bytes, 0, 0).0, 500);

    let worker_pid = worker.id();
    assert!(
        chromium_processes_of(worker_pid) > 0,
        "the worker keeps a warm browser"
    );
    terminate(&mut worker, "operator worker");
    terminate(&mut api, "operator api");
    // Chromium's helpers exit once their parent is gone; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while chromium_processes_of(worker_pid) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        chromium_processes_of(worker_pid),
        0,
        "no Chromium outlives its worker"
    );
    let profile_prefix = format!("operator-chromium-{worker_pid}-");
    let profiles: Vec<_> = std::fs::read_dir("/tmp")
        .expect("/tmp")
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with(&profile_prefix)
        })
        .collect();
    assert!(
        profiles.is_empty(),
        "the worker removed its browser profile: {profiles:?}"
    );
}

/// Polls the task until `ready` says so.
async fn wait_until(
    api: &ApiClient,
    id: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, task) = api.get(&format!("/v1/tasks/{id}")).await;
        if ready(&task) {
            return task;
        }
        assert!(Instant::now() < deadline, "waited 60 s for {what}: {task}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the browser has asked for the slow page `name`: the task is mid-flight.
async fn wait_for_first_load(pages: &FaultPages, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pages.hits("slow", name) == 0 {
        assert!(
            Instant::now() < deadline,
            "the browser never asked for the page"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A task's attempts as (worker, outcome), and when the last one started.
async fn attempts_of(
    api: &ApiClient,
    id: &str,
) -> (Vec<(String, String)>, chrono::DateTime<chrono::Utc>) {
    let (_, attempts) = api.get(&format!("/v1/tasks/{id}/attempts")).await;
    let items = attempts["items"].as_array().expect("items");
    let workers_and_outcomes = items
        .iter()
        .map(|attempt| {
            (
                attempt["worker_id"].as_str().unwrap_or_default().to_owned(),
                attempt["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let last_started = items
        .last()
        .and_then(|attempt| attempt["started_at"].as_str())
        .and_then(|at| at.parse().ok())
        .expect("started_at");
    (workers_and_outcomes, last_started)
}

/// kill -9 of the worker running a task: its lease expires, another worker claims the
/// task and finishes it. One terminal state; the attempts show both workers; the page
/// was loaded twice, once per attempt, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_loses_it_to_another_worker_after_its_lease() {
    operator_store::install_crypto_provider();
    let pages = FaultPages::start(Duration::from_secs(4), 0).await;
    let deployment = Deployment::migrated().await;
    let (_api_process, api) = deployment.api().await;
    let short_lease = [("OPERATOR_QUEUE__LEASE_TTL", "3s")];
    let mut doomed = deployment.worker("doomed-worker", &short_lease);

    let (status, task) = api
        .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("slow", "killed"), "viewport": {"width": 320, "height": 200}}}))
        .await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().expect("id").to_owned();
    wait_until(&api, &id, "the doomed worker to start it", |task| {
        task["state"] == "running"
    })
    .await;
    // Killed while its browser waits for the slow page.
    wait_for_first_load(&pages, "killed").await;
    doomed.kill_hard();
    let killed_at = chrono::Utc::now();

    let _survivor = deployment.worker("survivor-worker", &short_lease);
    let done = api
        .wait_for(
            &id,
            &["succeeded", "failed", "dead", "timed_out"],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2);
    let (attempts, second_started) = attempts_of(&api, &id).await;
    assert_eq!(
        attempts,
        vec![
            ("doomed-worker".to_owned(), "lease_expired".to_owned()),
            ("survivor-worker".to_owned(), "succeeded".to_owned()),
        ]
    );
    let taken_after = second_started - killed_at;
    assert!(
        taken_after < chrono::Duration::seconds(15),
        "taken over {taken_after} after the kill, with a 3 s lease"
    );
    assert_eq!(pages.hits("slow", "killed"), 2, "one page load per attempt");
}

/// SIGSTOP of the worker running a task, for longer than its lease: another worker
/// takes the task over and finishes it. Resumed, the stopped worker finds its lease
/// gone whichever it reaches first, its heartbeat or its finish: it writes nothing,
/// and the task keeps the survivor's outcome and files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_past_its_lease_resumes_and_writes_nothing() {
    operator_store::install_crypto_provider();
    let pages = FaultPages::start(Duration::from_secs(3), 0).await;
    let deployment = Deployment::migrated().await;
    let (_api_process, api) = deployment.api().await;
    let short_lease = [("OPERATOR_QUEUE__LEASE_TTL", "3s")];
    let (mut frozen, frozen_log) = deployment.logged_worker("frozen-worker", &short_lease);

    let (status, task) = api
        .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("slow", "frozen"), "viewport": {"width": 320, "height": 200}}}))
        .await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().expect("id").to_owned();
    wait_for_first_load(&pages, "frozen").await;
    signal(&frozen, "STOP");

    let _survivor = deployment.worker("survivor-worker", &short_lease);
    let done = api.wait_for(&id, &ENDED, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (attempts, _) = attempts_of(&api, &id).await;
    assert_eq!(
        attempts,
        vec![
            ("frozen-worker".to_owned(), "lease_expired".to_owned()),
            ("survivor-worker".to_owned(), "succeeded".to_owned()),
        ]
    );

    // By now the frozen worker's page has loaded too: resumed, it has a screenshot to
    // upload and an outcome to record, under a lease that is gone.
    signal(&frozen, "CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let log = frozen_log.lock().expect("lines").join("\n");
        if let Some(line) = log.lines().find(|line| line.contains("lease lost")) {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the resumed worker never noticed its lost lease: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (_, after) = api.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(after["state"], "succeeded", "{refused}");
    assert_eq!(after["attempts"], 2, "{after}");
    assert_eq!(
        after["result"], done["result"],
        "the survivor's result stays"
    );
    let files = |task: &serde_json::Value| -> Vec<(String, String)> {
        task["artifacts"]
            .as_array()
            .expect("artifacts")
            .iter()
            .map(|file| (file["id"].to_string(), file["sha256"].to_string()))
            .collect()
    };
    assert_eq!(files(&after), files(&done), "and its files alone");
    assert_eq!(
        attempts_of(&api, &id).await.0,
        attempts,
        "no attempt rewritten"
    );
    assert!(
        frozen.try_wait().expect("wait").is_none(),
        "the resumed worker lives on"
    );
}

/// Redis flushed while tasks are leased, then killed and restarted while others are:
/// real worker processes with 3 s leases, and the scheduler re-dispatching. Every task
/// succeeds, and each ran in Chromium exactly once: a flushed lease does not hand a
/// running task to a second worker (the database lease, renewed, still holds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed_and_restarted_under_leased_tasks_loses_none_and_runs_none_twice() {
    operator_store::install_crypto_provider();
    let mut redis = OwnRedis::start();
    let pages = FaultPages::start(Duration::from_millis(1500), 0).await;
    let deployment = Deployment::migrated_on(Some(redis.url())).await;
    let (_api_process, api) = deployment.api().await;
    let _scheduler = deployment.scheduler();
    let short_lease = [
        ("OPERATOR_QUEUE__LEASE_TTL", "3s"),
        ("OPERATOR_WORKER__CONCURRENCY", "3"),
    ];
    let _workers = [
        deployment.worker("worker-a", &short_lease),
        deployment.worker("worker-b", &short_lease),
    ];
    const TASKS: usize = 24;
    let mut ids = Vec::with_capacity(TASKS);
    for index in 0..TASKS {
        let (status, task) = api
            .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("slow", &format!("t{index}")), "viewport": {"width": 320, "height": 200}}}))
            .await;
        assert_eq!(status, 202, "{task}");
        ids.push(task["id"].as_str().expect("id").to_owned());
    }
    let counts = |api: &ApiClient| {
        let api = api.clone();
        let ids = ids.clone();
        async move {
            let mut running = 0;
            let mut ended = 0;
            for id in &ids {
                let (_, task) = api.get(&format!("/v1/tasks/{id}")).await;
                match task["state"].as_str() {
                    Some("running") => running += 1,
                    Some(state) if ENDED.contains(&state) => ended += 1,
                    _ => {}
                }
            }
            (running, ended)
        }
    };
    let wait_for = |what: &'static str, ready: fn((usize, usize)) -> bool| {
        let counts = &counts;
        let api = &api;
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let now = counts(api).await;
                if ready(now) {
                    return now;
                }
                assert!(
                    Instant::now() < deadline,
                    "waited 120 s for {what}: {now:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let (running, _) = wait_for("tasks to run", |(running, _)| running >= 2).await;
    flush(&redis).await;
    let (_, ended) = wait_for("more tasks to end after the flush", |(running, ended)| {
        ended >= 8 && running >= 2
    })
    .await;
    redis.kill();
    // Down for two lease renewals of the running tasks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();
    wait_for("every task to end", |(_, ended)| ended == TASKS).await;

    for (index, id) in ids.iter().enumerate() {
        let (_, task) = api.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(task["state"], "succeeded", "{task}");
        assert_eq!(task["attempts"], 1, "ran once: {task}");
        assert_eq!(
            pages.hits("slow", &format!("t{index}")),
            1,
            "loaded once in Chromium: {task}"
        );
    }
    assert!(running >= 2 && ended < TASKS, "the faults hit leased tasks");
}

/// Sends a signal (`STOP`, `CONT`, …) to a process.
fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name}");
}

/// SIGTERM while a task runs past the shutdown grace: the worker hands the lease back,
/// and another worker starts the task at once, long before the lease would expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_hands_its_task_back_at_once() {
    operator_store::install_crypto_provider();
    let pages = FaultPages::start(Duration::from_secs(6), 0).await;
    let deployment = Deployment::migrated().await;
    let (_api_process, api) = deployment.api().await;
    // The default 30 s lease: a take-over within seconds can only be a hand-back.
    let mut leaving = deployment.worker(
        "leaving-worker",
        &[("OPERATOR_WORKER__SHUTDOWN_GRACE", "1s")],
    );

    let (_, task) = api
        .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("slow", "handed-back"), "viewport": {"width": 320, "height": 200}}}))
        .await;
    let id = task["id"].as_str().expect("id").to_owned();
    wait_until(&api, &id, "the leaving worker to start it", |task| {
        task["state"] == "running"
    })
    .await;
    wait_for_first_load(&pages, "handed-back").await;
    let _staying = deployment.worker("staying-worker", &[]);
    let stopped_at = chrono::Utc::now();
    terminate(&mut leaving, "the leaving worker");

    let done = api
        .wait_for(
            &id,
            &["succeeded", "failed", "dead", "timed_out"],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (attempts, second_started) = attempts_of(&api, &id).await;
    assert_eq!(
        attempts,
        vec![
            ("leaving-worker".to_owned(), "released".to_owned()),
            ("staying-worker".to_owned(), "succeeded".to_owned()),
        ]
    );
    let taken_after = second_started - stopped_at;
    assert!(
        taken_after < chrono::Duration::seconds(10),
        "taken over {taken_after} after SIGTERM; the lease had 30 s left"
    );
}

/// kill -9 of an idle worker with a warm browser: the worker cannot clean up, but the
/// kernel kills its browser (Chromium is started with a parent-death signal) and
/// Chromium's helper processes follow, so nothing carrying its profile is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_browser_dies_with_it() {
    operator_store::install_crypto_provider();
    let deployment = Deployment::migrated().await;
    let mut worker = deployment.worker("killed-idle-worker", &[]);
    let worker_pid = worker.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while chromium_processes_of(worker_pid) == 0 {
        assert!(
            Instant::now() < deadline,
            "the worker never started its browser"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for the spare pages' renderers to start too: they must go as well.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warm = chromium_processes_of(worker_pid);

    worker.0.kill().expect("SIGKILL the worker");
    worker.0.wait().expect("reap the worker");
    let deadline = Instant::now() + Duration::from_secs(5);
    while chromium_processes_of(worker_pid) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let survivors = chromium_pids_of(worker_pid);
    // Cleaned up before asserting, so a failure leaves nothing behind either.
    worker.kill_hard();
    assert!(
        survivors.is_empty(),
        "{} of {warm} Chromium processes outlived their SIGKILL'd worker by 5 s: {survivors:?}",
        survivors.len()
    );
}

/// Worker processes serve the queues `OPERATOR_WORKER__QUEUES` lists: a `reports` worker
/// runs the `reports` task and leaves the `default` one queued until a worker for
/// `default` comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_take_tasks_only_from_the_queues_they_serve() {
    operator_store::install_crypto_provider();
    let pages = PageServer::start().await;
    let deployment = Deployment::migrated().await;
    let (_api_process, api) = deployment.api().await;
    let (status, _) = api.put("/v1/queues/reports", &json!({})).await;
    assert_eq!(status, 201);
    let _reports_worker =
        deployment.worker("reports-worker", &[("OPERATOR_WORKER__QUEUES", "reports")]);

    let screenshot = |queue: &str| json!({"kind": "screenshot", "queue": queue, "input": {"url": pages.url(queue), "viewport": {"width": 320, "height": 200}}});
    let (status, for_default) = api.submit(&screenshot("default")).await;
    assert_eq!(status, 202, "{for_default}");
    let (status, for_reports) = api.submit(&screenshot("reports")).await;
    assert_eq!(status, 202, "{for_reports}");
    let reports_id = for_reports["id"].as_str().expect("id");
    let done = api
        .wait_for(reports_id, &ENDED, Duration::from_secs(60))
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(attempts_of(&api, reports_id).await.0[0].0, "reports-worker");

    // The reports worker is idle now, and still leaves the default task alone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let default_id = for_default["id"].as_str().expect("id");
    let (_, waiting) = api.get(&format!("/v1/tasks/{default_id}")).await;
    assert_eq!(waiting["state"], "queued", "{waiting}");
    assert_eq!(pages.hits("default"), 0);

    let _default_worker = deployment.worker(
        "both-worker",
        &[("OPERATOR_WORKER__QUEUES", "default,reports")],
    );
    let done = api
        .wait_for(default_id, &ENDED, Duration::from_secs(60))
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(attempts_of(&api, default_id).await.0[0].0, "both-worker");
}

/// Lines a process writes to stdout and stderr, collected as they come.
fn collect_output(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stdout = child
        .stdout
        .take()
        .map(|out| Box::new(out) as Box<dyn std::io::Read + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|err| Box::new(err) as Box<dyn std::io::Read + Send>);
    for stream in [stdout, stderr].into_iter().flatten() {
        let lines = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(line);
            }
        });
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_reach_the_log() {
    operator_store::install_crypto_provider();
    let deployment = Deployment::migrated().await;
    let key = make_key(deployment.command());
    let mut api = deployment
        .command()
        .arg("api")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(Spawned)
        .expect("spawn api");
    let output = collect_output(&mut api);
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = loop {
        let printed = output.lock().expect("lines").iter().find_map(|line| {
            line.strip_prefix("OperatorNext API: ")
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
        });
        if let Some(url) = printed {
            break url;
        }
        assert!(Instant::now() < deadline, "the API printed no address");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let owner = ApiClient::with_key(url.clone(), &key);
    assert_eq!(owner.get("/v1/tasks").await.0, 200);
    let response = owner
        .http
        .post(format!("{url}/v1/api-keys"))
        .json(&json!({"name": "for the log test", "role": "viewer"}))
        .send()
        .await
        .expect("create");
    let (status, created) = operator_testkit::read_json(response).await;
    assert_eq!(status, 201, "{created}");
    let made = created["key"].as_str().expect("key").to_owned();
    let viewer = ApiClient::with_key(url.clone(), &made);
    assert_eq!(viewer.get("/v1/tasks").await.0, 200);
    let response = owner
        .http
        .delete(format!(
            "{url}/v1/api-keys/{}",
            created["id"].as_str().expect("id")
        ))
        .send()
        .await
        .expect("revoke");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(viewer.get("/v1/tasks").await.0, 401);
    let mut typo = key.clone().into_bytes();
    typo[30] = if typo[30] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).expect("ascii");
    assert_eq!(
        ApiClient::with_key(url, &typo).get("/v1/tasks").await.0,
        401
    );
    terminate(&mut api, "operator api");

    let log = output.lock().expect("lines").join("\n");
    assert!(
        log.contains("authentication refused"),
        "refusals are logged: {log}"
    );
    assert!(log.contains("API key revoked"), "revocations are logged");
    for secret in [&key, &made, &typo] {
        assert!(
            !log.contains(&secret[16..]),
            "the secret part of {}… is in the log",
            &secret[..16]
        );
    }
}

/// The password the wizard's sign-in wants; typed by the worker from `secrets`.
const WIZARD_PASSWORD: &str = "open-sesame-7Yq";

/// A six-page wizard behind a sign-in: the pages after it need the session cookie the
/// sign-in sets, so an attempt in a fresh browser gets there only by signing in again.
/// Counts the sign-ins.
fn wizard_site(sign_ins: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> impl poem::Endpoint {
    use poem::web::{Form, Html, Path};
    use poem::{EndpointExt, IntoResponse, Request, get, handler};

    #[handler]
    fn sign_in_page() -> Html<&'static str> {
        Html(
            "<!doctype html><html><head><title>Wizard</title></head><body><h1>Sign in</h1>\
             <form method=\"post\" action=\"/wiz/login\"><label for=\"pw\">Password</label>\
             <input id=\"pw\" name=\"password\" type=\"password\"></form></body></html>",
        )
    }

    #[derive(serde::Deserialize)]
    struct SignIn {
        password: String,
    }

    #[handler]
    fn sign_in(
        Form(form): Form<SignIn>,
        counter: poem::web::Data<&std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    ) -> poem::Response {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if form.password != WIZARD_PASSWORD {
            return Html("<!doctype html><html><body><h1>Wrong password</h1></body></html>")
                .into_response();
        }
        poem::Response::builder()
            .status(poem::http::StatusCode::SEE_OTHER)
            .header("set-cookie", "wizard=signed-in; Path=/wiz")
            .header("location", "/wiz/page/2")
            .finish()
    }

    #[handler]
    fn page(Path(number): Path<u32>, request: &Request) -> Html<String> {
        let signed_in = request
            .header("cookie")
            .is_some_and(|cookie| cookie.contains("wizard=signed-in"));
        if !signed_in {
            return Html("<!doctype html><html><body><h1>Please sign in</h1></body></html>".into());
        }
        let body = if number < 6 {
            format!(
                "<p>Page {number} of 6</p><a href=\"/wiz/page/{}\">Next to page {}</a>",
                number + 1,
                number + 1
            )
        } else {
            "<p>Finished: W-6</p>".to_owned()
        };
        Html(format!(
            "<!doctype html><html><head><title>Page {number}</title></head><body>{body}</body></html>"
        ))
    }

    poem::Route::new()
        .at("/wiz/login", get(sign_in_page).post(sign_in))
        .at("/wiz/page/:number", get(page))
        .data(sign_ins)
}

/// kill -9 of a worker in the middle of an agent task (while the model thinks about
/// step 4): another worker resumes it from the checkpoint of step 3. It replays the
/// three recorded steps without the model (signing in again in its own browser, the
/// password typed from the secrets), asks the model only from step 4 on, and the task
/// ends with six steps, each recorded once, each with its screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_resumes_after_its_worker_is_killed_without_asking_the_model_again() {
    use crate::model_server::{Call, ModelServer, Reply, index_in};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    operator_store::install_crypto_provider();
    let sign_ins = Arc::new(AtomicUsize::new(0));
    let (site, _stop_site) =
        crate::helpers::serve_on_loopback(wizard_site(Arc::clone(&sign_ins))).await;
    let hung = Arc::new(AtomicBool::new(false));
    let first_step_four = Arc::clone(&hung);
    let model = ModelServer::start(move |call: &Call<'_>| {
        let page = call.page();
        if page.contains("Step 4 of at most") && !first_step_four.swap(true, Ordering::SeqCst) {
            return Reply::Hang;
        }
        if page.contains("Finished: W-6") {
            return Reply::Tool("done", json!({"output": {"code": "W-6"}, "reason": "finished"}));
        }
        if page.contains("Sign in") {
            return Reply::Tool(
                "type",
                json!({"index": index_in(&page, "name=\"password\""), "text": "{{password}}", "submit": true, "reason": "sign in"}),
            );
        }
        Reply::Tool("click", json!({"index": call.index_of("Next to page"), "reason": "next"}))
    })
    .await;
    let deployment = Deployment::migrated().await;
    let llm = [("OPERATOR_LLM__BASE_URL", model.base_url.as_str())];
    let mut api_command = deployment.command();
    api_command.envs(llm);
    let key = make_key(deployment.command());
    let (_api_process, api) = spawn_api(api_command, &key).await;
    let settings = [
        ("OPERATOR_QUEUE__LEASE_TTL", "3s"),
        ("OPERATOR_LLM__BASE_URL", model.base_url.as_str()),
    ];
    let mut doomed = deployment.worker("doomed-worker", &settings);

    let (status, task) = api
        .submit(&json!({"kind": "agent", "max_attempts": 3, "input": {
            "goal": "WIZARD: sign in with {{password}} and go through the pages to the code",
            "url": format!("{site}/wiz/login"),
            "secrets": {"password": WIZARD_PASSWORD},
        }}))
        .await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !hung.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the model was never asked for step 4: {:?}",
            model
                .requests()
                .iter()
                .map(crate::model_server::last_user_text)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill_hard();
    assert_eq!(sign_ins.load(Ordering::SeqCst), 1);

    let _survivor = deployment.worker("survivor-worker", &settings);
    let done = api.wait_for(&id, &ENDED, Duration::from_secs(90)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["result"]["output"], json!({"code": "W-6"}));
    let (attempts, _) = attempts_of(&api, &id).await;
    assert_eq!(
        attempts,
        vec![
            ("doomed-worker".to_owned(), "lease_expired".to_owned()),
            ("survivor-worker".to_owned(), "succeeded".to_owned()),
        ]
    );
    // The model was asked once per step, but for the step the kill interrupted.
    let asked: Vec<u32> = model
        .requests()
        .iter()
        .map(crate::model_server::last_user_text)
        .filter_map(|text| {
            text.strip_prefix("Step ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|number| number.parse().ok())
        })
        .collect();
    assert_eq!(
        asked,
        vec![1, 2, 3, 4, 4, 5, 6],
        "steps the model was asked for"
    );
    assert_eq!(
        sign_ins.load(Ordering::SeqCst),
        2,
        "the survivor signed in again by replaying step 1"
    );
    let actions: Vec<&str> = done["result"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|step| step["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        actions,
        ["type", "click", "click", "click", "click", "done"],
        "{done}"
    );
    let indices: Vec<u64> = api
        .events(&id)
        .await
        .iter()
        .filter(|event| event.data["kind"] == "agent_step")
        .map(|event| event.data["data"]["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(indices, vec![0, 1, 2, 3, 4, 5], "each step's event once");
    let (_, full) = api.get(&format!("/v1/tasks/{id}")).await;
    let mut shots: Vec<String> = full["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .filter_map(|artifact| artifact["name"].as_str())
        .filter(|name| name.starts_with("steps/"))
        .map(str::to_owned)
        .collect();
    shots.sort();
    // `done` changes nothing on the page: the five actions each have their picture.
    let expected: Vec<String> = (1..=5).map(|step| format!("steps/{step:03}.jpg")).collect();
    assert_eq!(shots, expected, "one screenshot per action");
    assert!(!done.to_string().contains(WIZARD_PASSWORD));
}
