//! `/v1/model-settings`: a tenant's own language model for its agent tasks, in place
//! of the service's `llm.*`. The API key is sealed at rest and never shown again; its
//! last four characters are, to tell keys apart.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use operator_config::{LlmProtocol, ModelPrice};
use operator_domain::error::ErrorCode;
use operator_store::db::StoredModelSettings;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags};

use crate::access::Caller;
use crate::codes;
use crate::error::{ApiError, ApiResult, NoCodes};
use crate::state::SharedState;

#[derive(Tags)]
pub enum ModelTags {
    /// The language model agent tasks talk to.
    Model,
}

const MAX_URL_LENGTH: usize = 2048;
const MAX_MODEL_LENGTH: usize = 200;
const MAX_KEY_LENGTH: usize = 4096;
const MAX_PRICES: usize = 50;

/// How the model is asked for an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename = "ModelProtocol", rename_all = "snake_case")]
pub enum ProtocolDto {
    /// Tool calling, and JSON mode from the first refusal of tools on.
    Auto,
    Tools,
    /// For servers without tool calling.
    Json,
}

impl From<ProtocolDto> for LlmProtocol {
    fn from(protocol: ProtocolDto) -> Self {
        match protocol {
            ProtocolDto::Auto => Self::Auto,
            ProtocolDto::Tools => Self::Tools,
            ProtocolDto::Json => Self::Json,
        }
    }
}

impl From<LlmProtocol> for ProtocolDto {
    fn from(protocol: LlmProtocol) -> Self {
        match protocol {
            LlmProtocol::Auto => Self::Auto,
            LlmProtocol::Tools => Self::Tools,
            LlmProtocol::Json => Self::Json,
        }
    }
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, Object)]
#[oai(rename = "ModelPrice")]
pub struct PriceDto {
    #[oai(validator(minimum(value = "0")))]
    pub input_per_million: f64,
    #[oai(validator(minimum(value = "0")))]
    pub output_per_million: f64,
}

/// The model the tenant's agent tasks use.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ModelSettings")]
pub struct ModelSettingsView {
    /// `tenant`: the tenant's own, below; `service`: the service's settings (then only
    /// `model` and `configured` are shown).
    pub source: String,
    /// Whether agent tasks can run: the tenant's own model, or the service's.
    pub configured: bool,
    pub base_url: Option<String>,
    /// The model a task gets when it names none.
    pub model: String,
    pub protocol: Option<ProtocolDto>,
    /// Whether an API key is stored (it is never shown).
    pub has_api_key: bool,
    /// The stored key's last four characters.
    pub api_key_hint: Option<String>,
    /// The tenant's prices, added to the service's table.
    pub prices: BTreeMap<String, PriceDto>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The tenant's own model.
#[derive(Debug, Clone, Object)]
#[oai(rename = "PutModelSettings", deny_unknown_fields)]
pub struct PutModelSettings {
    /// An OpenAI-compatible API, e.g. `https://api.openai.com/v1`; the network policy
    /// applies to it as to every page a task opens.
    pub base_url: String,
    /// The model a task gets when it names none.
    pub model: String,
    /// Default: the service's `llm.protocol`.
    pub protocol: Option<ProtocolDto>,
    /// The API key, sent as `Authorization: Bearer`. Absent: the stored key stays;
    /// empty: no key. Stored sealed and never shown again.
    pub api_key: Option<String>,
    /// Prices per model name, for `budget.max_cost_usd` and the cost in usage.
    #[oai(default)]
    pub prices: BTreeMap<String, PriceDto>,
}

#[derive(ApiResponse)]
pub enum Removed {
    /// The tenant's agent tasks use the service's model again.
    #[oai(status = 204)]
    Removed,
}

codes!(PutCodes: InvalidJson, InvalidRequest, InvalidUrl, UrlSchemeNotAllowed, UrlNotAllowed,
    LlmNotConfigured);

pub struct ModelSettingsApi {
    pub state: SharedState,
}

fn invalid(field: &str, problem: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, format!("{field}: {problem}"))
}

/// The key's last four characters, for people to tell keys apart.
fn hint(key: &str) -> String {
    let skip = key.chars().count().saturating_sub(4);
    format!("…{}", key.chars().skip(skip).collect::<String>())
}

impl ModelSettingsApi {
    fn view(&self, stored: Option<StoredModelSettings>) -> ModelSettingsView {
        let llm = &self.state.settings.llm;
        match stored {
            Some(stored) => ModelSettingsView {
                source: "tenant".to_owned(),
                configured: true,
                base_url: Some(stored.base_url),
                model: stored.model,
                protocol: stored.protocol.map(Into::into),
                has_api_key: stored.api_key_sealed.is_some(),
                api_key_hint: stored.api_key_hint,
                prices: stored
                    .prices
                    .into_iter()
                    .map(|(name, price)| {
                        (
                            name,
                            PriceDto {
                                input_per_million: price.input_per_million,
                                output_per_million: price.output_per_million,
                            },
                        )
                    })
                    .collect(),
                updated_at: Some(stored.updated_at),
            },
            // The service's endpoint and key are the operator's, not the tenant's.
            None => ModelSettingsView {
                source: "service".to_owned(),
                configured: llm.base_url.is_some(),
                base_url: None,
                model: llm.model.clone(),
                protocol: None,
                has_api_key: false,
                api_key_hint: None,
                prices: BTreeMap::new(),
                updated_at: None,
            },
        }
    }
}

