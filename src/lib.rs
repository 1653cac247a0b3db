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
use operator_migrations::Migrator;
use operator_scheduler::Scheduler;
use operator_store::db::{self, TaskRepository};
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

impl Services {
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let connection = db::connect(settings).await.with_context(|| {
            format!(
                "cannot open the database ({})",
                redact(&settings.database_url())
            )
        })?;
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

/// The roles of one process, built and ready to run.
pub struct Application {
    services: Services,
    api: Option<(ApiServer, SharedState)>,
    worker: Option<Worker>,
    scheduler: Option<Scheduler>,
}

impl Application {
    pub async fn build(settings: Settings, roles: Roles) -> anyhow::Result<Self> {
        let services = Services::connect(&settings).await?;
        let connection = services.repo.connection();
        if roles.migrate {
            Migrator::up(connection, None)
                .await
                .context("migration failed")?;
        } else {
            let pending = Migrator::get_pending_migrations(connection)
                .await
                .context("cannot read the schema version")?;
            anyhow::ensure!(
                pending.is_empty(),
                "the database schema is {} migration(s) behind; run `operator migrate` first",
                pending.len()
            );
        }
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
