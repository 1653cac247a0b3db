//! Named queues: every task, and every row of the embedded queue, belongs to one.
//!
//! - `tasks.queue` and `queue_jobs.queue`: the queue's name; existing rows are in
//!   `default`.
//! - `queues.concurrency_limit`: the most tasks of the queue running at once, when it
//!   sets its own; `queues.served_seq`: when the embedded queue last served it, so
//!   queues of equal priority take turns. A queue exists once it has a row (`default`
//!   always does), so a task naming a queue nobody created is refused, not parked
//!   where no worker looks.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Queue,
}

#[derive(DeriveIden)]
enum QueueJobs {
    Table,
    Queue,
}

#[derive(DeriveIden)]
enum Queues {
    Table,
    Name,
    Paused,
    ConcurrencyLimit,
    ServedSeq,
    UpdatedAt,
}

fn queue_column<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name)
        .string_len(64)
        .not_null()
        .default("default")
        .to_owned()
}

/// One column per statement: SQLite alters one at a time.
async fn add_column<T: IntoTableRef>(
    manager: &SchemaManager<'_>,
    table: T,
    mut column: ColumnDef,
) -> Result<(), DbErr> {
    manager
        .alter_table(
            Table::alter()
                .table(table)
                .add_column(&mut column)
                .to_owned(),
        )
        .await
}

async fn drop_column<T: IntoTableRef, C: IntoIden>(
    manager: &SchemaManager<'_>,
    table: T,
    column: C,
) -> Result<(), DbErr> {
    manager
        .alter_table(Table::alter().table(table).drop_column(column).to_owned())
        .await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column(manager, Tasks::Table, queue_column(Tasks::Queue)).await?;
        add_column(manager, QueueJobs::Table, queue_column(QueueJobs::Queue)).await?;
        let limit = ColumnDef::new(Queues::ConcurrencyLimit)
            .integer()
            .null()
            .to_owned();
        add_column(manager, Queues::Table, limit).await?;
        let served = ColumnDef::new(Queues::ServedSeq)
            .big_integer()
            .not_null()
            .default(0)
            .to_owned();
        add_column(manager, Queues::Table, served).await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(Queues::Table)
                    .columns([Queues::Name, Queues::Paused, Queues::UpdatedAt])
                    .values_panic(["default".into(), false.into(), Expr::current_timestamp()])
                    .on_conflict(OnConflict::column(Queues::Name).do_nothing().to_owned())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_column(manager, Queues::Table, Queues::ConcurrencyLimit).await?;
        drop_column(manager, Queues::Table, Queues::ServedSeq).await?;
        drop_column(manager, QueueJobs::Table, QueueJobs::Queue).await?;
        drop_column(manager, Tasks::Table, Tasks::Queue).await
    }
}
