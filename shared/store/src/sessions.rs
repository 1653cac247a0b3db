//! Session tokens for people signed in through OpenID Connect: short-lived JWTs signed
//! with EdDSA (Ed25519, jwt-simple), a `kid` header naming the signing key.
//!
//! The signing keys live in `session_keys`, shared by every API replica. A key signs for
//! `auth.session_key_lifetime`; the first replica that needs a key after that makes the
//! next one. A key that no longer signs is still accepted for `auth.session_key_overlap`
//! (at least a session's lifetime, so no session dies early at a rotation), then it is
//! gone from the JWKS and every token it signed is refused, whatever its `exp` says.
//! The public keys of the keys still accepted are served at `/.well-known/jwks.json`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jwt_simple::prelude::{
    Claims, Ed25519KeyPair, Ed25519PublicKey, EdDSAKeyPairLike, EdDSAPublicKeyLike, Token,
    VerificationOptions,
};
use operator_domain::TenantId;
use operator_domain::auth::Role;
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use uuid::Uuid;

use crate::db::RepoError;
use crate::db::entities::session_key;

/// The issuer of session tokens (`iss`), and their audience (`aud`).
const ISSUER: &str = "operator";

/// A keyset is re-read at most this often when a token names an unknown key.
const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// A keyset older than this is re-read before it is used, so a key retired in the
/// database (its overlap cut short) is refused by every replica within this time.
const KEYSET_FRESH_FOR: Duration = Duration::from_secs(2);

/// What a session token says, beyond its times: who, in which tenant, which session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The session's id; logging out revokes it.
    pub sid: Uuid,
    pub tenant: TenantId,
    /// The member's role when the token was made (the API reads the current one).
    pub role: Role,
}

/// A verified session token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSession {
    pub user: Uuid,
    pub claims: SessionClaims,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionTokenError {
    #[error("the session token is malformed, forged, expired or signed by a retired key")]
    Invalid,
    #[error(transparent)]
    Store(#[from] RepoError),
}

#[derive(Clone)]
struct Key {
    kid: String,
    pair: Ed25519KeyPair,
    public: Ed25519PublicKey,
    signs_until: DateTime<Utc>,
    accepted_until: DateTime<Utc>,
}

struct Keyset {
    keys: Vec<Key>,
    loaded_at: Option<tokio::time::Instant>,
}

/// Signs and verifies session tokens with the shared, rotating keys.
#[derive(Clone)]
pub struct SessionSigner {
    db: DatabaseConnection,
    lifetime: Duration,
    overlap: Duration,
    keyset: Arc<RwLock<Keyset>>,
}

impl std::fmt::Debug for SessionSigner {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SessionSigner")
    }
}

impl SessionSigner {
    /// `lifetime`: how long a key signs; `overlap`: how long after that it is accepted.
    pub fn new(db: DatabaseConnection, lifetime: Duration, overlap: Duration) -> Self {
        Self {
            db,
            lifetime,
            overlap,
            keyset: Arc::new(RwLock::new(Keyset {
                keys: Vec::new(),
                loaded_at: None,
            })),
        }
    }

    /// A token for `user`'s session, valid for `ttl`, signed by the current key.
    pub async fn sign(
        &self,
        user: Uuid,
        claims: SessionClaims,
        ttl: Duration,
    ) -> Result<String, SessionTokenError> {
        let key = self.signing_key().await?;
        let claims = Claims::with_custom_claims(claims, ttl.into())
            .with_issuer(ISSUER)
            .with_audience(ISSUER)
            .with_subject(user);
        key.pair
            .sign(claims)
            .map_err(|error| RepoError::Corrupt(format!("cannot sign a session: {error}")).into())
    }

