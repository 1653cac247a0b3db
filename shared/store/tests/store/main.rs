//! Integration tests of the shared crate against real PostgreSQL, Redis and an
//! S3-compatible server (`scripts/services.sh` starts them).

mod events;
mod helpers;
mod migrations;
mod outbox;
mod queue;
mod rate;
mod repository;
mod storage;
mod usage;
