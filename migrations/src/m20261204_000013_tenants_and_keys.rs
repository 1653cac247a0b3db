//! Tenants and their API keys. Every existing row already names the tenant `default`,
//! which this migration creates. A key with `platform_admin` may also manage tenants.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    TenantId,
    Lookup,
    SecretHash,
    DisplayPrefix,
    Name,
    Role,
    PlatformAdmin,
    CreatedBy,
    CreatedAt,
    ExpiresAt,
    LastUsedAt,
    RevokedAt,
}

fn column<T: IntoIden>(column: T) -> ColumnDef {
    ColumnDef::new(column)
}

fn timestamp<T: IntoIden>(name: T, nullable: bool) -> ColumnDef {
    let mut definition = ColumnDef::new(name);
    definition.timestamp_with_time_zone();
    if nullable {
        definition.null();
    } else {
        definition.not_null();
    }
    definition
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tenants::Table)
                    .col(column(Tenants::Id).string_len(64).not_null().primary_key())
                    .col(column(Tenants::Name).text().not_null())
                    .col(timestamp(Tenants::CreatedAt, false))
                    .to_owned(),
            )
            .await?;
        let default_tenant = Query::insert()
            .into_table(Tenants::Table)
            .columns([Tenants::Id, Tenants::Name, Tenants::CreatedAt])
            .values_panic([
                "default".into(),
                "Default".into(),
                Expr::current_timestamp(),
            ])
            .to_owned();
        manager.exec_stmt(default_tenant).await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(column(ApiKeys::Id).uuid().not_null().primary_key())
                    .col(column(ApiKeys::TenantId).string_len(64).not_null())
                    .col(column(ApiKeys::Lookup).string_len(16).not_null())
                    .col(column(ApiKeys::SecretHash).string_len(64).not_null())
                    .col(column(ApiKeys::DisplayPrefix).string_len(32).not_null())
                    .col(column(ApiKeys::Name).text().not_null())
                    .col(column(ApiKeys::Role).string_len(16).not_null())
                    .col(
                        column(ApiKeys::PlatformAdmin)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(column(ApiKeys::CreatedBy).text().null())
                    .col(timestamp(ApiKeys::CreatedAt, false))
                    .col(timestamp(ApiKeys::ExpiresAt, true))
                    .col(timestamp(ApiKeys::LastUsedAt, true))
                    .col(timestamp(ApiKeys::RevokedAt, true))
                    .foreign_key(
                        ForeignKey::create()
                            .name("api_keys_tenant")
                            .from(ApiKeys::Table, ApiKeys::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("api_keys_lookup")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::Lookup)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("api_keys_tenant_created")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::TenantId)
                    .col(ApiKeys::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ApiKeys::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Tenants::Table).to_owned())
            .await
    }
}
