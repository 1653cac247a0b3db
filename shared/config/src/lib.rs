//! Settings: one typed tree, layered defaults → optional TOML file → environment.
//!
//! Environment variables are `OPERATOR_<SECTION>__<KEY>` (`__` nests), e.g.
//! `OPERATOR_SERVER__PORT=9000`, `OPERATOR_NETWORK__ALLOW=10.0.0.0/8,intranet.example`.
//! The conventional names `DATABASE_URL`, `REDIS_URL`, `STORAGE_URL`, `CHROME_PATH`,
//! `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_REGION` are
//! honoured too and win over the `OPERATOR_*` forms.
//!
//! The loader takes the environment as a map, so tests build settings without touching
//! the process environment. Settings are read once at start-up; anything invalid stops
//! start-up with a message naming the setting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use operator_domain::network::{NetworkPolicy, PolicyParseError};

/// The environment variable that names an optional settings file.
pub const CONFIG_FILE_ENV: &str = "OPERATOR_CONFIG_FILE";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {setting}: {problem}")]
    Invalid {
        setting: &'static str,
        problem: String,
    },
    #[error("cannot read settings file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the embedded defaults keep their files (SQLite database, artifacts).
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub queue: QueueSettings,
    pub storage: StorageSettings,
    pub browser: BrowserSettings,
    pub worker: WorkerSettings,
    pub scheduler: SchedulerSettings,
    pub tasks: TaskSettings,
    pub network: NetworkSettings,
    pub webhooks: WebhookSettings,
    pub events: EventSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub llm: LlmSettings,
    pub agent: AgentSettings,
    pub telemetry: TelemetrySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            redis: RedisSettings::default(),
            queue: QueueSettings::default(),
            storage: StorageSettings::default(),
            browser: BrowserSettings::default(),
            worker: WorkerSettings::default(),
            scheduler: SchedulerSettings::default(),
            tasks: TaskSettings::default(),
            network: NetworkSettings::default(),
            webhooks: WebhookSettings::default(),
            events: EventSettings::default(),
            auth: AuthSettings::default(),
            limits: LimitSettings::default(),
            llm: LlmSettings::default(),
            agent: AgentSettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Loopback by default; any address once authentication is on (`auth.enabled`,
    /// the default). The `api` role refuses a non-loopback address with it off.
    pub host: String,
    pub port: u16,
    /// The address clients use to reach the API, for links in responses; derived from
    /// host and port when absent.
    pub public_url: Option<String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long the one-call endpoints (`POST /v1/screenshot`, ...) wait for their task
    /// before answering `202` with the task instead. Bounded so a slow queue cannot hold
    /// connections open indefinitely.
    #[serde(with = "humantime_serde")]
    pub sync_wait: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            public_url: None,
            max_body_bytes: 256 * 1024,
            sync_wait: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://…` or `sqlite://…`; `sqlite://<data_dir>/operator.db` when absent.
    pub url: Option<SecretString>,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The group commit of the hot transitions on PostgreSQL.
    pub batch: BatchSettings,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            connect_timeout: Duration::from_secs(10),
            batch: BatchSettings::default(),
        }
    }
}

