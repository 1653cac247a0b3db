//! Test support (a crate for dev-dependencies only): real services, one
//! isolated slice of each per test, cleaned up afterwards.
//!
//! - a PostgreSQL database per test (created, migrated, dropped), or a SQLite file in a
//!   temporary directory;
//! - a Redis key prefix per test (its keys deleted afterwards);
//! - an S3 key prefix per test on the local S3-compatible server.
//!
//! Services are found through `TEST_DATABASE_URL`, `TEST_REDIS_URL`, `TEST_S3_*` and
//! `CHROME_PATH` (what `scripts/services.sh env` prints), with this machine's defaults.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database};
use sea_orm_migration::MigratorTrait;
use secrecy::SecretString;

use operator_config::{QueueBackendKind, Settings};

/// Where the test services are.
#[derive(Debug, Clone)]
pub struct TestServices {
    /// A PostgreSQL URL whose user may create databases.
    pub postgres_admin_url: String,
    pub redis_url: String,
    pub s3_endpoint: String,
    pub s3_bucket: String,
    pub s3_access_key: String,
    pub s3_secret_key: String,
    /// The loopback OpenID provider (`scripts/services.sh oidc`).
    pub oidc_issuer: String,
}

impl TestServices {
    pub fn from_env() -> Self {
        let env: HashMap<String, String> = std::env::vars().collect();
        let get = |name: &str, default: &str| {
            env.get(name).cloned().unwrap_or_else(|| default.to_owned())
        };
        Self {
            postgres_admin_url: get(
                "TEST_DATABASE_URL",
                "postgres://postgres:postgres@127.0.0.1:5432/postgres",
            ),
            redis_url: get("TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            s3_endpoint: get("TEST_S3_ENDPOINT", "http://127.0.0.1:9100"),
            s3_bucket: get("TEST_S3_BUCKET", "operator-test"),
            s3_access_key: get("TEST_S3_ACCESS_KEY", "operator-test"),
            s3_secret_key: get("TEST_S3_SECRET_KEY", "operator-test-secret"),
            oidc_issuer: get("TEST_OIDC_ISSUER", "http://127.0.0.1:9780"),
        }
    }
}

/// A name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A valid screenshot task of `tenant` for repository-level tests (its URL is never
/// fetched); change fields with `NewTask { webhook_url: …, ..screenshot_task(&tenant) }`.
pub fn screenshot_task(tenant: &operator_domain::TenantId) -> operator_domain::NewTask {
    use operator_domain::{NewTask, Priority, TaskKind, TaskSpec};
    NewTask {
        tenant: tenant.clone(),
        queue: Default::default(),
        spec: TaskSpec::parse(
            TaskKind::Screenshot,
            &serde_json::json!({"url": "https://example.test/"}),
        )
        .expect("a valid screenshot input"),
        priority: Priority::Normal,
        max_attempts: 3,
        timeout_ms: 30_000,
        idempotency_key: None,
        request_hash: None,
        webhook_url: None,
        run_at: None,
        trace_parent: None,
    }
}

/// Does to the records what a worker does with a claimed task, minus the browser: starts
/// the attempt under the claim's lease and finishes it as succeeded. `Ok(false)` when
/// the task did not start (already finished, cancelled, or held by another lease) or the
/// lease was lost before the finish. For queue tests and benchmarks that need hundreds
/// of tasks to run in seconds.
pub async fn complete_without_browser(
    repo: &operator_store::db::TaskRepository,
    claim: &operator_store::queue::Claim,
    worker: &str,
) -> Result<bool, operator_store::db::RepoError> {
    use operator_store::db::{FinishOutcome, StartOutcome};
    let started = repo
        .start_attempt(claim.task_id, claim.token, worker, claim.lease_until)
        .await?;
    if !matches!(started, StartOutcome::Started(_)) {
        return Ok(false);
    }
    let outcome = operator_domain::TaskOutcome::Succeeded {
        result: serde_json::json!({"worker": worker}),
        artifacts: Vec::new(),
    };
    let finished = repo.finish(claim.task_id, claim.token, outcome).await?;
    Ok(matches!(finished, FinishOutcome::Recorded(_)))
}

/// A database for one test: a PostgreSQL database of its own, or a SQLite file.
pub struct TestDatabase {
    url: String,
    postgres: Option<(String, String)>,
    _directory: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub async fn sqlite() -> Self {
        let directory = tempfile::tempdir().expect("temporary directory");
        let url = format!(
            "sqlite://{}?mode=rwc",
            directory.path().join("test.db").display()
        );
        let database = Self {
            url,
            postgres: None,
            _directory: Some(directory),
        };
        database.migrate().await;
        database
    }

