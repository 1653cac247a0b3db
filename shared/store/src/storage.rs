//! Artifact storage over object_store: `file://` (the embedded default), `s3://` (any
//! S3-compatible server) and `memory://` (tests of other parts).
//!
//! Keys are `{tenant}/{task}/{name}`, under an optional prefix taken from the URL's path
//! (`s3://bucket/prod` stores under `prod/`), so tenants never share a key space and
//! several deployments can share a bucket.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use operator_config::Settings;
use operator_domain::{TaskId, TenantId};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage configuration: {0}")]
    Config(String),
    #[error("object not found: {0}")]
    NotFound(String),
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Local,
    S3,
    Memory,
}

/// A stored object as it streams back.
pub struct StoredObject {
    pub size: u64,
    pub stream: BoxStream<'static, Result<Bytes, object_store::Error>>,
}

/// What an upload produced: where it went, how big it is, and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReceipt {
    pub key: String,
    pub size_bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    prefix: Option<String>,
    kind: StoreKind,
    /// The S3 store again, as a URL signer (presigned GETs for webhook payloads).
    signer: Option<Arc<AmazonS3>>,
}

impl ArtifactStore {
    pub fn from_settings(settings: &Settings) -> Result<Self, StorageError> {
        let url = settings.storage_url();
        if let Some(rest) = url.strip_prefix("file://") {
            let directory = std::path::PathBuf::from(rest);
            std::fs::create_dir_all(&directory).map_err(|error| {
                StorageError::Config(format!("cannot create {}: {error}", directory.display()))
            })?;
            let store = LocalFileSystem::new_with_prefix(&directory)?;
            return Ok(Self {
                store: Arc::new(store),
                prefix: None,
                kind: StoreKind::Local,
                signer: None,
            });
        }
        if url.starts_with("memory://") {
            return Ok(Self {
                store: Arc::new(InMemory::new()),
                prefix: None,
                kind: StoreKind::Memory,
                signer: None,
            });
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(StorageError::Config(format!(
                "unsupported storage url {url:?}"
            )));
        };
        let (bucket, prefix) = match rest.split_once('/') {
            Some((bucket, prefix)) => (bucket, prefix.trim_matches('/')),
            None => (rest, ""),
        };
        let storage = &settings.storage;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&storage.region)
            .with_virtual_hosted_style_request(!storage.path_style)
            .with_allow_http(storage.allow_http);
        if let Some(endpoint) = &storage.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(key), Some(secret)) = (&storage.access_key_id, &storage.secret_access_key) {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret.expose_secret());
        }
        let s3 = Arc::new(builder.build()?);
        Ok(Self {
            store: Arc::clone(&s3) as Arc<dyn ObjectStore>,
            prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
            kind: StoreKind::S3,
            signer: Some(s3),
        })
    }

    /// A presigned GET URL for `key`, valid for `expires_in` (S3 only: `None` for local
    /// and in-memory stores). Signing is local computation, no request is made.
    pub async fn signed_get_url(
        &self,
        key: &str,
        expires_in: std::time::Duration,
    ) -> Result<Option<String>, StorageError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(Method::GET, &self.path(key), expires_in)
            .await?;
        Ok(Some(url.to_string()))
    }

    /// The key of a task's artifact.
    pub fn key_for(tenant: &TenantId, task: TaskId, name: &str) -> String {
        format!("{tenant}/{task}/{name}")
    }

    fn path(&self, key: &str) -> Path {
        match &self.prefix {
            Some(prefix) => Path::from(format!("{prefix}/{key}")),
            None => Path::from(key),
        }
    }

    /// Stores `bytes` under `key`; returns its size and SHA-256.
    pub async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<PutReceipt, StorageError> {
        let sha256 = sha256_hex(&bytes);
        let size_bytes = bytes.len() as u64;
        let mut options = PutOptions::default();
        // Local files and memory keep no attributes (the database has the content type);
        // on S3 it makes direct and pre-signed downloads carry the right type.
        if self.kind == StoreKind::S3 {
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, content_type.to_owned().into());
            options.attributes = attributes;
        }
        self.store
            .put_opts(&self.path(key), PutPayload::from_bytes(bytes), options)
            .await?;
        Ok(PutReceipt {
            key: key.to_owned(),
            size_bytes,
            sha256,
        })
    }

    pub async fn get(&self, key: &str) -> Result<StoredObject, StorageError> {
        match self.store.get(&self.path(key)).await {
            Ok(result) => Ok(StoredObject {
                size: result.meta.size,
                stream: result.into_stream(),
            }),
            Err(object_store::Error::NotFound { .. }) => {
                Err(StorageError::NotFound(key.to_owned()))
            }
            Err(error) => Err(error.into()),
        }
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        match self.store.get(&self.path(key)).await {
            Ok(result) => Ok(result.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => {
                Err(StorageError::NotFound(key.to_owned()))
            }
            Err(error) => Err(error.into()),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Checks the store answers (readiness): a HEAD of a key that need not exist.
    pub async fn check(&self) -> Result<(), StorageError> {
        match self.store.head(&self.path(".readiness-probe")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// SHA-256 of `bytes`, as lowercase hex: artifact checksums, request fingerprints.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_by_tenant_and_task() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let task = TaskId::new();
        assert_eq!(
            ArtifactStore::key_for(&tenant, task, "screenshot.png"),
            format!("acme/{task}/screenshot.png")
        );
    }

    #[tokio::test]
    async fn local_files_round_trip() {
        let directory = tempfile::tempdir().expect("tempdir");
        let mut settings = Settings::default();
        settings.storage.url = Some(format!("file://{}", directory.path().display()));
        let store = ArtifactStore::from_settings(&settings).expect("store");
        let receipt = store
            .put("t/1/a.txt", Bytes::from_static(b"hello"), "text/plain")
            .await
            .expect("put");
        assert_eq!(receipt.size_bytes, 5);
        assert_eq!(
            receipt.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            store.get_bytes("t/1/a.txt").await.expect("get"),
            Bytes::from_static(b"hello")
        );
        assert!(directory.path().join("t/1/a.txt").exists());
        assert!(matches!(
            store.get("t/1/missing").await,
            Err(StorageError::NotFound(_))
        ));
        store.check().await.expect("readiness");
    }
}
