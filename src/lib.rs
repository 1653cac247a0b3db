//! The `operator` binary's composition: which roles run in this process, built from
//! one settings tree and stopped by one shutdown signal.
//!
//! `operator serve` runs every role on the embedded defaults (SQLite, the database
//! queue, local files); `operator api|worker|scheduler` run one role each against
//! shared PostgreSQL, Redis and S3. Tests build an [`Application`] the same way, on
//! port 0.

use std::future::Future;

use anyhow::Context;
use operator_api::{ApiServer, AppState, SharedState};
use operator_config::Settings;
use operator_domain::TenantId;
use operator_migrations::Migrator;
use operator_scheduler::Scheduler;
use operator_store::db::{self, TaskRepository, TenantRepository};
use operator_store::events::EventBus;
use operator_store::queue::{self, SharedQueue};
use operator_store::storage::ArtifactStore;
use operator_worker::Worker;
use sea_orm_migration::MigratorTrait;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Which roles this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub worker: bool,
    pub scheduler: bool,
    /// Apply pending migrations at start (the one-process setup); otherwise refuse to
    /// start on an outdated schema and ask for `operator migrate`.
    pub migrate: bool,
}

impl Roles {
    pub const SERVE: Roles = Roles {
        api: true,
        worker: true,
        scheduler: true,
        migrate: true,
    };
    pub const API: Roles = Roles {
        api: true,
        worker: false,
        scheduler: false,
        migrate: false,
    };
    pub const WORKER: Roles = Roles {
        api: false,
        worker: true,
        scheduler: false,
        migrate: false,
    };
    pub const SCHEDULER: Roles = Roles {
        api: false,
        worker: false,
        scheduler: true,
        migrate: false,
    };
}

/// Connections every role shares.
#[derive(Clone)]
pub struct Services {
    pub settings: Settings,
    pub repo: TaskRepository,
    pub queue: SharedQueue,
    pub storage: ArtifactStore,
}

/// The settings' database, or why it cannot be opened (the password hidden).
async fn open_database(settings: &Settings) -> anyhow::Result<sea_orm::DatabaseConnection> {
    db::connect(settings).await.with_context(|| {
        format!(
            "cannot open the database ({})",
            redact(&settings.database_url())
        )
    })
}

/// Refuses a schema with pending migrations, saying what to run.
async fn ensure_migrated(connection: &sea_orm::DatabaseConnection) -> anyhow::Result<()> {
    let pending = Migrator::get_pending_migrations(connection)
        .await
        .context("cannot read the schema version")?;
    anyhow::ensure!(
        pending.is_empty(),
        "the database schema is {} migration(s) behind; run `operator migrate` first",
        pending.len()
    );
    Ok(())
}

impl Services {
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let connection = open_database(settings).await?;
        let queue = queue::connect(settings, connection.clone())
            .await
            .context("cannot connect to the queue")?;
        let storage =
            ArtifactStore::from_settings(settings).context("cannot open artifact storage")?;
        let events = EventBus::connect(&settings.redis)
            .await
            .context("cannot connect the event bus to Redis")?;
        Ok(Self {
            settings: settings.clone(),
            repo: TaskRepository::new(connection)
                .with_batch(settings.database.batch.clone())
                .with_event_bus(events),
            queue,
            storage,
        })
    }
}

/// Applies pending migrations.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let connection = db::connect(settings)
        .await
        .context("cannot open the database")?;
    Migrator::up(&connection, None)
        .await
        .context("migration failed")?;
    info!("database schema is up to date");
    Ok(())
}

/// The tenant repository on the settings' database, migrated (for the command line).
pub async fn tenant_repository(settings: &Settings) -> anyhow::Result<TenantRepository> {
    let connection = open_database(settings).await?;
    ensure_migrated(&connection).await?;
    Ok(TenantRepository::new(connection))
}

/// Where `operator serve` keeps the owner key it made on its first start.
pub fn owner_key_path(settings: &Settings) -> std::path::PathBuf {
    settings.data_dir.join("owner.key")
}

/// On the first start of `operator serve` (the `default` tenant has no key yet): makes
/// an owner key, stores it in `owner.key` under the data directory (mode 0600) and
/// returns it, to be printed once.
async fn first_owner_key(
    settings: &Settings,
    connection: &sea_orm::DatabaseConnection,
) -> anyhow::Result<Option<String>> {
    let tenants = TenantRepository::new(connection.clone());
    let tenant = TenantId::default_tenant();
    if !tenants.keys(&tenant).await?.is_empty() {
        return Ok(None);
    }
    // The person who runs `operator serve` runs the platform too: the key may also
    // manage queues and tenants.
    let (_, token) = tenants
        .create_key(operator_store::db::NewKey {
            tenant: tenant.clone(),
            name: "owner key made by operator serve".to_owned(),
            role: operator_domain::auth::Role::Owner,
            platform_admin: true,
            expires_at: None,
            created_by: Some("operator".to_owned()),
        })
        .await?;
    let path = owner_key_path(settings);
    write_private(&path, token.expose())
        .with_context(|| format!("cannot store the owner key in {}", path.display()))?;
    Ok(Some(token.expose().to_owned()))
}

