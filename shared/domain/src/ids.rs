//! Identifier newtypes: they parse once at the edge, so the rest of the code never
//! handles a raw string that might not be an id.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A task's id: a UUIDv7, so ids sort by creation time (cursor pagination relies on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(Uuid);

impl TaskId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(text: &str) -> Result<Self, uuid::Error> {
        Uuid::parse_str(text).map(Self)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for TaskId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

/// An artifact's id (UUIDv7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ArtifactId(Uuid);

impl ArtifactId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for ArtifactId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for ArtifactId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl std::fmt::Display for ArtifactId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

/// Defines a short-slug identifier (1-64 characters of a-z, 0-9, '-' or '_'), safe to
/// embed in storage keys and Redis keys, with its parse error.
macro_rules! slug_id {
    ($(#[$meta:meta])* $name:ident, $error:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $error(String);

        impl std::fmt::Display for $error {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    formatter,
                    "{} must be 1-64 characters of a-z, 0-9, '-' or '_', got {:?}",
                    $what, self.0
                )
            }
        }

        impl std::error::Error for $error {}

        impl $name {
            pub fn parse(text: &str) -> Result<Self, $error> {
                if is_slug(text) {
                    Ok(Self(text.to_owned()))
                } else {
                    Err($error(text.to_owned()))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $error;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(&self.0)
            }
        }
    };
}

fn is_slug(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'_'
        })
}

slug_id!(
    /// A tenant's id.
    TenantId,
    InvalidTenantId,
    "tenant id"
);

/// The tenant every request belongs to until authentication assigns real ones.
pub const DEFAULT_TENANT: &str = "default";

impl TenantId {
    pub fn default_tenant() -> Self {
        Self(DEFAULT_TENANT.to_owned())
    }
}

slug_id!(
    /// A named queue. Tasks go to `default` unless they name another; each worker
    /// serves the queues its settings list (`worker.queues`).
    QueueName,
    InvalidQueueName,
    "queue name"
);

/// The queue that always exists, and where tasks go unless they name another.
pub const DEFAULT_QUEUE: &str = "default";

impl QueueName {
    pub fn default_queue() -> Self {
        Self(DEFAULT_QUEUE.to_owned())
    }

    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_QUEUE
    }
}

impl Default for QueueName {
    fn default() -> Self {
        Self::default_queue()
    }
}

/// The secret a worker holds while it owns a task; every write it makes is guarded by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(Uuid);

impl LeaseToken {
    /// A fresh random token. There is deliberately no `Default`: a token made up where
    /// one was expected would silently match nothing.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn parse(text: &str) -> Result<Self, uuid::Error> {
        Uuid::parse_str(text).map(Self)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for LeaseToken {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl std::fmt::Display for LeaseToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_sort_by_creation() {
        let first = TaskId::new();
        let second = TaskId::new();
        assert!(first < second);
    }

    #[test]
    fn tenant_ids_and_queue_names_are_slugs() {
        assert!(TenantId::parse("acme-prod_1").is_ok());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse("Acme").is_err());
        assert!(TenantId::parse("a/b").is_err());
        assert!(TenantId::parse(&"x".repeat(65)).is_err());
        assert!(QueueName::parse("pdf-high_2").is_ok());
        assert!(QueueName::parse("PDF").is_err());
        assert!(
            QueueName::parse("a:b").is_err(),
            "':' would split Redis keys"
        );
        assert!(QueueName::default().is_default());
    }
}