/// On PostgreSQL, concurrent creates, starts and finishes of tasks are each written by
/// one statement per batch (SQLite writes each in its own transaction). The defaults
/// are the measured best on the queue bench (`docs/benchmarks.md`); they rarely need
/// changing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSettings {
    /// The most tasks one statement writes.
    pub max_size: usize,
    /// Flush loops per transition. One: while its batch commits (a durable commit waits
    /// for the WAL flush), the next calls gather into the next batch; with four, the
    /// batches were nearly one task each and nothing was gained.
    pub flushers: usize,
    /// Under load (the previous batch had more than one task), how many times a flush
    /// loop yields to the runtime before it gathers the rest of its batch, so that
    /// callers already running hand their tasks in. A call that comes alone after a
    /// quiet spell is written at once whatever this is.
    pub linger_yields: usize,
    /// How long one batch statement may run, a row lock wait included, before
    /// PostgreSQL cancels it; the batch is then written one task at a time, so only the
    /// task whose row is locked waits again.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_size: 64,
            flushers: 1,
            linger_yields: 8,
            statement_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://…` or `rediss://…`. When set, the queue runs on Redis.
    pub url: Option<SecretString>,
    /// Every key lives under `{<key_prefix>}:…` (one hash slot, so Lua scripts work on a cluster).
    pub key_prefix: String,
    /// How long a Redis command may take before it fails (and the caller falls back).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: "operator".into(),
            command_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueBackendKind {
    /// Redis when `redis.url` is set, the database otherwise.
    Auto,
    Redis,
    /// The embedded queue: a table in the task database.
    Database,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    pub backend: QueueBackendKind,
    /// How long a claim lasts without a heartbeat; a worker that dies loses its tasks
    /// to another worker after at most this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the database queue looks for work written by other processes (work
    /// enqueued in-process wakes workers at once).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long the API waits for the queue when dispatching a new task; past it the
    /// task stays committed and the reconciler dispatches it later.
    #[serde(with = "humantime_serde")]
    pub dispatch_timeout: Duration,
    /// Most tasks of one tenant running at once in one queue, across all workers;
    /// 0 = no limit.
    pub tenant_concurrency: u32,
    /// Most tasks of one queue running at once across all workers and tenants, for a
    /// queue without a `concurrency_limit` of its own (`PUT /v1/queues/{name}`);
    /// 0 = no limit.
    pub global_concurrency: u32,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            backend: QueueBackendKind::Auto,
            lease_ttl: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            dispatch_timeout: Duration::from_secs(1),
            tenant_concurrency: 0,
            global_concurrency: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// `file:///abs/dir`, `file://./rel/dir`, `s3://bucket[/prefix]` or `memory://`;
    /// `<data_dir>/artifacts` when absent.
    pub url: Option<String>,
    /// S3 endpoint for S3-compatible servers (MinIO, s3s, R2…); AWS when absent.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
    /// Path-style requests (`endpoint/bucket/key`), which most S3-compatible servers need.
    pub path_style: bool,
    /// Allow a plain-http endpoint (local S3-compatible servers).
    pub allow_http: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            url: None,
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            path_style: true,
            allow_http: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrowserSettings {
    /// The Chromium binary; searched on PATH (`chromium`, `chromium-browser`,
    /// `google-chrome`) when absent.
    pub chrome_path: Option<PathBuf>,
    /// Chromium refuses to start its sandbox as root; `auto` turns it off only then.
    pub sandbox: SandboxMode,
    /// Extra Chromium command-line flags.
    pub extra_args: Vec<String>,
    /// Upper bound for any single browser call, so a hung renderer cannot stall a worker.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub launch_timeout: Duration,
    /// Browsers per worker process (at least 1). The worker's concurrent tasks are
    /// spread over them, each task on the least busy one: `worker.concurrency` 8 with 2
    /// browsers runs about 4 pages in each. More browsers cost memory and isolate
    /// crashes: a browser that dies takes only its own tasks down.
    pub browsers: usize,
    /// A browser is replaced after this many tasks (0: never), so that leaks in a
    /// long-lived Chromium (memory, handles) cannot accumulate.
    pub recycle_after: u64,
    /// A browser is also replaced once its processes together hold more than this much
    /// memory (MiB of proportional set size, each shared page counted once; 0: never).
    /// Measured when a task takes the browser, at most once a second, and only after
    /// the browser has served a task: a new browser always gets its first task.
    pub recycle_above_mb: u64,
    /// Blank pages (each in a fresh context) kept open ahead of tasks; opening one costs
    /// about half a second of a task's latency. Each holds a renderer process.
    pub spare_pages: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    Auto,
    On,
    Off,
}

impl Default for BrowserSettings {
    fn default() -> Self {
        Self {
            chrome_path: None,
            sandbox: SandboxMode::Auto,
            extra_args: Vec::new(),
            call_timeout: Duration::from_secs(30),
            launch_timeout: Duration::from_secs(20),
            browsers: 1,
            recycle_after: 200,
            recycle_above_mb: 2048,
            spare_pages: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Tasks one worker process runs at once.
    pub concurrency: usize,
    /// This worker's name in attempts and logs; `<hostname>-<pid>` when absent.
    pub id: Option<String>,
    /// The queues this worker takes tasks from (`OPERATOR_WORKER__QUEUES=default,pdf`),
    /// or `*` for every queue, including ones created while it runs. The highest
    /// priority ready in any of them goes first; queues with the same priority ready
    /// take turns.
    pub queues: Vec<String>,
    /// On shutdown, how long running tasks may take to finish before their leases are
    /// handed back to the queue.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            id: None,
            queues: vec![ALL_QUEUES.to_owned()],
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// `worker.queues` meaning every queue.
pub const ALL_QUEUES: &str = "*";

/// Which queues a worker takes tasks from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServedQueues {
    /// Every queue that exists, followed as queues are created.
    All,
    Only(Vec<operator_domain::QueueName>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSettings {
    /// How often the reconciler compares the database with the queue.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// A queued task younger than this is left alone by the reconciler: its dispatch
    /// may still be in flight.
    #[serde(with = "humantime_serde")]
    pub reconcile_grace: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            reconcile_interval: Duration::from_secs(10),
            reconcile_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSettings {
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    pub default_max_attempts: u32,
    pub max_attempts_limit: u32,
    /// First retry delay; doubles per attempt, with full jitter.
    #[serde(with = "humantime_serde")]
    pub retry_base_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(60),
            max_timeout: Duration::from_secs(600),
            default_max_attempts: 3,
            max_attempts_limit: 10,
            retry_base_delay: Duration::from_secs(2),
            retry_max_delay: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSettings {
    /// Hosts (`intranet.example`, `*.corp.example`) and networks (`10.0.0.0/8`) that
    /// browsers may reach even though they are private, loopback or link-local.
    pub allow: Vec<String>,
    /// Turns the private-address guard off entirely (trusted networks only).
    pub allow_private: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Whether worker processes run the webhook dispatcher.
    pub dispatcher: bool,
    /// Delays before the 2nd, 3rd… attempt of a delivery (each jittered by ±20%); after
    /// the last one the delivery has failed. The default spans about a day and a half.
    pub retry_schedule: Vec<humantime_serde::Serde<Duration>>,
    /// How long a receiver may take to answer one attempt.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How much of a receiver's answer is kept with the attempt.
    pub response_excerpt_bytes: usize,
    /// An endpoint whose every delivery has failed for this long is disabled.
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
    /// How long a dispatcher holds a claimed delivery; if it dies, another dispatcher
    /// sends the delivery after at most this long. Longer than `request_timeout`.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often an idle dispatcher looks for due deliveries.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Deliveries one dispatcher sends at once.
    pub concurrency: usize,
    /// How long a rotated-out secret keeps signing, unless the rotation says otherwise.
    #[serde(with = "humantime_serde")]
    pub rotation_overlap: Duration,
    /// How long the presigned S3 `download_url`s in payloads stay valid (at most 7
    /// days, S3's limit); zero leaves them out.
    #[serde(with = "humantime_serde")]
    pub artifact_url_ttl: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let minutes = |count: u64| Duration::from_secs(count * 60);
        let hours = |count: u64| Duration::from_secs(count * 3600);
        Self {
            dispatcher: true,
            retry_schedule: [
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                hours(2),
                hours(5),
                hours(10),
                hours(14),
            ]
            .into_iter()
            .map(humantime_serde::Serde::from)
            .collect(),
            request_timeout: Duration::from_secs(10),
            response_excerpt_bytes: 1024,
            disable_after: hours(5 * 24),
            lease_ttl: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            concurrency: 8,
            rotation_overlap: hours(24),
            artifact_url_ttl: hours(24),
        }
    }
}

impl WebhookSettings {
    /// The retry schedule as plain durations.
    pub fn retry_delays(&self) -> Vec<Duration> {
        self.retry_schedule.iter().map(|delay| **delay).collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventSettings {
    /// How often a live-event stream re-reads the task's events even without a notice:
    /// the bound on latency when a notice is lost (Redis pub/sub does not retry) or when
    /// processes share no bus (separate processes without Redis).
    #[serde(with = "humantime_serde")]
    pub resync_interval: Duration,
    /// How often an idle stream sends a keep-alive, so proxies do not close it.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            resync_interval: Duration::from_secs(5),
            keep_alive: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Whether every request must present credentials (an API key as
    /// `Authorization: Bearer opk_…`). Off, every request acts as the owner of the
    /// `default` tenant, which the API allows only on a loopback address.
    pub enabled: bool,
    /// How long a verified key is trusted before its row is read again. Revocations
    /// evict at once (over Redis pub/sub between replicas); without Redis on PostgreSQL
    /// the cache keeps rows for at most 1s instead.
    #[serde(with = "humantime_serde")]
    pub key_cache_ttl: Duration,
    /// `last_used_at` of a key is written at most once per this interval per replica.
    #[serde(with = "humantime_serde")]
    pub last_used_interval: Duration,
    /// Failed authentications a client address may make per minute; beyond, requests
    /// from it get `429 rate_limited` until the minute is over.
    pub failures_per_minute: u32,
    /// Origins allowed to call the API from a browser (CORS), e.g. the console's
    /// `https://console.example.com`; none by default.
    pub cors_origins: Vec<String>,
    /// How long the signed artifact links in task responses work without credentials.
    #[serde(with = "humantime_serde")]
    pub link_ttl: Duration,
    /// How long a stream ticket (`POST /v1/tasks/{id}/event-tickets`) may be used to open
    /// the task's event stream.
    #[serde(with = "humantime_serde")]
    pub ticket_ttl: Duration,
    /// OpenID Connect providers people sign in with (`[[auth.oidc]]` in the settings
    /// file); none by default.
    pub oidc: Vec<OidcProviderSettings>,
    /// How long a session token (the JWT a signed-in browser sends) is valid; the
    /// console refreshes it through its cookie.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// How long a sign-in lasts (its refresh cookie), refreshed or not.
    #[serde(with = "humantime_serde")]
    pub session_refresh_ttl: Duration,
    /// A refresh token already traded for the next is refused; presented again later
    /// than this after its trade, it means someone holds a copy, and the session is
    /// ended. Within it, it is only refused (two tabs refreshing at once).
    #[serde(with = "humantime_serde")]
    pub refresh_reuse_grace: Duration,
    /// How long a session signing key signs before the next one is made.
    #[serde(with = "humantime_serde")]
    pub session_key_lifetime: Duration,
    /// How long a key that no longer signs is still accepted; at least `session_ttl`.
    #[serde(with = "humantime_serde")]
    pub session_key_overlap: Duration,
    /// Whether the refresh cookie is `Secure` (sent over HTTPS only). Only a console
    /// served over plain http on another host than localhost needs it off.
    pub cookie_secure: bool,
}

/// One OpenID Connect provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProviderSettings {
    /// Its name in URLs: `/v1/auth/oidc/<name>/login`.
    pub name: String,
    /// `oidc` (any issuer, discovered from `issuer`) or `google` (the issuer preset).
    #[serde(default)]
    pub kind: OidcProviderKind,
    /// The issuer URL; discovery reads `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub issuer: Option<String>,
    pub client_id: String,
    pub client_secret: SecretString,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OidcProviderKind {
    #[default]
    Oidc,
    Google,
}

fn default_oidc_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}

impl OidcProviderSettings {
    /// The issuer: the configured one, or the preset of its kind.
    pub fn issuer(&self) -> Option<&str> {
        match (self.kind, self.issuer.as_deref()) {
            (_, Some(issuer)) => Some(issuer),
            (OidcProviderKind::Google, None) => Some("https://accounts.google.com"),
            (OidcProviderKind::Oidc, None) => None,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            key_cache_ttl: Duration::from_secs(60),
            last_used_interval: Duration::from_secs(60),
            failures_per_minute: 30,
            cors_origins: Vec::new(),
            link_ttl: Duration::from_secs(3600),
            ticket_ttl: Duration::from_secs(60),
            oidc: Vec::new(),
            session_ttl: Duration::from_secs(15 * 60),
            session_refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            refresh_reuse_grace: Duration::from_secs(5),
            session_key_lifetime: Duration::from_secs(7 * 24 * 3600),
            session_key_overlap: Duration::from_secs(3600),
            cookie_secure: true,
        }
    }
}

/// Limits per tenant; a tenant's own (`PUT /v1/admin/tenants/{id}/limits`) override
/// these.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Task submissions per second and tenant (`POST /v1/tasks` and the one-call
    /// endpoints), across all API replicas when Redis is configured; 0: no limit.
    pub submissions_per_second: f64,
    /// How many submissions may arrive at once above that rate.
    pub submission_burst: u32,
    /// Tasks a tenant may create per calendar month (UTC); unset: no quota.
    pub monthly_tasks: Option<u64>,
    /// Browser time a tenant may use per calendar month (UTC), in seconds; unset: no
    /// quota. Checked when a task is submitted or retried: tasks admitted before the
    /// quota ran out still run to their end.
    pub monthly_browser_seconds: Option<u64>,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            submissions_per_second: 0.0,
            submission_burst: 20,
            monthly_tasks: None,
            monthly_browser_seconds: None,
        }
    }
}

/// The language model agent tasks talk to: any OpenAI-compatible chat-completions
/// endpoint (OpenAI, a gateway, vLLM, llama.cpp's server, Ollama).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmSettings {
    /// e.g. `https://api.openai.com/v1`; agent tasks are refused while it is unset.
    pub base_url: Option<String>,
    pub api_key: Option<SecretString>,
    /// The model a task gets when it names none.
    pub model: String,
    /// How the model is asked for an action: `auto` (tool calling, and JSON mode from
    /// the first refusal of tools on), `tools`, or `json` (for servers without tools).
    pub protocol: LlmProtocol,
    /// One request's limit, from sending to the whole answer.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Retries of a 429, a 5xx or a connection failure, each after the provider's
    /// `Retry-After` or an exponential backoff with jitter.
    pub max_retries: u32,
    /// The longest wait between two retries, whatever `Retry-After` asks.
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// The most tokens one answer may have.
    pub max_output_tokens: u32,
    /// US dollars per million tokens, by model name, for `budget.max_cost_usd` and the
    /// cost in each task's usage.
    pub prices: HashMap<String, ModelPrice>,
    /// 32 random bytes, base64: the AES-256-GCM key that seals tenants' model API keys
    /// in the database (`PUT /v1/model-settings`). Without it, tenants cannot store a
    /// key. `operator serve` makes one under the data directory.
    pub key_encryption_key: Option<SecretString>,
    /// How long an API replica or a worker keeps a tenant's model settings before it
    /// reads them again (a change applies at most this late elsewhere; at once on the
    /// replica that made it).
    #[serde(with = "humantime_serde")]
    pub tenant_settings_ttl: Duration,
}

/// A tenant's own model, overriding the service's `llm.base_url`, `llm.api_key`,
/// `llm.model` and, where given, `llm.protocol`; its prices are added to (and win over)
/// the service's table.
#[derive(Debug, Clone)]
pub struct TenantModel {
    pub base_url: String,
    pub model: String,
    pub protocol: Option<LlmProtocol>,
    pub api_key: Option<SecretString>,
    pub prices: HashMap<String, ModelPrice>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LlmProtocol {
    Auto,
    Tools,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            base_url: None,
            api_key: None,
            model: "gpt-4o-mini".to_owned(),
            protocol: LlmProtocol::Auto,
            request_timeout: Duration::from_secs(60),
            max_retries: 4,
            retry_max_delay: Duration::from_secs(30),
            max_output_tokens: 1024,
            prices: HashMap::new(),
            key_encryption_key: None,
            tenant_settings_ttl: Duration::from_secs(30),
        }
    }
}

impl LlmSettings {
    /// These settings with a tenant's own model in place of the service's.
    pub fn for_tenant(&self, tenant: &TenantModel) -> Self {
        let mut prices = self.prices.clone();
        prices.extend(
            tenant
                .prices
                .iter()
                .map(|(name, price)| (name.clone(), *price)),
        );
        Self {
            base_url: Some(tenant.base_url.clone()),
            api_key: tenant.api_key.clone(),
            model: tenant.model.clone(),
            protocol: tenant.protocol.unwrap_or(self.protocol),
            prices,
            ..self.clone()
        }
    }

    /// The price of `model`, when the table has it.
    pub fn price(&self, model: &str) -> Option<ModelPrice> {
        self.prices.get(model).copied()
    }
}

/// How an agent observes a page and when it counts as stuck.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// The most interactive elements one observation lists.
    pub max_elements: usize,
    /// The most characters of visible text one observation carries.
    pub max_text_chars: usize,
    /// How far below the viewport elements and text are still shown, in viewports.
    pub lookahead_viewports: f64,
    /// Steps repeating themselves (the same action on the same element, or no change
    /// on the page) before the model is told so.
    pub stuck_warn_after: u32,
    /// Further repeating steps after that warning before the task fails `agent_stuck`.
    pub stuck_fail_after: u32,
    /// A screenshot of every step as an artifact (`steps/NNN.jpg`).
    pub step_screenshots: bool,
    /// How long one step of a cached script may take when it is replayed before the
    /// model takes over from it (a recorded selector that is gone fails this fast,
    /// not after the step's own timeout).
    #[serde(with = "humantime_serde")]
    pub cached_step_timeout: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            max_elements: 150,
            max_text_chars: 3000,
            lookahead_viewports: 1.0,
            stuck_warn_after: 3,
            stuck_fail_after: 2,
            step_screenshots: true,
            cached_step_timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `tracing` filter directives; `RUST_LOG` wins when set.
    pub log_filter: String,
    pub log_format: LogFormat,
    /// OTLP/HTTP traces endpoint (e.g. `http://collector:4318/v1/traces`); traces are
    /// exported only when set.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_filter: "info,sqlx=warn,sea_orm=warn,tungstenite=warn".into(),
            log_format: LogFormat::Pretty,
            otlp_endpoint: None,
            service_name: "operator".into(),
        }
    }
}

