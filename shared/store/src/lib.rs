//! OperatorNext's adapters to the outside state: everything that reads or writes the
//! database, Redis or object storage.
//!
//! - [`db`]: the connection, the sea-orm entities, the task repository (the only code
//!   that writes task rows) and the webhook repository (endpoints, keys, outbox).
//! - [`queue`]: the dispatch queue trait with its Redis and embedded (database)
//!   backends.
//! - [`events`]: the live-event bus (in-process, Redis pub/sub), which also carries
//!   key revocations.
//! - [`credentials`]: API key verification, cached and invalidated on revocation.
//! - [`task_stream`]: one task's event stream, from the table and the bus.
//! - [`limits`]: each tenant's limits (its own or the settings') and monthly quotas.
//! - [`models`]: tenants' own language-model settings, their API keys sealed at rest.
//! - [`rate`]: submission rate limits per tenant (GCRA, shared through Redis).
//! - [`sessions`]: session tokens (EdDSA JWTs) and their rotating, shared signing keys.
//! - [`signing`]: the shared keys that sign artifact links and stream tickets.
//! - [`storage`]: artifact storage over object_store (local files, S3, memory).
//! - [`submit`]: write, then dispatch (the [`submit::Submitter`] every caller uses).
//!
//! The types it stores are `operator_domain`'s; its settings are `operator_config`'s.

pub mod credentials;
pub mod db;
pub mod events;
pub mod limits;
pub mod models;
pub mod queue;
pub mod rate;
pub mod sessions;
pub mod signing;
pub mod storage;
pub mod submit;
pub mod task_stream;

/// Installs the process-wide TLS crypto provider.
///
/// sqlx brings rustls with ring, object_store and reqwest bring aws-lc-rs; with two
/// providers compiled in, rustls refuses to pick one and TLS set-up panics. Call this
/// first thing in `main` (and in tests that open TLS connections). Idempotent.
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
