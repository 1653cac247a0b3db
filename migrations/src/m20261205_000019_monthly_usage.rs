//! Monthly usage per tenant (tasks created, browser time) and a tenant's own monthly
//! quotas of both, overriding `limits.monthly_*` (null: the setting).
//!
//! A usage row is one tenant's calendar month (UTC, `period` = `YYYY-MM`); the writes of
//! a task's creation and of each attempt's end add to it in their own transaction, so
//! the counts are never ahead of or behind the rows they count. Like `tasks`, the rows
//! name their tenant without a foreign key.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tenants {
    Table,
    MonthlyTasks,
    MonthlyBrowserSeconds,
}

#[derive(DeriveIden)]
enum TenantUsage {
    Table,
    TenantId,
    Period,
    Tasks,
    BrowserMs,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TenantUsage::Table)
                    .col(ColumnDef::new(TenantUsage::TenantId).string().not_null())
                    .col(ColumnDef::new(TenantUsage::Period).string_len(7).not_null())
                    .col(
                        ColumnDef::new(TenantUsage::Tasks)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(TenantUsage::BrowserMs)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(TenantUsage::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(TenantUsage::TenantId)
                            .col(TenantUsage::Period),
                    )
                    .to_owned(),
            )
            .await?;
        // SQLite adds one column per statement.
        for column in [Tenants::MonthlyTasks, Tenants::MonthlyBrowserSeconds] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tenants::Table)
                        .add_column(ColumnDef::new(column).big_integer().null())
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Tenants::MonthlyBrowserSeconds, Tenants::MonthlyTasks] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tenants::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(TenantUsage::Table).to_owned())
            .await
    }
}
