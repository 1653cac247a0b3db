//! The `tenant_model_settings` rows: one tenant's own model, its key sealed (see
//! [`crate::models`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use operator_config::{LlmProtocol, ModelPrice};
use operator_domain::TenantId;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};

use super::entities::tenant_model_settings;
use super::rows::{RepoError, now};

/// A tenant's model settings as stored: the key only sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredModelSettings {
    pub base_url: String,
    pub model: String,
    pub protocol: Option<LlmProtocol>,
    pub api_key_sealed: Option<String>,
    pub api_key_hint: Option<String>,
    pub prices: HashMap<String, ModelPrice>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct ModelSettingsRepository {
    db: DatabaseConnection,
}

impl ModelSettingsRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub async fn get(&self, tenant: &TenantId) -> Result<Option<StoredModelSettings>, RepoError> {
        tenant_model_settings::Entity::find_by_id(tenant.as_str().to_owned())
            .one(&self.db)
            .await?
            .map(|row| {
                let protocol = row
                    .protocol
                    .as_deref()
                    .map(|name| {
                        serde_json::from_value(serde_json::Value::String(name.to_owned()))
                            .map_err(|_| RepoError::Corrupt(format!("model protocol {name:?}")))
                    })
                    .transpose()?;
                let prices = serde_json::from_value(row.prices)
                    .map_err(|error| RepoError::Corrupt(format!("model prices: {error}")))?;
                Ok(StoredModelSettings {
                    base_url: row.base_url,
                    model: row.model,
                    protocol,
                    api_key_sealed: row.api_key_sealed,
                    api_key_hint: row.api_key_hint,
                    prices,
                    updated_at: row.updated_at,
                })
            })
            .transpose()
    }

    /// Sets the tenant's settings (`updated_at` is now), replacing any before.
    pub async fn put(
        &self,
        tenant: &TenantId,
        settings: &StoredModelSettings,
    ) -> Result<StoredModelSettings, RepoError> {
        let now = now();
        let row = tenant_model_settings::ActiveModel {
            tenant_id: Set(tenant.as_str().to_owned()),
            base_url: Set(settings.base_url.clone()),
            model: Set(settings.model.clone()),
            protocol: Set(settings
                .protocol
                .map(|protocol| crate::models::protocol_name(protocol).to_owned())),
            api_key_sealed: Set(settings.api_key_sealed.clone()),
            api_key_hint: Set(settings.api_key_hint.clone()),
            prices: Set(serde_json::to_value(&settings.prices).unwrap_or_default()),
            updated_at: Set(now),
        };
        use tenant_model_settings::Column;
        tenant_model_settings::Entity::insert(row)
            .on_conflict(
                OnConflict::column(Column::TenantId)
                    .update_columns([
                        Column::BaseUrl,
                        Column::Model,
                        Column::Protocol,
                        Column::ApiKeySealed,
                        Column::ApiKeyHint,
                        Column::Prices,
                        Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(StoredModelSettings {
            updated_at: now,
            ..settings.clone()
        })
    }

    /// Removes the tenant's settings: it uses the service's again. Whether it had any.
    pub async fn delete(&self, tenant: &TenantId) -> Result<bool, RepoError> {
        let deleted = tenant_model_settings::Entity::delete_by_id(tenant.as_str().to_owned())
            .exec(&self.db)
            .await?;
        Ok(deleted.rows_affected > 0)
    }
}
