//! Agent tasks' model use, summed per tenant and month beside tasks and browser time:
//! calls, prompt and completion tokens, and cost in millionths of a US dollar (an
//! integer, so that sums are exact).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum TenantUsage {
    Table,
    ModelCalls,
    PromptTokens,
    CompletionTokens,
    CostMicroUsd,
}

const COLUMNS: [TenantUsage; 4] = [
    TenantUsage::ModelCalls,
    TenantUsage::PromptTokens,
    TenantUsage::CompletionTokens,
    TenantUsage::CostMicroUsd,
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per statement.
        for column in COLUMNS {
            manager
                .alter_table(
                    Table::alter()
                        .table(TenantUsage::Table)
                        .add_column(ColumnDef::new(column).big_integer().not_null().default(0))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in COLUMNS {
            manager
                .alter_table(
                    Table::alter()
                        .table(TenantUsage::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
