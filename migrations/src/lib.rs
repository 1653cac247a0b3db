//! Database schema migrations, run by `operator migrate` (and by `operator serve` at
//! start-up). Each migration is written once with sea-query's schema builder, so the
//! same steps run on PostgreSQL and on SQLite.
//!
//! - `m20261125_000001_initial`: tasks, attempts, artifacts, task events, and the
//!   embedded queue's table.
//! - `m20261125_000002_queue_controls`: idempotency request hashes, paused queues and
//!   the embedded queue's per-tenant round-robin state.
//! - `m20261125_000010_webhooks`: webhook endpoints, tenant signing keys, the delivery
//!   outbox and delivery attempts.
//! - `m20261125_000011_partial_task_indexes`: the reconciler's and idempotency indexes
//!   cover only the tasks they serve (live ones, ones with a key).
//! - `m20261125_000012_named_queues`: the queue of every task and embedded-queue row,
//!   and each queue's own concurrency limit.
//! - `m20261204_000013_tenants_and_keys`: tenants (with `default`, which every earlier row
//!   names) and their API keys.
//! - `m20261204_000014_link_keys`: the keys that sign artifact links and stream tickets.
//! - `m20261204_000015_audit_events`: the append-only audit log.
//! - `m20261204_000016_tenant_limits`: a tenant's own submission rate and burst.
//! - `m20261204_000017_users_and_sessions`: users, their provider identities, memberships,
//!   invitations, email domains, sessions, session signing keys and sign-ins in flight.
//! - `m20261204_000018_tenant_running_limit`: a tenant's own cap on running tasks per queue.

use sea_orm_migration::prelude::*;

mod m20261125_000001_initial;
mod m20261125_000002_queue_controls;
mod m20261125_000010_webhooks;
mod m20261125_000011_partial_task_indexes;
mod m20261125_000012_named_queues;
mod m20261204_000013_tenants_and_keys;
mod m20261204_000014_link_keys;
mod m20261204_000015_audit_events;
mod m20261204_000016_tenant_limits;
mod m20261204_000017_users_and_sessions;
mod m20261204_000018_tenant_running_limit;
mod m20261205_000019_monthly_usage;
mod m20261205_000020_spent_refresh_tokens;
mod m20261205_000021_task_checkpoints;
mod m20261206_000022_model_usage;
mod m20261206_000023_agent_scripts;
mod m20261206_000024_tenant_model_settings;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_initial::Migration),
            Box::new(m20261125_000002_queue_controls::Migration),
            Box::new(m20261125_000010_webhooks::Migration),
            Box::new(m20261125_000011_partial_task_indexes::Migration),
            Box::new(m20261125_000012_named_queues::Migration),
            Box::new(m20261204_000013_tenants_and_keys::Migration),
            Box::new(m20261204_000014_link_keys::Migration),
            Box::new(m20261204_000015_audit_events::Migration),
            Box::new(m20261204_000016_tenant_limits::Migration),
            Box::new(m20261204_000017_users_and_sessions::Migration),
            Box::new(m20261204_000018_tenant_running_limit::Migration),
            Box::new(m20261205_000019_monthly_usage::Migration),
            Box::new(m20261205_000020_spent_refresh_tokens::Migration),
            Box::new(m20261205_000021_task_checkpoints::Migration),
            Box::new(m20261206_000022_model_usage::Migration),
            Box::new(m20261206_000023_agent_scripts::Migration),
            Box::new(m20261206_000024_tenant_model_settings::Migration),
        ]
    }
}