    /// The session `token` names, if its key is still accepted and it is unexpired.
    pub async fn verify(&self, token: &str) -> Result<VerifiedSession, SessionTokenError> {
        let metadata = Token::decode_metadata(token).map_err(|_| SessionTokenError::Invalid)?;
        if metadata.algorithm() != "EdDSA" {
            return Err(SessionTokenError::Invalid);
        }
        let kid = metadata
            .key_id()
            .ok_or(SessionTokenError::Invalid)?
            .to_owned();
        self.refresh_if_stale().await?;
        let key = match self.accepted_key(&kid).await {
            Some(key) => key,
            None => {
                self.reload(false).await?;
                self.accepted_key(&kid)
                    .await
                    .ok_or(SessionTokenError::Invalid)?
            }
        };
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from([ISSUER.to_owned()])),
            allowed_audiences: Some(HashSet::from([ISSUER.to_owned()])),
            time_tolerance: Some(jwt_simple::prelude::Duration::from_secs(5)),
            ..VerificationOptions::default()
        };
        let verified = key
            .public
            .verify_token::<SessionClaims>(token, Some(options))
            .map_err(|_| SessionTokenError::Invalid)?;
        let user = verified
            .subject
            .as_deref()
            .and_then(|subject| Uuid::parse_str(subject).ok())
            .ok_or(SessionTokenError::Invalid)?;
        Ok(VerifiedSession {
            user,
            claims: verified.custom,
        })
    }

    /// The public keys still accepted, as a JWK Set.
    pub async fn jwks(&self) -> Result<serde_json::Value, SessionTokenError> {
        // A key made by another replica is published within the keyset's freshness;
        // a flood of requests for this public document costs one read per 2 s.
        self.refresh_if_stale().await?;
        let now = Utc::now();
        let keyset = self.keyset.read().await;
        let keys: Vec<serde_json::Value> = keyset
            .keys
            .iter()
            .filter(|key| key.accepted_until > now)
            .map(|key| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": "EdDSA",
                    "use": "sig",
                    "kid": key.kid,
                    "x": URL_SAFE_NO_PAD.encode(key.public.to_bytes()),
                })
            })
            .collect();
        Ok(serde_json::json!({ "keys": keys }))
    }

    async fn accepted_key(&self, kid: &str) -> Option<Key> {
        let now = Utc::now();
        self.keyset
            .read()
            .await
            .keys
            .iter()
            .find(|key| key.kid == kid && key.accepted_until > now)
            .cloned()
    }

    async fn refresh_if_stale(&self) -> Result<(), SessionTokenError> {
        let stale = self
            .keyset
            .read()
            .await
            .loaded_at
            .is_none_or(|at| at.elapsed() >= KEYSET_FRESH_FOR);
        if stale {
            self.reload(true).await?;
        }
        Ok(())
    }

    /// The key that signs now, made when there is none.
    async fn signing_key(&self) -> Result<Key, SessionTokenError> {
        self.refresh_if_stale().await?;
        let now = Utc::now();
        let current = |keys: &[Key]| {
            keys.iter()
                .filter(|key| key.signs_until > now)
                .max_by_key(|key| key.signs_until)
                .cloned()
        };
        if let Some(key) = current(&self.keyset.read().await.keys) {
            return Ok(key);
        }
        self.reload(true).await?;
        if let Some(key) = current(&self.keyset.read().await.keys) {
            return Ok(key);
        }
        // Two replicas may both make one at this moment: both are valid keys, and
        // each signs with its own until the next rotation.
        let pair = Ed25519KeyPair::generate();
        let kid = Uuid::now_v7().simple().to_string();
        let signs_until = operator_domain::time::later(now, self.lifetime);
        let accepted_until = operator_domain::time::later(signs_until, self.overlap);
        session_key::Entity::insert(session_key::ActiveModel {
            kid: Set(kid.clone()),
            secret_key: Set(URL_SAFE_NO_PAD.encode(pair.to_bytes())),
            public_key: Set(URL_SAFE_NO_PAD.encode(pair.public_key().to_bytes())),
            created_at: Set(now),
            signs_until: Set(signs_until),
            accepted_until: Set(accepted_until),
        })
        .exec(&self.db)
        .await
        .map_err(RepoError::from)?;
        tracing::info!(kid = %kid, until = %signs_until, "made a new session signing key");
        self.reload(true).await?;
        current(&self.keyset.read().await.keys)
            .ok_or_else(|| RepoError::Corrupt("the new session key vanished".to_owned()).into())
    }

    /// Re-reads the keys still accepted; without `force`, at most once per
    /// [`RELOAD_AT_MOST_EVERY`] (a flood of tokens naming unknown keys costs one read).
    async fn reload(&self, force: bool) -> Result<(), SessionTokenError> {
        if !force
            && self
                .keyset
                .read()
                .await
                .loaded_at
                .is_some_and(|at| at.elapsed() < RELOAD_AT_MOST_EVERY)
        {
            return Ok(());
        }
        let rows = session_key::Entity::find()
            .filter(session_key::Column::AcceptedUntil.gt(Utc::now()))
            .all(&self.db)
            .await
            .map_err(RepoError::from)?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let secret = URL_SAFE_NO_PAD
                .decode(&row.secret_key)
                .map_err(|error| RepoError::Corrupt(format!("session key {}: {error}", row.kid)))?;
            let pair = Ed25519KeyPair::from_bytes(&secret)
                .map_err(|error| RepoError::Corrupt(format!("session key {}: {error}", row.kid)))?
                .with_key_id(&row.kid);
            keys.push(Key {
                public: pair.public_key(),
                kid: row.kid,
                pair,
                signs_until: row.signs_until,
                accepted_until: row.accepted_until,
            });
        }
        let mut keyset = self.keyset.write().await;
        keyset.keys = keys;
        keyset.loaded_at = Some(tokio::time::Instant::now());
        Ok(())
    }
}
