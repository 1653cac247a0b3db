use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "agent_scripts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: String,
    /// SHA-256 (hex) of the goal, start URL and output schema.
    #[sea_orm(primary_key, auto_increment = false)]
    pub cache_key: String,
    /// The script steps, with placeholders where secrets are typed.
    pub steps: Json,
    /// The task whose run recorded them.
    pub task_id: Uuid,
    /// How many runs replayed them.
    pub uses: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
