//! Verifying API keys: the check every authenticated request makes, cached in the
//! process and invalidated everywhere when a key is revoked.
//!
//! - A presented key is first checked for shape and checksum (no look-up); then its
//!   row is read by look-up id, once per [`KeyVerifier`] and `auth.key_cache_ttl`, and
//!   the SHA-256 of its secret compared in constant time.
//! - A revocation evicts the key here at once and, through the event bus, on every
//!   other replica ([`crate::events::Revocation`]); after a Redis reconnect the whole
//!   cache is dropped. Without Redis, the cache keeps rows for at most one second
//!   unless the database is SQLite (one process), so a revocation made elsewhere still
//!   takes effect within a second.
//! - `last_used_at` is written coalesced: at most once per key per
//!   `auth.last_used_interval`, by a background flush, never on the request's path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tracing::warn;
use uuid::Uuid;

use crate::db::{ApiKey, RepoError, TenantRepository, now};
use crate::events::{EventBus, EventBusError, Revocation};
use operator_domain::auth::{
    ApiKeyToken, MalformedKey, digest_from_hex, hashes_match, lookup_of_prefix,
};

/// Why a key is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Malformed(#[from] MalformedKey),
    #[error("unknown API key")]
    Unknown,
    #[error("the API key was revoked")]
    Revoked,
    #[error("the API key has expired")]
    Expired,
    #[error(transparent)]
    Unavailable(#[from] RepoError),
}

/// Most keys a cache holds; past it, it starts again empty (a flood of made-up
/// look-up ids cannot grow it without bound).
const CACHE_CAPACITY: usize = 10_000;
/// How often pending `last_used_at` writes are flushed.
const TOUCH_FLUSH: Duration = Duration::from_secs(1);

/// Timing of the verifier.
#[derive(Debug, Clone, Copy)]
pub struct VerifierTiming {
    /// How long a verified row is trusted before it is read again.
    pub cache_ttl: Duration,
    /// At most one `last_used_at` write per key per this interval.
    pub last_used_interval: Duration,
}

pub struct KeyVerifier {
    repo: TenantRepository,
    bus: EventBus,
    cache_ttl: Duration,
    last_used_interval: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    touches: Mutex<HashMap<Uuid, DateTime<Utc>>>,
}

impl std::fmt::Debug for KeyVerifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KeyVerifier")
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

/// A key row as verification needs it: the key and the SHA-256 of its secret.
struct Known {
    key: ApiKey,
    digest: [u8; 32],
}

struct Cached {
    /// `None`: no key has this look-up id.
    row: Option<Arc<Known>>,
    fetched: Instant,
    touched: Option<Instant>,
}

impl KeyVerifier {
    /// Starts the verifier and its two background loops (revocations, touches), which
    /// end when the verifier is dropped. `single_process`: the database is SQLite,
    /// so no other process can revoke behind this one's back.
    pub fn start(
        repo: TenantRepository,
        bus: EventBus,
        timing: VerifierTiming,
        single_process: bool,
    ) -> Arc<Self> {
        let cache_ttl = if bus.reaches_other_processes() || single_process {
            timing.cache_ttl
        } else {
            timing.cache_ttl.min(Duration::from_secs(1))
        };
        let verifier = Arc::new(Self {
            repo,
            cache_ttl,
            last_used_interval: timing.last_used_interval,
            cache: Mutex::new(HashMap::new()),
            touches: Mutex::new(HashMap::new()),
            bus: bus.clone(),
        });
        let mut revocations = bus.subscribe_revocations();
        let weak = Arc::downgrade(&verifier);
        tokio::spawn(async move {
            loop {
                let revocation = match revocations.recv().await {
                    Ok(revocation) => revocation,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Revocation::All,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(verifier) = weak.upgrade() else {
                    return;
                };
                verifier.forget(&revocation);
            }
        });
        let weak = Arc::downgrade(&verifier);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TOUCH_FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(verifier) = weak.upgrade() else {
                    return;
                };
                verifier.flush_touches().await;
            }
        });
        verifier
    }

    /// The key a request presents, if it is well-formed, known, current and not revoked.
    pub async fn verify(&self, presented: &str) -> Result<ApiKey, Refusal> {
        let token = ApiKeyToken::parse(presented)?;
        let row = match self.cached(token.lookup()) {
            Some(row) => row,
            None => {
                let stored = self.repo.key_by_lookup(token.lookup()).await?;
                let row = match stored {
                    Some(stored) => Some(Arc::new(Known {
                        digest: digest_from_hex(&stored.secret_hash).ok_or_else(|| {
                            RepoError::Corrupt(format!("api key {}: secret hash", stored.key.id))
                        })?,
                        key: stored.key,
                    })),
                    None => None,
                };
                self.remember(token.lookup(), row.clone());
                row
            }
        };
        let Some(known) = row else {
            return Err(Refusal::Unknown);
        };
        if !hashes_match(&token.secret_digest(), &known.digest) {
            return Err(Refusal::Unknown);
        }
        let key = &known.key;
        if key.revoked_at.is_some() {
            return Err(Refusal::Revoked);
        }
        if key.expires_at.is_some_and(|expires| expires <= Utc::now()) {
            return Err(Refusal::Expired);
        }
        self.note_use(token.lookup(), key.id);
        Ok(key.clone())
    }

    /// After a key was revoked in the database: forget it here and on every replica.
    pub async fn revoked(&self, key: &ApiKey) -> Result<(), EventBusError> {
        let lookup = lookup_of_prefix(&key.prefix);
        self.forget(&Revocation::Key(lookup.to_owned()));
        self.bus.publish_revocation(lookup).await
    }

    fn cached(&self, lookup: &str) -> Option<Option<Arc<Known>>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = cache.get(lookup)?;
        (cached.fetched.elapsed() < self.cache_ttl).then(|| cached.row.clone())
    }

    fn remember(&self, lookup: &str, row: Option<Arc<Known>>) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        let touched = cache.get(lookup).and_then(|cached| cached.touched);
        cache.insert(
            lookup.to_owned(),
            Cached {
                row,
                fetched: Instant::now(),
                touched,
            },
        );
    }

    fn forget(&self, revocation: &Revocation) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match revocation {
            Revocation::Key(lookup) => {
                cache.remove(lookup);
            }
            Revocation::All => cache.clear(),
        }
    }

    fn note_use(&self, lookup: &str, id: Uuid) {
        let due = {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            match cache.get_mut(lookup) {
                Some(cached)
                    if cached
                        .touched
                        .is_none_or(|touched| touched.elapsed() >= self.last_used_interval) =>
                {
                    cached.touched = Some(Instant::now());
                    true
                }
                _ => false,
            }
        };
        if due {
            self.touches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, now());
        }
    }

    async fn flush_touches(&self) {
        let pending: Vec<(Uuid, DateTime<Utc>)> = self
            .touches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        if pending.is_empty() {
            return;
        }
        if let Err(error) = self.repo.touch_keys(&pending).await {
            warn!(error = %error, keys = pending.len(), "recording when keys were last used failed");
        }
    }
}
