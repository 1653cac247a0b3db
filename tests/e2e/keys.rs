//! API keys across processes: a key revoked through one API replica is refused by
//! another within a second (Redis pub/sub carries the revocation; the replica had the
//! key cached). `operator serve` makes an owner key on its first start, keeps it under
//! the data directory with mode 0600, and makes no second one on the next start. The
//! API refuses a public address with authentication off.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use operator::{Application, Roles};
use operator_domain::auth::Role;
use operator_testkit::{
    ApiClient, RedisPrefix, TestDatabase, distributed_settings, embedded_settings, issue_key,
    read_json,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_replica_is_refused_by_another_within_a_second() {
    operator_store::install_crypto_provider();
    let database = TestDatabase::postgres().await;
    let redis = RedisPrefix::new();
    let mut settings = distributed_settings(&database, redis.prefix());
    // Only the revocation notice may make replica 1 forget the key in time.
    settings.auth.key_cache_ttl = Duration::from_secs(600);
    let stop = CancellationToken::new();
    let mut running = Vec::new();
    let mut urls = Vec::new();
    let mut owner_key = None;
    for _ in 0..2 {
        let application = Application::build(settings.clone(), Roles::API)
            .await
            .expect("build");
        if owner_key.is_none() {
            owner_key = Some(
                issue_key(
                    application.services().repo.connection(),
                    "default",
                    Role::Owner,
                )
                .await,
            );
        }
        urls.push(application.public_url().expect("serves the API"));
        running.push(tokio::spawn(
            application.run_until_stopped(stop.clone().cancelled_owned()),
        ));
    }
    let owner_key = owner_key.expect("a key");
    let second_replica = ApiClient::with_key(urls[1].clone(), &owner_key);
    let response = second_replica
        .http
        .post(format!("{}/v1/api-keys", urls[1]))
        .json(&json!({"name": "short-lived", "role": "member"}))
        .send()
        .await
        .expect("create");
    let (status, created) = read_json(response).await;
    assert_eq!(status, 201, "{created}");
    let member = ApiClient::with_key(urls[0].clone(), created["key"].as_str().expect("key"));
    // Replica 1 verifies and caches the key.
    for _ in 0..3 {
        assert_eq!(member.get("/v1/tasks").await.0, 200);
    }

    let response = second_replica
        .http
        .delete(format!(
            "{}/v1/api-keys/{}",
            urls[1],
            created["id"].as_str().expect("id")
        ))
        .send()
        .await
        .expect("revoke");
    assert_eq!(response.status().as_u16(), 200);
    let revoked_at = Instant::now();
    loop {
        let (status, _) = member.get("/v1/tasks").await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "replica 1 still accepts the key {:?} after it was revoked on replica 2",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = revoked_at.elapsed();
    eprintln!("revocation reached the other replica in {took:?}");
    stop.cancel();
    for role in running {
        role.await.expect("join").expect("role");
    }
}

/// The API of `operator serve` (it migrates, and makes the first key), without a
/// browser worker.
const SERVE_API: Roles = Roles {
    api: true,
    worker: false,
    scheduler: false,
    migrate: true,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_makes_one_owner_key_on_its_first_start_and_keeps_it_private() {
    operator_store::install_crypto_provider();
    let directory = tempfile::tempdir().expect("tempdir");
    let settings = embedded_settings(directory.path());
    let first = Application::build(settings.clone(), SERVE_API)
        .await
        .expect("build");
    let key = first
        .first_key()
        .expect("a key on the first start")
        .to_owned();
    let path = operator::owner_key_path(&settings);
    let stored = std::fs::read_to_string(&path).expect("owner.key");
    assert_eq!(stored.trim(), key);
    let mode = std::fs::metadata(&path)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner may read it");
    let url = first.public_url().expect("url");
    let stop = CancellationToken::new();
    let running = tokio::spawn(first.run_until_stopped(stop.clone().cancelled_owned()));
    let owner = ApiClient::with_key(url.clone(), &key);
    let (status, me) = owner.get("/v1/me").await;
    assert_eq!((status, me["role"].as_str()), (200, Some("owner")), "{me}");
    assert_eq!(ApiClient::new(url).get("/v1/tasks").await.0, 401);
    stop.cancel();
    running.await.expect("join").expect("serve");

    let second = Application::build(settings, SERVE_API)
        .await
        .expect("build again");
    assert!(
        second.first_key().is_none(),
        "no second key on the next start"
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("owner.key").trim(),
        key
    );
}

#[tokio::test]
async fn the_api_refuses_a_public_address_with_authentication_off() {
    operator_store::install_crypto_provider();
    let directory = tempfile::tempdir().expect("tempdir");
    let mut settings = embedded_settings(directory.path());
    settings.auth.enabled = false;
    settings.server.host = "0.0.0.0".into();
    let refused = Application::build(settings.clone(), SERVE_API).await;
    let message = format!("{:#}", refused.err().expect("refused"));
    assert!(message.contains("auth.enabled"), "{message}");
    settings.server.host = "127.0.0.1".into();
    assert!(Application::build(settings, SERVE_API).await.is_ok());
}