/// `operator serve` seals tenants' model keys with a key of its own when the settings
/// give none: made on the first start and kept in `llm-key-encryption.key` under the
/// data directory (mode 0600). Losing it loses the stored tenant keys, not the tasks.
fn serve_key_encryption_key(settings: &mut Settings) -> anyhow::Result<()> {
    if settings.llm.key_encryption_key.is_some() {
        return Ok(());
    }
    let path = settings.data_dir.join("llm-key-encryption.key");
    let key = match std::fs::read_to_string(&path) {
        Ok(key) => key.trim().to_owned(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = operator_store::models::KeySealer::generate_setting();
            write_private(&path, &key).with_context(|| {
                format!("cannot store the key encryption key in {}", path.display())
            })?;
            key
        }
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    };
    settings.llm.key_encryption_key = Some(key.into());
    settings
        .validate()
        .with_context(|| format!("the key in {}", path.display()))?;
    Ok(())
}

/// Writes a file only its owner can read (0600), replacing any earlier one.
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let staged = path.with_extension("new");
    let _ = std::fs::remove_file(&staged);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&staged, path)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// The roles of one process, built and ready to run.
pub struct Application {
    services: Services,
    /// The owner key `operator serve` made on its first start, to print once.
    first_key: Option<String>,
    api: Option<(ApiServer, SharedState)>,
    worker: Option<Worker>,
    scheduler: Option<Scheduler>,
}

impl Application {
    pub async fn build(mut settings: Settings, roles: Roles) -> anyhow::Result<Self> {
        if roles.api && roles.migrate && roles.worker {
            serve_key_encryption_key(&mut settings)?;
        }
        let services = Services::connect(&settings).await?;
        let connection = services.repo.connection();
        if roles.migrate {
            Migrator::up(connection, None)
                .await
                .context("migration failed")?;
        } else {
            ensure_migrated(connection).await?;
        }
        if roles.api && !settings.auth.enabled && !is_loopback(&settings.server.host) {
            anyhow::bail!(
                "auth.enabled is false, so the API serves only a loopback address, not {}; \
                 turn authentication on or bind 127.0.0.1",
                settings.server.host
            );
        }
        let first_key = if roles.api && roles.migrate && settings.auth.enabled {
            first_owner_key(&settings, connection).await?
        } else {
            None
        };
        let api = if roles.api {
            let server = ApiServer::bind(&settings.server.host, settings.server.port)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {}:{}",
                        settings.server.host, settings.server.port
                    )
                })?;
            let policy = settings.network_policy().context("network.allow")?;
            let state = std::sync::Arc::new(AppState::new(
                settings.clone(),
                services.repo.clone(),
                SharedQueue::clone(&services.queue),
                services.storage.clone(),
                policy,
                settings.public_url(server.port()),
            ));
            Some((server, state))
        } else {
            None
        };
        let worker = if roles.worker {
            // Webhook payloads link artifacts through the API; when this process serves
            // the API, its bound address is the one to use (port 0 is only known now).
            let mut worker_settings = settings.clone();
            if let Some((_, state)) = &api {
                worker_settings.server.public_url = Some(state.public_url.clone());
            }
            Some(
                Worker::build(
                    &worker_settings,
                    services.repo.clone(),
                    SharedQueue::clone(&services.queue),
                    services.storage.clone(),
                )
                .await
                .context("cannot start the worker")?,
            )
        } else {
            None
        };
        let scheduler = roles.scheduler.then(|| {
            Scheduler::new(
                &settings,
                services.repo.clone(),
                SharedQueue::clone(&services.queue),
            )
        });
        Ok(Self {
            services,
            first_key,
            api,
            worker,
            scheduler,
        })
    }

    /// The API's port, when this process serves the API.
    pub fn port(&self) -> Option<u16> {
        self.api.as_ref().map(|(server, _)| server.port())
    }

    /// The API's public address, when this process serves the API.
    pub fn public_url(&self) -> Option<String> {
        self.api.as_ref().map(|(_, state)| state.public_url.clone())
    }

    /// The owner key made on this first start of `operator serve`, if it was.
    pub fn first_key(&self) -> Option<&str> {
        self.first_key.as_deref()
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    pub fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    /// Runs every role until `shutdown` resolves, then stops them all gracefully.
    pub async fn run_until_stopped<F>(self, shutdown: F) -> anyhow::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let mut roles = tokio::task::JoinSet::new();
        if let Some((server, state)) = self.api {
            let stopped = stop.clone().cancelled_owned();
            roles.spawn(async move {
                server
                    .run_until_stopped(state, stopped)
                    .await
                    .context("the API server failed")
            });
        }
        if let Some(worker) = self.worker {
            let stopped = stop.clone().cancelled_owned();
            roles.spawn(async move {
                worker
                    .run_until_stopped(stopped)
                    .await
                    .context("the worker failed")
            });
        }
        if let Some(scheduler) = self.scheduler {
            let stopped = stop.clone().cancelled_owned();
            roles.spawn(async move {
                scheduler.run_until_stopped(stopped).await;
                Ok(())
            });
        }
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        // The first role to end (normally because of the shutdown) stops the others.
        let mut outcome = Ok(());
        while let Some(joined) = roles.join_next().await {
            stop.cancel();
            let result = joined.context("a role panicked").and_then(|result| result);
            if outcome.is_ok() {
                outcome = result;
            }
        }
        outcome
    }
}

/// A URL with its password hidden, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
    info!("shutdown signal received");
}
