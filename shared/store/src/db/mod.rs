//! Persistence: the connection, the sea-orm entities, the task repository (the only
//! code that reads or writes task rows) and the webhook repository (endpoints, signing
//! keys, the delivery outbox).
//!
//! - `repo`: [`TaskRepository`], the transitions' rules and every read; the same on
//!   both databases.
//! - `writes`: the interface of the hot transitions (create, start, finish), the one
//!   place the databases are written differently, implemented by
//!   - `transactional`: a transaction of several statements each (SQLite; PostgreSQL
//!     for a finish with outbox rows);
//!   - `postgres`: group commit, one statement per batch (its `coalesce` gathers the
//!     calls, and its statements write them).
//! - `webhooks`: [`WebhookRepository`] and the outbox rule (`write_outbox`).
//! - `tenants`: [`TenantRepository`]: tenants and their API keys.
//! - `audit`: [`AuditRepository`]: the append-only audit log.
//! - `usage`: [`UsageRepository`]: each tenant's monthly tasks and browser time, written
//!   by the hot transitions.
//! - `users`: [`UserRepository`]: people who sign in, their memberships, invitations,
//!   sessions and sign-ins in flight.

use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

use operator_config::Settings;

mod audit;
pub mod entities;
mod model_settings;
mod postgres;
mod repo;
mod rows;
mod tenants;
mod transactional;
mod usage;
mod users;
mod webhooks;
mod writes;

pub use audit::{AuditEntry, AuditEvent, AuditFilter, AuditRepository};
pub use model_settings::{ModelSettingsRepository, StoredModelSettings};
pub use repo::{
    AgentStepWrite, CancelOutcome, DispatchCandidate, FinishOutcome, LeaseRenewal, QueueRecord,
    RedriveOutcome, StartOutcome, Submitted, TaskRepository,
};
pub use rows::{RepoError, now};
pub use tenants::{
    ApiKey, CreateTenantError, NewKey, StoredKey, Tenant, TenantLimits, TenantRepository,
};
pub use usage::{ModelUsage, Period, Usage, UsageRepository};
pub use users::{
    Invitation, Member, MemberRecord, PendingLogin, Refreshed, SessionState, SignInIdentity,
    SignInRefusal, UserRepository,
};
pub use webhooks::{
    ClaimedDelivery, Delivery, DeliveryAttempt, DeliveryFilter, DeliveryState, EndpointUpdate,
    NewEndpoint, RecordOutcome, TenantSigningKey, Verdict, WebhookEndpoint, WebhookRepository,
};

/// Opens the database named by the settings.
///
/// SQLite gets one connection: with WAL, a transaction that reads and then writes fails
/// with `SQLITE_BUSY_SNAPSHOT` (no retry) when another connection wrote in between, and
/// one connection makes that impossible. The embedded setup is for one process, where a
/// single writer is what SQLite does best anyway.
pub async fn connect(settings: &Settings) -> Result<DatabaseConnection, DbErr> {
    let url = settings.database_url();
    connect_url(
        &url,
        settings.database.max_connections,
        settings.database.connect_timeout,
    )
    .await
}

pub async fn connect_url(
    url: &str,
    max_connections: u32,
    connect_timeout: Duration,
) -> Result<DatabaseConnection, DbErr> {
    let is_sqlite = url.starts_with("sqlite:");
    if is_sqlite {
        create_sqlite_parent_directory(url)?;
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .connect_timeout(connect_timeout)
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    if is_sqlite {
        options
            .max_connections(1)
            .min_connections(1)
            .map_sqlx_sqlite_opts(|sqlite| {
                sqlite
                    .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
            });
    } else {
        options.max_connections(max_connections).min_connections(1);
    }
    Database::connect(options).await
}

fn create_sqlite_parent_directory(url: &str) -> Result<(), DbErr> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|error| {
            DbErr::Custom(format!("cannot create {}: {error}", parent.display()))
        })?;
    }
    Ok(())
}
