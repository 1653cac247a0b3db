//! An agent task's checkpoint: what its attempt has done so far (the conversation, the
//! step records, the steps as a script, what it spent), written after each step under
//! the task's lease, so that the next attempt after a crash restores the page by
//! replaying the steps and asks the model only for what is left. One row per task; a
//! separate table so that reading tasks never loads it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum TaskCheckpoints {
    Table,
    TaskId,
    Attempt,
    Checkpoint,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TaskCheckpoints::Table)
                    .col(
                        ColumnDef::new(TaskCheckpoints::TaskId)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(TaskCheckpoints::Attempt)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TaskCheckpoints::Checkpoint)
                            .json_binary()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TaskCheckpoints::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(TaskCheckpoints::Table, TaskCheckpoints::TaskId)
                            .to(Tasks::Table, Tasks::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(TaskCheckpoints::Table).to_owned())
            .await
    }
}
