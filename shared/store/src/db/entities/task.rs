use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "tasks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: String,
    pub queue: String,
    pub kind: String,
    pub state: String,
    pub input: Json,
    pub priority: i16,
    pub attempts: i32,
    pub max_attempts: i32,
    pub timeout_ms: i64,
    pub idempotency_key: Option<String>,
    /// SHA-256 (hex) of the submission, to tell a replay from a reused key.
    pub request_hash: Option<String>,
    pub webhook_url: Option<String>,
    pub progress: Option<Json>,
    pub result: Option<Json>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub cancel_requested: bool,
    pub lease_token: Option<Uuid>,
    pub lease_expires_at: Option<DateTimeUtc>,
    pub worker_id: Option<String>,
    pub trace_parent: Option<String>,
    pub run_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