/// Conventional variable names and the setting each one fills.
const CONVENTIONAL_ENV: [(&str, &str); 8] = [
    ("DATABASE_URL", "database.url"),
    ("REDIS_URL", "redis.url"),
    ("STORAGE_URL", "storage.url"),
    ("CHROME_PATH", "browser.chrome_path"),
    ("AWS_ENDPOINT_URL", "storage.endpoint"),
    ("AWS_ACCESS_KEY_ID", "storage.access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "storage.secret_access_key"),
    ("AWS_REGION", "storage.region"),
];

/// Top-level settings that are plain values (not sections), settable as `OPERATOR_<KEY>`.
const TOP_LEVEL_SETTINGS: [&str; 1] = ["DATA_DIR"];

/// Whether an environment variable is a setting: `OPERATOR_<SECTION>__<KEY>`, or a
/// known top-level `OPERATOR_<KEY>`.
///
/// Other `OPERATOR_*` names are left alone rather than refused: Kubernetes injects
/// `OPERATOR_PORT`, `OPERATOR_SERVICE_HOST`… into every pod when a Service is named
/// `operator`, and those must not stop start-up. `OPERATOR_CONFIG_FILE` names the file.
fn is_setting_variable(name: &str) -> bool {
    match name.strip_prefix("OPERATOR_") {
        Some(rest) => rest.contains("__") || TOP_LEVEL_SETTINGS.contains(&rest),
        None => false,
    }
}

/// Settings whose values are lists, split on commas in the environment.
const LIST_SETTINGS: [&str; 5] = [
    "auth.cors_origins",
    "network.allow",
    "worker.queues",
    "browser.extra_args",
    "webhooks.retry_schedule",
];

impl Settings {
    /// Loads settings from the optional file and the given environment, then validates them.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env.get(CONFIG_FILE_ENV).map(PathBuf::from));
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
                path: path.clone(),
                source,
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }

        let operator_env: HashMap<String, String> = env
            .iter()
            .filter(|(key, _)| is_setting_variable(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let mut environment = config::Environment::with_prefix("OPERATOR")
            .prefix_separator("_")
            .separator("__")
            .list_separator(",")
            .try_parsing(true)
            .source(Some(operator_env));
        for key in LIST_SETTINGS {
            environment = environment.with_list_parse_key(key);
        }
        builder = builder.add_source(environment);

        for (variable, setting) in CONVENTIONAL_ENV {
            if let Some(value) = env.get(variable).filter(|value| !value.is_empty()) {
                builder = builder.set_override(setting, value.as_str())?;
            }
        }

        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let database_url = self.database_url();
        if !(database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
            || database_url.starts_with("sqlite:"))
        {
            return Err(invalid(
                "database.url",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        let batch = &self.database.batch;
        if !(1..=10_000).contains(&batch.max_size) {
            return Err(invalid("database.batch.max_size", "must be 1 to 10000"));
        }
        if !(1..=16).contains(&batch.flushers) {
            return Err(invalid("database.batch.flushers", "must be 1 to 16"));
        }
        if batch.linger_yields > 1_000 {
            return Err(invalid(
                "database.batch.linger_yields",
                "must be at most 1000",
            ));
        }
        if batch.statement_timeout < Duration::from_millis(1) {
            return Err(invalid(
                "database.batch.statement_timeout",
                "must be at least 1ms",
            ));
        }
        if let Some(url) = &self.redis.url {
            let url = url.expose_secret();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "redis.url",
                    "must start with redis:// or rediss://",
                ));
            }
        }
        if !self
            .redis
            .key_prefix
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b':' | b'.'))
            || self.redis.key_prefix.is_empty()
        {
            return Err(invalid(
                "redis.key_prefix",
                "must be non-empty and use only letters, digits, '-', '_', ':' and '.'",
            ));
        }
        if self.queue.backend == QueueBackendKind::Redis && self.redis.url.is_none() {
            return Err(invalid(
                "queue.backend",
                "is redis but redis.url is not set",
            ));
        }
        if self.queue.lease_ttl < Duration::from_secs(2) {
            return Err(invalid("queue.lease_ttl", "must be at least 2s"));
        }
        let storage_url = self.storage_url();
        if !["file://", "s3://", "memory://"]
            .iter()
            .any(|scheme| storage_url.starts_with(scheme))
        {
            return Err(invalid(
                "storage.url",
                format!("{storage_url:?} must start with file://, s3:// or memory://"),
            ));
        }
        if storage_url.starts_with("s3://") {
            let bucket = storage_url
                .trim_start_matches("s3://")
                .split('/')
                .next()
                .unwrap_or("");
            if bucket.is_empty() {
                return Err(invalid("storage.url", "s3:// URL names no bucket"));
            }
            if self.storage.access_key_id.is_some() != self.storage.secret_access_key.is_some() {
                return Err(invalid(
                    "storage.secret_access_key",
                    "access_key_id and secret_access_key must be set together",
                ));
            }
        }
        if let Some(key) = &self.llm.key_encryption_key {
            use base64::Engine;
            let decoded =
                base64::engine::general_purpose::STANDARD.decode(key.expose_secret().trim());
            if decoded.map_or(true, |bytes| bytes.len() != 32) {
                return Err(invalid(
                    "llm.key_encryption_key",
                    "must be 32 bytes in base64 (e.g. `openssl rand -base64 32`)",
                ));
            }
        }
        if !(0.0..=100_000.0).contains(&self.limits.submissions_per_second) {
            return Err(invalid(
                "limits.submissions_per_second",
                "must be 0 (no limit) to 100000",
            ));
        }
        if self.limits.submission_burst == 0 {
            return Err(invalid("limits.submission_burst", "must be at least 1"));
        }
        if self.auth.failures_per_minute == 0 {
            return Err(invalid("auth.failures_per_minute", "must be at least 1"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600))
            .contains(&self.auth.link_ttl)
        {
            return Err(invalid("auth.link_ttl", "must be 1s to 7 days"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.auth.ticket_ttl) {
            return Err(invalid("auth.ticket_ttl", "must be 1s to 1h"));
        }
        if self.auth.session_key_overlap < self.auth.session_ttl {
            return Err(invalid(
                "auth.session_key_overlap",
                "must be at least auth.session_ttl, or sessions signed just before a rotation die early",
            ));
        }
        if self.auth.session_ttl.is_zero() || self.auth.session_key_lifetime.is_zero() {
            return Err(invalid(
                "auth.session_ttl",
                "session_ttl and session_key_lifetime must be above zero",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for provider in &self.auth.oidc {
            let well_formed = !provider.name.is_empty()
                && provider
                    .name
                    .bytes()
                    .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
            if !well_formed || !names.insert(provider.name.as_str()) {
                return Err(invalid(
                    "auth.oidc.name",
                    "each provider needs its own name of lowercase letters, digits and '-'",
                ));
            }
            if provider.issuer().is_none() {
                return Err(invalid(
                    "auth.oidc.issuer",
                    "a provider of kind oidc needs its issuer URL",
                ));
            }
            if provider.client_id.is_empty() {
                return Err(invalid("auth.oidc.client_id", "must not be empty"));
            }
        }
        if self.auth.key_cache_ttl > Duration::from_secs(3600) {
            return Err(invalid("auth.key_cache_ttl", "must be at most 1h"));
        }
        if let Some(origin) = self
            .auth
            .cors_origins
            .iter()
            .find(|origin| !(origin.starts_with("https://") || origin.starts_with("http://")))
        {
            return Err(invalid(
                "auth.cors_origins",
                format!("{origin:?} is not an http(s) origin"),
            ));
        }
        if self.worker.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be at least 1"));
        }
        if self.worker.queues.is_empty() {
            return Err(invalid(
                "worker.queues",
                "must name at least one queue, or *",
            ));
        }
        if self.worker.queues.len() > 1 && self.worker.queues.iter().any(|name| name == ALL_QUEUES)
        {
            return Err(invalid(
                "worker.queues",
                "* stands alone: it already means every queue",
            ));
        }
        if let Some(problem) = self
            .worker
            .queues
            .iter()
            .filter(|name| *name != ALL_QUEUES)
            .find_map(|name| operator_domain::QueueName::parse(name).err())
        {
            return Err(invalid("worker.queues", problem.to_string()));
        }
        if self.tasks.default_timeout > self.tasks.max_timeout {
            return Err(invalid(
                "tasks.default_timeout",
                "must not exceed tasks.max_timeout",
            ));
        }
        if self.tasks.default_max_attempts == 0
            || self.tasks.default_max_attempts > self.tasks.max_attempts_limit
        {
            return Err(invalid(
                "tasks.default_max_attempts",
                "must be between 1 and tasks.max_attempts_limit",
            ));
        }
        self.network_policy()
            .map_err(|error: PolicyParseError| invalid("network.allow", error.to_string()))?;
        if self.webhooks.lease_ttl <= self.webhooks.request_timeout {
            return Err(invalid(
                "webhooks.lease_ttl",
                "must be longer than webhooks.request_timeout",
            ));
        }
        if self.webhooks.artifact_url_ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err(invalid(
                "webhooks.artifact_url_ttl",
                "must be at most 7 days (the longest S3 presigned URL)",
            ));
        }
        if self.webhooks.concurrency == 0 {
            return Err(invalid("webhooks.concurrency", "must be at least 1"));
        }
        if let Some(url) = &self.llm.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "llm.base_url",
                "must start with http:// or https://",
            ));
        }
        if self.llm.model.trim().is_empty() {
            return Err(invalid("llm.model", "must not be empty"));
        }
        if self.llm.request_timeout < Duration::from_millis(100) {
            return Err(invalid("llm.request_timeout", "must be at least 100ms"));
        }
        if self.llm.max_output_tokens == 0 {
            return Err(invalid("llm.max_output_tokens", "must be at least 1"));
        }
        for price in self.llm.prices.values() {
            if !(price.input_per_million >= 0.0 && price.output_per_million >= 0.0) {
                return Err(invalid("llm.prices", "prices must be non-negative numbers"));
            }
        }
        if !(1..=2000).contains(&self.agent.max_elements) {
            return Err(invalid("agent.max_elements", "must be 1 to 2000"));
        }
        if !(100..=200_000).contains(&self.agent.max_text_chars) {
            return Err(invalid("agent.max_text_chars", "must be 100 to 200000"));
        }
        if !(0.0..=50.0).contains(&self.agent.lookahead_viewports) {
            return Err(invalid("agent.lookahead_viewports", "must be 0 to 50"));
        }
        if self.agent.stuck_warn_after < 2 {
            return Err(invalid("agent.stuck_warn_after", "must be at least 2"));
        }
        if self
            .telemetry
            .log_filter
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(invalid(
                "telemetry.log_filter",
                "is not a valid tracing filter",
            ));
        }
        Ok(())
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("operator.db").display()
            ),
        }
    }

    /// The storage URL in effect.
    pub fn storage_url(&self) -> String {
        match &self.storage.url {
            Some(url) => url.clone(),
            None => format!("file://{}", self.data_dir.join("artifacts").display()),
        }
    }

    /// The queues this process's worker takes tasks from.
    pub fn served_queues(&self) -> ServedQueues {
        if self.worker.queues.iter().any(|name| name == ALL_QUEUES) {
            return ServedQueues::All;
        }
        ServedQueues::Only(
            self.worker
                .queues
                .iter()
                .filter_map(|name| operator_domain::QueueName::parse(name).ok())
                .collect(),
        )
    }

    /// The queue backend in effect, once `auto` is resolved.
    pub fn queue_backend(&self) -> QueueBackendKind {
        match self.queue.backend {
            QueueBackendKind::Auto if self.redis.url.is_some() => QueueBackendKind::Redis,
            QueueBackendKind::Auto => QueueBackendKind::Database,
            chosen => chosen,
        }
    }

    pub fn network_policy(&self) -> Result<NetworkPolicy, PolicyParseError> {
        NetworkPolicy::parse(&self.network.allow, self.network.allow_private)
    }

    /// The address clients use to reach the API, given the port it is bound to.
    pub fn public_url(&self, bound_port: u16) -> String {
        match &self.server.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let host = match self.server.host.as_str() {
                    "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
                    host => host,
                };
                format!("http://{host}:{bound_port}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_embedded_setup() {
        let settings = Settings::load(None, &HashMap::new()).expect("defaults are valid");
        assert_eq!(
            settings.database_url(),
            "sqlite://./data/operator.db?mode=rwc"
        );
        assert_eq!(settings.storage_url(), "file://./data/artifacts");
        assert_eq!(settings.queue_backend(), QueueBackendKind::Database);
        assert_eq!(settings.server.port, 8080);
    }

    #[test]
    fn operator_variables_nest_with_double_underscores() {
        let settings = Settings::load(
            None,
            &env(&[
                ("OPERATOR_SERVER__PORT", "9001"),
                ("OPERATOR_QUEUE__LEASE_TTL", "45s"),
                ("OPERATOR_NETWORK__ALLOW", "10.0.0.0/8,intranet.example"),
                ("OPERATOR_DATA_DIR", "/var/lib/operator"),
                ("UNRELATED", "ignored"),
            ]),
        )
        .expect("valid");
        assert_eq!(settings.server.port, 9001);
        assert_eq!(settings.queue.lease_ttl, Duration::from_secs(45));
        assert_eq!(
            settings.network.allow,
            vec!["10.0.0.0/8", "intranet.example"]
        );
        assert_eq!(settings.storage_url(), "file:///var/lib/operator/artifacts");
    }

    #[test]
    fn the_webhook_retry_schedule_is_a_list_of_durations() {
        let defaults = Settings::load(None, &HashMap::new()).expect("defaults");
        assert_eq!(defaults.webhooks.retry_delays().len(), 7);
        let settings = Settings::load(
            None,
            &env(&[("OPERATOR_WEBHOOKS__RETRY_SCHEDULE", "100ms,1s,2m")]),
        )
        .expect("valid");
        assert_eq!(
            settings.webhooks.retry_delays(),
            vec![
                Duration::from_millis(100),
                Duration::from_secs(1),
                Duration::from_secs(120)
            ]
        );
    }

    #[test]
    fn conventional_variables_select_the_distributed_setup() {
        let settings = Settings::load(
            None,
            &env(&[
                ("DATABASE_URL", "postgres://db/operator"),
                ("REDIS_URL", "redis://cache:6379"),
                ("STORAGE_URL", "s3://artifacts/prod"),
                ("AWS_ACCESS_KEY_ID", "key"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
            ]),
        )
        .expect("valid");
        assert_eq!(settings.queue_backend(), QueueBackendKind::Redis);
        assert_eq!(settings.database_url(), "postgres://db/operator");
        assert_eq!(settings.storage_url(), "s3://artifacts/prod");
    }

    #[test]
    fn the_file_layer_sits_between_defaults_and_environment() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("operator.toml");
        std::fs::write(
            &path,
            "[server]\nport = 7000\nhost = \"0.0.0.0\"\n[worker]\nconcurrency = 2\n",
        )
        .expect("write");
        let settings =
            Settings::load(Some(&path), &env(&[("OPERATOR_SERVER__PORT", "7001")])).expect("valid");
        assert_eq!(settings.server.port, 7001, "environment wins over the file");
        assert_eq!(
            settings.server.host, "0.0.0.0",
            "the file wins over defaults"
        );
        assert_eq!(settings.worker.concurrency, 2);
    }

    #[test]
    fn a_worker_serves_the_queues_listed() {
        let default = Settings::load(None, &env(&[])).expect("valid");
        assert_eq!(default.served_queues(), ServedQueues::All);
        let listed = Settings::load(
            None,
            &env(&[("OPERATOR_WORKER__QUEUES", "reports,default")]),
        )
        .expect("valid");
        let name = |text: &str| operator_domain::QueueName::parse(text).expect("name");
        assert_eq!(
            listed.served_queues(),
            ServedQueues::Only(vec![name("reports"), name("default")])
        );
        let refused = |value: &str| {
            Settings::load(None, &env(&[("OPERATOR_WORKER__QUEUES", value)]))
                .expect_err("refused")
                .to_string()
        };
        let message = refused("Reports");
        assert!(
            message.contains("worker.queues") && message.contains("queue name"),
            "{message}"
        );
        assert!(refused("*,default").contains("stands alone"));
    }

    #[test]
    fn errors_name_the_setting() {
        let message = |pairs: &[(&str, &str)]| {
            Settings::load(None, &env(pairs))
                .expect_err("must be refused")
                .to_string()
        };
        assert!(message(&[("OPERATOR_SERVER__PORT", "eighty")]).contains("server.port"));
        assert!(message(&[("STORAGE_URL", "ftp://x")]).contains("storage.url"));
        assert!(message(&[("OPERATOR_QUEUE__BACKEND", "redis")]).contains("queue.backend"));
        assert!(message(&[("OPERATOR_NETWORK__ALLOW", "10.0.0.0/99")]).contains("network.allow"));
        assert!(message(&[("OPERATOR_WORKER__CONCURENCY", "3")]).contains("concurency"));
        assert!(message(&[("DATABASE_URL", "mysql://x")]).contains("database.url"));
    }

    #[test]
    fn the_batch_writer_is_tuned_by_nested_variables_and_checked() {
        let settings = Settings::load(
            None,
            &env(&[
                ("OPERATOR_DATABASE__BATCH__MAX_SIZE", "16"),
                ("OPERATOR_DATABASE__BATCH__STATEMENT_TIMEOUT", "250ms"),
            ]),
        )
        .expect("loads");
        let batch = &settings.database.batch;
        assert_eq!(batch.max_size, 16);
        assert_eq!(batch.statement_timeout, Duration::from_millis(250));
        assert_eq!(
            (batch.flushers, batch.linger_yields),
            (1, 8),
            "defaults kept"
        );
        let message = |pairs: &[(&str, &str)]| {
            Settings::load(None, &env(pairs))
                .expect_err("refused")
                .to_string()
        };
        assert!(
            message(&[("OPERATOR_DATABASE__BATCH__MAX_SIZE", "0")])
                .contains("database.batch.max_size")
        );
        assert!(
            message(&[("OPERATOR_DATABASE__BATCH__FLUSHERS", "64")])
                .contains("database.batch.flushers")
        );
    }

    #[test]
    fn kubernetes_service_links_are_not_settings() {
        let settings = Settings::load(
            None,
            &env(&[
                ("OPERATOR_PORT", "tcp://10.0.0.7:8080"),
                ("OPERATOR_SERVICE_HOST", "10.0.0.7"),
                ("OPERATOR_PORT_8080_TCP_ADDR", "10.0.0.7"),
                ("OPERATOR_CONFIG_FILE_UNUSED", "x"),
            ]),
        )
        .expect("service-link variables are ignored");
        assert_eq!(settings.server.port, 8080);
    }
}