    pub async fn postgres() -> Self {
        let database = Self::postgres_unmigrated().await;
        database.migrate().await;
        database
    }

    /// An empty PostgreSQL database (for testing `operator migrate` itself).
    pub async fn postgres_unmigrated() -> Self {
        let services = TestServices::from_env();
        let name = unique_name("operator_test");
        let admin = Database::connect(&services.postgres_admin_url)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "PostgreSQL is not reachable at {} ({error}); run `scripts/services.sh` or set TEST_DATABASE_URL",
                    services.postgres_admin_url
                )
            });
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        let mut url =
            url::Url::parse(&services.postgres_admin_url).expect("TEST_DATABASE_URL is a URL");
        url.set_path(&name);
        Self {
            url: url.to_string(),
            postgres: Some((services.postgres_admin_url, name)),
            _directory: None,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    async fn migrate(&self) {
        let connection = operator_store::db::connect_url(&self.url, 2, Duration::from_secs(10))
            .await
            .expect("connect to the test database");
        operator_migrations::Migrator::up(&connection, None)
            .await
            .expect("migrate the test database");
        let _ = connection.close().await;
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs outside any runtime guarantee: use a thread with its own runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let admin = Database::connect(&admin_url).await.ok()?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()?;
                let _ = admin.close().await;
                Some(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("testkit: could not drop a test database");
        }
    }
}

/// Settings for a one-process test on the embedded defaults under `data_dir`: API on
/// port 0, loopback pages allowed, short timeouts.
pub fn embedded_settings(data_dir: &Path) -> Settings {
    let mut settings = Settings {
        data_dir: PathBuf::from(data_dir),
        ..Settings::default()
    };
    settings.server.port = 0;
    settings.queue.backend = QueueBackendKind::Database;
    settings.queue.poll_interval = Duration::from_millis(100);
    settings.network.allow = vec!["127.0.0.0/8".into(), "::1".into()];
    settings.worker.concurrency = 2;
    settings.worker.shutdown_grace = Duration::from_secs(5);
    settings.tasks.retry_base_delay = Duration::from_millis(200);
    settings.tasks.retry_max_delay = Duration::from_secs(1);
    settings.scheduler.reconcile_interval = Duration::from_secs(1);
    settings.scheduler.reconcile_grace = Duration::from_secs(1);
    settings.webhooks.retry_schedule = [200, 500, 1000, 1000, 1000, 1000, 1000]
        .into_iter()
        .map(|millis| Duration::from_millis(millis).into())
        .collect();
    settings.webhooks.poll_interval = Duration::from_millis(100);
    settings
}

/// Settings for the distributed setup: PostgreSQL `database`, Redis under its own key
/// prefix, S3 under its own key prefix.
pub fn distributed_settings(database: &TestDatabase, isolation: &str) -> Settings {
    let services = TestServices::from_env();
    let mut settings = embedded_settings(Path::new("/nonexistent-data-dir"));
    settings.database.url = Some(SecretString::from(database.url().to_owned()));
    settings.database.max_connections = 8;
    settings.redis.url = Some(SecretString::from(services.redis_url.clone()));
    settings.redis.key_prefix = isolation.to_owned();
    settings.queue.backend = QueueBackendKind::Redis;
    settings.storage.url = Some(format!("s3://{}/{isolation}", services.s3_bucket));
    settings.storage.endpoint = Some(services.s3_endpoint.clone());
    settings.storage.access_key_id = Some(services.s3_access_key.clone());
    settings.storage.secret_access_key = Some(SecretString::from(services.s3_secret_key.clone()));
    settings.storage.allow_http = true;
    settings.storage.path_style = true;
    settings
}

/// A Redis key prefix of one test; its keys are deleted when the guard drops, also
/// when the test panicked.
pub struct RedisPrefix {
    settings: operator_config::RedisSettings,
}

