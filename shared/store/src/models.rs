//! Tenants' own language-model settings: stored with the API key sealed (AES-256-GCM
//! under `llm.key_encryption_key`, the tenant id as associated data, so a sealed key
//! opens for its own tenant only), and read through a short-lived per-process cache
//! (`llm.tenant_settings_ttl`) by the API (checks at submission) and the workers (the
//! model each agent task talks to).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use operator_config::{LlmProtocol, LlmSettings, TenantModel};
use operator_domain::TenantId;
use secrecy::{ExposeSecret, SecretString};

use crate::db::{ModelSettingsRepository, RepoError, StoredModelSettings};

/// The version tag of a sealed value; another is not opened.
const SEALED_PREFIX: &str = "v1.";
const NONCE_LENGTH: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("llm.key_encryption_key must be 32 bytes in base64 (e.g. `openssl rand -base64 32`)")]
    BadKey,
    #[error(
        "a sealed key does not open with this llm.key_encryption_key (another key, or another tenant's)"
    )]
    Unopenable,
}

/// Seals and opens secrets at rest.
#[derive(Clone)]
pub struct KeySealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for KeySealer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("KeySealer")
    }
}

impl KeySealer {
    /// From the setting: 32 bytes, base64.
    pub fn from_setting(key: &SecretString) -> Result<Self, SealError> {
        let bytes = STANDARD
            .decode(key.expose_secret().trim())
            .map_err(|_| SealError::BadKey)?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| SealError::BadKey)?;
        Ok(Self { cipher })
    }

    /// A new random key, as the setting wants it.
    pub fn generate_setting() -> String {
        STANDARD.encode(rand::random::<[u8; 32]>())
    }

    /// `v1.` and base64 of a fresh nonce and the ciphertext, bound to `tenant`.
    pub fn seal(&self, tenant: &TenantId, secret: &str) -> String {
        let nonce_bytes = rand::random::<[u8; NONCE_LENGTH]>();
        let nonce = Nonce::from(nonce_bytes);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.as_bytes(),
                    aad: tenant.as_str().as_bytes(),
                },
            )
            .expect("AES-GCM seals any secret shorter than 64 GiB");
        let mut joined = nonce_bytes.to_vec();
        joined.extend(sealed);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(joined))
    }

    pub fn open(&self, tenant: &TenantId, sealed: &str) -> Result<SecretString, SealError> {
        let joined = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|encoded| STANDARD.decode(encoded).ok())
            .filter(|joined| joined.len() > NONCE_LENGTH)
            .ok_or(SealError::Unopenable)?;
        let (nonce, ciphertext) = joined.split_at(NONCE_LENGTH);
        let nonce: [u8; NONCE_LENGTH] = nonce.try_into().map_err(|_| SealError::Unopenable)?;
        let opened = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: tenant.as_str().as_bytes(),
                },
            )
            .map_err(|_| SealError::Unopenable)?;
        String::from_utf8(opened)
            .map(SecretString::from)
            .map_err(|_| SealError::Unopenable)
    }
}

/// A tenant's model as the service runs it: its override opened, and when it was set.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub model: TenantModel,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Reads tenants' model settings, each kept for `llm.tenant_settings_ttl`.
pub struct TenantModels {
    repo: ModelSettingsRepository,
    sealer: Option<KeySealer>,
    ttl: Duration,
    cache: Mutex<HashMap<TenantId, (Instant, Option<ResolvedModel>)>>,
}

impl TenantModels {
    pub fn new(repo: ModelSettingsRepository, llm: &LlmSettings) -> Result<Self, SealError> {
        let sealer = llm
            .key_encryption_key
            .as_ref()
            .map(KeySealer::from_setting)
            .transpose()?;
        Ok(Self {
            repo,
            sealer,
            ttl: llm.tenant_settings_ttl,
            cache: Mutex::default(),
        })
    }

    pub fn sealer(&self) -> Option<&KeySealer> {
        self.sealer.as_ref()
    }

    pub fn repo(&self) -> &ModelSettingsRepository {
        &self.repo
    }

    /// The tenant's own model, if it set one.
    pub async fn get(&self, tenant: &TenantId) -> Result<Option<ResolvedModel>, ModelsError> {
        if let Ok(cache) = self.cache.lock()
            && let Some((read_at, model)) = cache.get(tenant)
            && read_at.elapsed() < self.ttl
        {
            return Ok(model.clone());
        }
        let stored = self.repo.get(tenant).await?;
        let resolved = match stored {
            Some(stored) => Some(self.resolve(tenant, stored)?),
            None => None,
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(tenant.clone(), (Instant::now(), resolved.clone()));
        }
        Ok(resolved)
    }

    /// Drops what this process keeps of the tenant's settings (after it changed them).
    pub fn forget(&self, tenant: &TenantId) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(tenant);
        }
    }

    fn resolve(
        &self,
        tenant: &TenantId,
        stored: StoredModelSettings,
    ) -> Result<ResolvedModel, SealError> {
        let api_key = match (&stored.api_key_sealed, &self.sealer) {
            (Some(sealed), Some(sealer)) => Some(sealer.open(tenant, sealed)?),
            (Some(_), None) => return Err(SealError::Unopenable),
            (None, _) => None,
        };
        Ok(ResolvedModel {
            model: TenantModel {
                base_url: stored.base_url,
                model: stored.model,
                protocol: stored.protocol,
                api_key,
                prices: stored.prices,
            },
            updated_at: stored.updated_at,
        })
    }
}

/// The protocol column's values.
pub fn protocol_name(protocol: LlmProtocol) -> &'static str {
    match protocol {
        LlmProtocol::Auto => "auto",
        LlmProtocol::Tools => "tools",
        LlmProtocol::Json => "json",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_for_its_tenant_only_and_with_its_key_only() {
        let setting = SecretString::from(KeySealer::generate_setting());
        let sealer = KeySealer::from_setting(&setting).expect("key");
        let acme = TenantId::parse("acme").expect("tenant");
        let globex = TenantId::parse("globex").expect("tenant");
        let sealed = sealer.seal(&acme, "sk-live-1234");
        assert!(sealed.starts_with("v1."));
        assert!(!sealed.contains("sk-live"));
        assert_ne!(
            sealed,
            sealer.seal(&acme, "sk-live-1234"),
            "a fresh nonce each time"
        );
        assert_eq!(
            sealer.open(&acme, &sealed).expect("opens").expose_secret(),
            "sk-live-1234"
        );
        assert!(
            sealer.open(&globex, &sealed).is_err(),
            "bound to its tenant"
        );
        let other = KeySealer::from_setting(&SecretString::from(KeySealer::generate_setting()))
            .expect("key");
        assert!(other.open(&acme, &sealed).is_err(), "and to its key");
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(sealer.open(&acme, &tampered).is_err());
        assert!(matches!(
            KeySealer::from_setting(&SecretString::from("c2hvcnQ=".to_owned())),
            Err(SealError::BadKey)
        ));
    }
}
