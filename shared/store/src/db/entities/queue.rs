use sea_orm::entity::prelude::*;

/// A named queue and its controls; a queue exists once it has a row.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "queues")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub paused: bool,
    /// The most of its tasks running at once; `None` = `queue.global_concurrency`.
    pub concurrency_limit: Option<i32>,
    /// When the embedded queue last served it (queues of equal priority take turns).
    pub served_seq: i64,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
