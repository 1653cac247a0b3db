//! The agent script cache: per tenant and cache key (the goal as written, the start
//! URL and the output schema), the script steps of the last succeeded run that asked for
//! the cache. An agent task with `cache: reuse` replays them before it asks the model.
//! Like `tasks`, the rows name their tenant without a foreign key; the task that
//! recorded a script is named without one too (it may be deleted before the script).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AgentScripts {
    Table,
    TenantId,
    CacheKey,
    Steps,
    TaskId,
    Uses,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AgentScripts::Table)
                    .col(ColumnDef::new(AgentScripts::TenantId).string().not_null())
                    .col(
                        ColumnDef::new(AgentScripts::CacheKey)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(AgentScripts::Steps).json_binary().not_null())
                    .col(ColumnDef::new(AgentScripts::TaskId).uuid().not_null())
                    .col(
                        ColumnDef::new(AgentScripts::Uses)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(AgentScripts::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AgentScripts::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(AgentScripts::TenantId)
                            .col(AgentScripts::CacheKey),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AgentScripts::Table).to_owned())
            .await
    }
}