impl RedisPrefix {
    pub fn new() -> Self {
        Self {
            settings: operator_config::RedisSettings {
                url: Some(SecretString::from(TestServices::from_env().redis_url)),
                key_prefix: unique_name("test"),
                command_timeout: Duration::from_secs(5),
            },
        }
    }

    pub fn settings(&self) -> &operator_config::RedisSettings {
        &self.settings
    }

    pub fn prefix(&self) -> &str {
        &self.settings.key_prefix
    }
}

impl Default for RedisPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let settings = self.settings.clone();
        let purged = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let queue = operator_store::queue::redis::RedisQueue::connect(&settings)
                    .await
                    .ok()?;
                queue.purge().await.ok()
            })
        })
        .join();
        if !matches!(purged, Ok(Some(()))) {
            eprintln!("testkit: could not delete a test's Redis keys");
        }
    }
}

/// An HTTP client for the API under test: JSON in, `(status, JSON)` out.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// The API's base URL, e.g. `http://127.0.0.1:40123`.
    pub base: String,
    pub http: reqwest::Client,
}

impl ApiClient {
    /// A client that presents no credentials.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::new(),
        }
    }

    /// A client that sends `Authorization: Bearer <key>` with every request, including
    /// those made through [`ApiClient::http`] directly.
    pub fn with_key(base: impl Into<String>, key: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .expect("a key is a valid header value");
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
        Self {
            base: base.into(),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .expect("client"),
        }
    }

    /// POSTs a raw body as JSON to `/v1/tasks`.
    pub async fn submit_raw(&self, body: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(format!("{}/v1/tasks", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("submit");
        read_json(response).await
    }

    pub async fn submit(&self, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.submit_raw(&body.to_string()).await
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("get");
        read_json(response).await
    }

    /// A task's event stream read to its end: the whole history of a finished task.
    pub async fn events(&self, id: &str) -> Vec<SseEvent> {
        let response = self
            .http
            .get(format!("{}/v1/tasks/{id}/events", self.base))
            .send()
            .await
            .expect("connect to the event stream");
        read_sse(response).await
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .expect("delete");
        read_json(response).await
    }

    pub async fn post(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .send()
            .await
            .expect("post");
        read_json(response).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("post");
        read_json(response).await
    }

    pub async fn put(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .http
            .put(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("put");
        read_json(response).await
    }

    /// Polls the task until it reaches one of `states`; panics after `timeout`.
    pub async fn wait_for(
        &self,
        id: &str,
        states: &[&str],
        timeout: Duration,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, task) = self.get(&format!("/v1/tasks/{id}")).await;
            assert_eq!(status, 200, "{task}");
            let state = task["state"].as_str().unwrap_or_default().to_owned();
            if states.contains(&state.as_str()) {
                return task;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} still {state} after {timeout:?}, expected one of {states:?}: {task}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Downloads an absolute URL (an artifact link); returns content type and bytes.
    pub async fn download(&self, url: &str) -> (String, Vec<u8>) {
        let response = self.http.get(url).send().await.expect("download");
        assert_eq!(response.status().as_u16(), 200, "download {url}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (
            content_type,
            response.bytes().await.expect("bytes").to_vec(),
        )
    }
}

/// Makes an API key of `role` for `tenant` (creating the tenant if it does not exist)
/// on the database behind `connection`; returns the key.
pub async fn issue_key(
    connection: &sea_orm::DatabaseConnection,
    tenant: &str,
    role: operator_domain::auth::Role,
) -> String {
    issue_key_with(connection, tenant, role, false).await
}

/// [`issue_key`], optionally a platform-admin key (it may also manage tenants).
pub async fn issue_key_with(
    connection: &sea_orm::DatabaseConnection,
    tenant: &str,
    role: operator_domain::auth::Role,
    platform_admin: bool,
) -> String {
    use operator_store::db::{CreateTenantError, NewKey, TenantRepository};
    let tenants = TenantRepository::new(connection.clone());
    let tenant = operator_domain::TenantId::parse(tenant).expect("tenant id");
    match tenants.create_tenant(&tenant, tenant.as_str()).await {
        Ok(_) | Err(CreateTenantError::Exists(_)) => {}
        Err(error) => panic!("create tenant {tenant}: {error}"),
    }
    let (_, token) = tenants
        .create_key(NewKey {
            tenant,
            name: format!("test {role} key"),
            role,
            platform_admin,
            expires_at: None,
            created_by: Some("testkit".to_owned()),
        })
        .await
        .expect("create key");
    token.expose().to_owned()
}

/// Status and body of a response; a body that is not JSON comes back as a string.
pub async fn read_json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

/// One request a [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl ReceivedRequest {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// A real HTTP receiver on loopback for webhook tests: it answers the scripted statuses
/// in order, then 200, and keeps every request it got. A scripted `0` never answers
/// (the connection hangs for a minute), to catch a sender mid-request. A small HTTP/1.1 server of its
/// own (one request per connection), so tests need no web framework.
pub struct WebhookReceiver {
    pub url: String,
    pub port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<ReceivedRequest>>>,
    server: tokio::task::JoinHandle<()>,
}

/// A loopback port that was free a moment ago (for a receiver that starts later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

impl WebhookReceiver {
    pub async fn start(script: Vec<u16>) -> Self {
        Self::start_on(0, script).await
    }

    pub async fn start_on(port: u16, script: Vec<u16>) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the webhook receiver");
        let port = listener.local_addr().expect("address").port();
        let requests: std::sync::Arc<std::sync::Mutex<Vec<ReceivedRequest>>> = Default::default();
        let script = std::sync::Arc::new(std::sync::Mutex::new(
            script
                .into_iter()
                .collect::<std::collections::VecDeque<u16>>(),
        ));
        let recorded = std::sync::Arc::clone(&requests);
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = std::sync::Arc::clone(&recorded);
                let script = std::sync::Arc::clone(&script);
                tokio::spawn(async move {
                    let _ = serve_one(stream, recorded, script).await;
                });
            }
        });
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            port,
            requests,
            server,
        }
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.requests.lock().expect("lock").clone()
    }

    /// Waits until at least `count` requests arrived; panics after `timeout`.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<ReceivedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= count {
                return requests;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver got {} requests after {timeout:?}, expected {count}",
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve_one(
    mut stream: tokio::net::TcpStream,
    recorded: std::sync::Arc<std::sync::Mutex<Vec<ReceivedRequest>>>,
    script: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<u16>>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(position) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break position;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[header_end + 4..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    let status = script.lock().expect("lock").pop_front().unwrap_or(200);
    recorded.lock().expect("lock").push(ReceivedRequest {
        method,
        path,
        headers,
        body,
    });
    if status == 0 {
        tokio::time::sleep(Duration::from_secs(60)).await;
        return Ok(());
    }
    let answer = format!("answered {status}");
    let response = format!(
        "HTTP/1.1 {status} Scripted\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: serde_json::Value,
}

/// Reads a whole SSE response until the server closes it.
pub async fn read_sse(response: reqwest::Response) -> Vec<SseEvent> {
    read_sse_counting(response, tokio::sync::watch::channel(0).0).await
}

/// [`read_sse`], telling `seen` how many events have arrived so far, so that a test can
/// wait until the stream is live (its history read) before it makes the next event.
pub async fn read_sse_counting(
    response: reqwest::Response,
    seen: tokio::sync::watch::Sender<usize>,
) -> Vec<SseEvent> {
    use futures::StreamExt;
    let mut bytes = response.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), bytes.next())
        .await
        .expect("the stream goes on or ends in time")
    {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        let complete = text.replace("\r\n", "\n");
        let arrived = complete
            .split("\n\n")
            .take(complete.matches("\n\n").count())
            .filter(|block| block.lines().any(|line| line.starts_with("data:")))
            .count();
        seen.send_replace(arrived);
    }
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|block| {
            let mut event = SseEvent {
                id: None,
                event: None,
                data: serde_json::Value::Null,
            };
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    event.id = Some(value.trim().to_owned());
                } else if let Some(value) = line.strip_prefix("event:") {
                    event.event = Some(value.trim().to_owned());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim());
                }
            }
            if data.is_empty() {
                return None;
            }
            event.data = serde_json::from_str(&data).expect("JSON data");
            Some(event)
        })
        .collect()
}
