//! The refresh tokens a session has spent (their SHA-256), so that one presented again
//! is recognised as a reuse: someone holds a copy of an old token, and the session is
//! ended (refresh-token rotation with reuse detection, OAuth 2.0 Security BCP §4.14).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SpentRefreshTokens {
    Table,
    Hash,
    SessionId,
    SpentAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SpentRefreshTokens::Table)
                    .col(
                        ColumnDef::new(SpentRefreshTokens::Hash)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(SpentRefreshTokens::SessionId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SpentRefreshTokens::SpentAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("spent_refresh_tokens_by_session")
                    .table(SpentRefreshTokens::Table)
                    .col(SpentRefreshTokens::SessionId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SpentRefreshTokens::Table).to_owned())
            .await
    }
}
