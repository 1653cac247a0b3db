//! A tenant's own language model, overriding the service's `llm.*`: base URL, model,
//! protocol, prices, and the API key sealed (AES-256-GCM under
//! `llm.key_encryption_key`) with a hint of its last characters for people to tell keys
//! apart. Like `tasks`, the rows name their tenant without a foreign key.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum TenantModelSettings {
    Table,
    TenantId,
    BaseUrl,
    Model,
    Protocol,
    ApiKeySealed,
    ApiKeyHint,
    Prices,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TenantModelSettings::Table)
                    .col(
                        ColumnDef::new(TenantModelSettings::TenantId)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(TenantModelSettings::BaseUrl)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TenantModelSettings::Model)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TenantModelSettings::Protocol)
                            .string()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(TenantModelSettings::ApiKeySealed)
                            .text()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(TenantModelSettings::ApiKeyHint)
                            .string()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(TenantModelSettings::Prices)
                            .json_binary()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TenantModelSettings::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(TenantModelSettings::Table).to_owned())
            .await
    }
}
