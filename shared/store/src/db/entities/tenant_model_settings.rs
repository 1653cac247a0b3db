use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tenant_model_settings")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: String,
    pub base_url: String,
    pub model: String,
    /// `auto`, `tools` or `json`; null: the service's `llm.protocol`.
    pub protocol: Option<String>,
    /// `v1.` and base64 of nonce and AES-256-GCM ciphertext; null: no key.
    pub api_key_sealed: Option<String>,
    /// The key's last four characters.
    pub api_key_hint: Option<String>,
    /// Model name to `{input_per_million, output_per_million}`.
    pub prices: Json,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