#[OpenApi(tag = "ModelTags::Model")]
impl ModelSettingsApi {
    /// The tenant's language model.
    ///
    /// Its own (`source: tenant`, set with `PUT`) or the service's. The API key is never
    /// shown, only whether one is stored and its last four characters.
    #[oai(path = "/v1/model-settings", method = "get")]
    async fn get(&self, caller: Caller) -> ApiResult<Json<ModelSettingsView>, NoCodes> {
        let stored = self.state.models.repo().get(&caller.tenant).await?;
        Ok(Json(self.view(stored)))
    }

    /// Set the tenant's own language model.
    ///
    /// Its agent tasks then talk to this OpenAI-compatible endpoint with this key and
    /// model instead of the service's. Workers apply a change within
    /// `llm.tenant_settings_ttl` (30 s); this replica at once.
    #[oai(path = "/v1/model-settings", method = "put")]
    async fn put(
        &self,
        caller: Caller,
        body: Json<PutModelSettings>,
    ) -> ApiResult<Json<ModelSettingsView>, PutCodes> {
        let Json(request) = body;
        let state = &self.state;
        if request.base_url.len() > MAX_URL_LENGTH {
            return Err(invalid("base_url", "is longer than 2048 characters").into());
        }
        let url = url::Url::parse(&request.base_url)
            .map_err(|error| ApiError::new(ErrorCode::InvalidUrl, format!("base_url: {error}")))?;
        state
            .policy
            .check_url_statically(&url)
            .map_err(|error| ApiError::new(error.code, format!("base_url: {}", error.message)))?;
        let model = request.model.trim();
        if model.is_empty() || model.len() > MAX_MODEL_LENGTH {
            return Err(invalid("model", "must be 1 to 200 characters").into());
        }
        if request.prices.len() > MAX_PRICES {
            return Err(invalid("prices", "at most 50 models").into());
        }
        let mut prices = HashMap::new();
        for (name, price) in &request.prices {
            let finite = price.input_per_million.is_finite()
                && price.output_per_million.is_finite()
                && price.input_per_million >= 0.0
                && price.output_per_million >= 0.0;
            if name.is_empty() || name.len() > MAX_MODEL_LENGTH || !finite {
                return Err(invalid(
                    &format!("prices.{name}"),
                    "a model name of 1 to 200 characters and prices of 0 or more",
                )
                .into());
            }
            prices.insert(
                name.clone(),
                ModelPrice {
                    input_per_million: price.input_per_million,
                    output_per_million: price.output_per_million,
                },
            );
        }
        let earlier = state.models.repo().get(&caller.tenant).await?;
        let (api_key_sealed, api_key_hint, key_change) = match request.api_key.as_deref() {
            None => match earlier {
                Some(earlier) => (earlier.api_key_sealed, earlier.api_key_hint, "kept"),
                None => (None, None, "none"),
            },
            Some("") => (None, None, "removed"),
            Some(key) => {
                if key.len() > MAX_KEY_LENGTH || key.chars().any(char::is_control) {
                    return Err(invalid(
                        "api_key",
                        "must be at most 4096 characters, without control characters",
                    )
                    .into());
                }
                let Some(sealer) = state.models.sealer() else {
                    return Err(ApiError::new(
                        ErrorCode::LlmNotConfigured,
                        "api_key: the service has no llm.key_encryption_key to store it with",
                    )
                    .into());
                };
                (
                    Some(sealer.seal(&caller.tenant, key)),
                    Some(hint(key)),
                    "set",
                )
            }
        };
        let stored = state
            .models
            .repo()
            .put(
                &caller.tenant,
                &StoredModelSettings {
                    base_url: url.as_str().trim_end_matches('/').to_owned(),
                    model: model.to_owned(),
                    protocol: request.protocol.map(Into::into),
                    api_key_sealed,
                    api_key_hint,
                    prices,
                    updated_at: Utc::now(),
                },
            )
            .await?;
        state.models.forget(&caller.tenant);
        state
            .audit(
                &caller,
                "model_settings.changed",
                "model_settings",
                &caller.tenant,
                serde_json::json!({"base_url": stored.base_url, "model": stored.model, "api_key": key_change}),
            )
            .await;
        Ok(Json(self.view(Some(stored))))
    }

    /// Remove the tenant's own language model.
    ///
    /// Its agent tasks use the service's model again (its stored key is deleted).
    #[oai(path = "/v1/model-settings", method = "delete")]
    async fn delete(&self, caller: Caller) -> ApiResult<Removed, NoCodes> {
        let removed = self.state.models.repo().delete(&caller.tenant).await?;
        self.state.models.forget(&caller.tenant);
        if removed {
            self.state
                .audit(
                    &caller,
                    "model_settings.removed",
                    "model_settings",
                    &caller.tenant,
                    serde_json::json!({}),
                )
                .await;
        }
        Ok(Removed::Removed)
    }
}
