//! Artifact storage against the S3-compatible server (which checks signatures).

use bytes::Bytes;
use operator_store::storage::{ArtifactStore, StorageError};
use operator_testkit::{TestDatabase, distributed_settings, unique_name};
use secrecy::SecretString;

#[tokio::test]
async fn objects_round_trip_through_s3_under_the_configured_prefix() {
    let database = TestDatabase::sqlite().await;
    let settings = distributed_settings(&database, &unique_name("storage"));
    let store = ArtifactStore::from_settings(&settings).expect("store");
    store
        .check()
        .await
        .expect("the S3 server answers (run scripts/services.sh)");
    let body = Bytes::from(vec![7_u8; 300_000]);
    let receipt = store
        .put("default/task/1/screenshot.png", body.clone(), "image/png")
        .await
        .expect("put");
    assert_eq!(receipt.size_bytes, 300_000);
    assert_eq!(
        store
            .get_bytes("default/task/1/screenshot.png")
            .await
            .expect("get"),
        body
    );
    let object = store
        .get("default/task/1/screenshot.png")
        .await
        .expect("get");
    assert_eq!(object.size, 300_000);
    store
        .delete("default/task/1/screenshot.png")
        .await
        .expect("delete");
    assert!(matches!(
        store.get("default/task/1/screenshot.png").await,
        Err(StorageError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_server() {
    let database = TestDatabase::sqlite().await;
    let mut settings = distributed_settings(&database, &unique_name("storage"));
    settings.storage.secret_access_key = Some(SecretString::from("not-the-secret".to_owned()));
    let store = ArtifactStore::from_settings(&settings).expect("store");
    let checked = store
        .check()
        .await
        .expect_err("readiness sees the credentials fail");
    let put = store
        .put("x/y/z", Bytes::from_static(b"x"), "text/plain")
        .await
        .expect_err("the server refuses the write");
    // Refused for the signature, by the server: not unreachable, not some other fault.
    for error in [checked.to_string(), put.to_string()] {
        assert!(
            error.contains("403") || error.contains("SignatureDoesNotMatch"),
            "refused as a bad signature: {error}"
        );
    }
    // The control: the same settings with the right secret work.
    let mut right = settings.clone();
    right.storage.secret_access_key = distributed_settings(&database, "control")
        .storage
        .secret_access_key;
    ArtifactStore::from_settings(&right)
        .expect("store")
        .check()
        .await
        .expect("the right secret is accepted");
}
