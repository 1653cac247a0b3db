//! Queue controls: idempotent submission, pausing a queue, and tenant fairness in the
//! embedded queue.
//!
//! - `tasks.request_hash`: the SHA-256 of the submission a task was created from, so a
//!   repeated `Idempotency-Key` can be told apart from a reused one.
//! - `queues`: one row per named queue that has been paused or resumed.
//! - `queue_tenants`: when the embedded queue last served each tenant, for round-robin
//!   dispatch across tenants.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tasks {
    Table,
    RequestHash,
}

#[derive(DeriveIden)]
enum Queues {
    Table,
    Name,
    Paused,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum QueueTenants {
    Table,
    TenantId,
    ServedSeq,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(ColumnDef::new(Tasks::RequestHash).string_len(64).null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Queues::Table)
                    .col(
                        ColumnDef::new(Queues::Name)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Queues::Paused)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(
                        ColumnDef::new(Queues::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(QueueTenants::Table)
                    .col(
                        ColumnDef::new(QueueTenants::TenantId)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(QueueTenants::ServedSeq)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [QueueTenants::Table.into_iden(), Queues::Table.into_iden()] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .drop_column(Tasks::RequestHash)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
