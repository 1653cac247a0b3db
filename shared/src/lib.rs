//! What every OperatorNext role shares.
//!
//! - [`config`]: the typed settings tree and its layered loader (defaults → file → env).
//! - [`domain`]: ids, task kinds and validated inputs, the task state machine, records.
//! - [`error`]: stable machine-readable error codes.
//! - [`events`]: the live-event bus (in-process, Redis pub/sub) and task event streams.
//! - [`db`]: database connection, sea-orm entities and the task repository.
//! - [`queue`]: the dispatch queue trait with its Redis and embedded (database) backends.
//! - [`storage`]: artifact storage over object_store (local files, S3, memory).
//! - [`network`]: the policy deciding which addresses browsers may reach.
//! - [`telemetry`]: logging and OpenTelemetry trace export.
//! - [`webhooks`]: event types, signing secrets and Standard Webhooks signatures, the
//!   retry schedule, payloads.
//! - `testkit` (feature): isolated real services for tests.

pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod network;
pub mod queue;
pub mod storage;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod webhooks;

/// Installs the process-wide TLS crypto provider.
///
/// sqlx brings rustls with ring, object_store and reqwest bring aws-lc-rs; with two
/// providers compiled in, rustls refuses to pick one and TLS set-up panics. Call this
/// first thing in `main` (and in tests that open TLS connections). Idempotent.
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
