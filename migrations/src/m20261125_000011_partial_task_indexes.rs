//! Smaller task indexes: an index that only the live tasks need holds only them.
//!
//! A task's row is written three times (created, started, finished), and its state
//! changes each time, so every write adds an entry to every index of `tasks`. Most
//! rows are finished tasks, which neither the reconciler nor idempotency checks look
//! at; partial indexes leave them out, so a finish writes two index entries fewer and
//! the reconciler's scans stay as small as the live backlog.
//!
//! - `tasks_live`: `(id)` of queued and running tasks, for the reconciler's scan of
//!   queued tasks and expired leases (paged by id). Replaces `tasks_state_run_at` and
//!   `tasks_state_lease_expires_at`.
//! - `tasks_tenant_idempotency_key`: unique per tenant as before, over the tasks that
//!   have a key.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
    TenantId,
    State,
    RunAt,
    LeaseExpiresAt,
    IdempotencyKey,
}

const LIVE_STATES: [&str; 2] = ["queued", "running"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [
            "tasks_state_run_at",
            "tasks_state_lease_expires_at",
            "tasks_tenant_idempotency_key",
        ] {
            manager
                .drop_index(Index::drop().name(name).table(Tasks::Table).to_owned())
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("tasks_live")
                    .table(Tasks::Table)
                    .col(Tasks::Id)
                    .and_where(Expr::col(Tasks::State).is_in(LIVE_STATES))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tasks_tenant_idempotency_key")
                    .table(Tasks::Table)
                    .col(Tasks::TenantId)
                    .col(Tasks::IdempotencyKey)
                    .unique()
                    .and_where(Expr::col(Tasks::IdempotencyKey).is_not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in ["tasks_live", "tasks_tenant_idempotency_key"] {
            manager
                .drop_index(Index::drop().name(name).table(Tasks::Table).to_owned())
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("tasks_state_run_at")
                    .table(Tasks::Table)
                    .col(Tasks::State)
                    .col(Tasks::RunAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tasks_state_lease_expires_at")
                    .table(Tasks::Table)
                    .col(Tasks::State)
                    .col(Tasks::LeaseExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tasks_tenant_idempotency_key")
                    .table(Tasks::Table)
                    .col(Tasks::TenantId)
                    .col(Tasks::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await
    }
}
