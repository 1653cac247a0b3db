//! The webhook dispatcher against real databases and a real receiver on loopback:
//! signatures the Standard Webhooks reference library accepts (also with two secrets
//! during a rotation), retries with the same `webhook-id` and valid signatures, a receiver that comes back,
//! a dispatcher that dies holding a lease, `410 Gone`, and refused destinations.

mod helpers;

use std::time::Duration;

use helpers::{Fixture, dispatcher, fixture, loopback_policy, quick_settings};
use operator_domain::TaskState;
use operator_domain::error::ErrorCode;
use operator_domain::network::NetworkPolicy;
use operator_domain::webhooks::SigningSecret;
use operator_store::db::DeliveryState;
use operator_testkit::{ReceivedRequest, TestDatabase, WebhookReceiver, free_port};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

fn assert_signed(request: &ReceivedRequest, secret: &SigningSecret) {
    let timestamp: i64 = request
        .header("webhook-timestamp")
        .parse()
        .expect("a numeric webhook-timestamp");
    assert!(
        secret.verify(
            request.header("webhook-signature"),
            request.header("webhook-id"),
            timestamp,
            &request.body,
        ),
        "the signature verifies with the secret: {}",
        request.header("webhook-signature")
    );
}

/// What the Standard Webhooks reference library (PyPI `standardwebhooks`, run by
/// `python3`; `scripts/services.sh python` installs it) says of `request` with `secret`:
/// `Ok` when it verifies, the library's reason otherwise.
fn reference_verdict(request: &ReceivedRequest, secret: &SigningSecret) -> Result<(), String> {
    use std::io::Write as _;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/webhooks/standard_verify.py"
    );
    let headers: serde_json::Map<String, Value> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .into_iter()
            .map(|name| (name.to_owned(), Value::from(request.header(name))))
            .collect();
    let body_hex: String = request
        .body
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let input = serde_json::json!({"headers": headers, "body_hex": body_hex});
    let mut command = std::process::Command::new("python3");
    if let Ok(path) = std::env::var("TEST_PYTHONPATH") {
        command.env("PYTHONPATH", path);
    }
    let mut child = command
        .args([script, secret.expose()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write the request");
    let output = child.wait_with_output().expect("wait");
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    match output.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(said),
        _ => panic!(
            "the reference verifier did not run (scripts/services.sh python installs it): {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Our signatures, checked by an implementation that is not ours: the Standard
/// Webhooks reference library. During a secret rotation a request carries two
/// signatures, and it verifies with either secret; a wrong secret is refused.
async fn the_reference_library_verifies_our_signatures(fixture: Fixture) {
    let receiver = WebhookReceiver::start(Vec::new()).await;
    let endpoint = fixture.endpoint(&receiver.url).await;
    let rotated = fixture
        .webhooks
        .rotate_endpoint_secret(&fixture.tenant, endpoint.id, Duration::from_secs(3600))
        .await
        .expect("rotate")
        .expect("the endpoint");
    fixture.finished_task(None).await;
    let dispatcher = dispatcher(&fixture, loopback_policy(), quick_settings());
    fixture
        .dispatch_until(&dispatcher, DEADLINE, async || {
            !receiver.requests().is_empty()
        })
        .await;
    let request = &receiver.requests()[0];
    assert_eq!(
        request.header("webhook-signature").split(' ').count(),
        2,
        "signed with both secrets during the overlap: {}",
        request.header("webhook-signature")
    );
    for secret in [&endpoint.secret, &rotated.secret] {
        assert_eq!(reference_verdict(request, secret), Ok(()));
    }
    let verdict = reference_verdict(request, &SigningSecret::generate());
    assert!(
        verdict
            .as_ref()
            .is_err_and(|why| why.contains("No matching signature")),
        "a wrong secret is refused: {verdict:?}"
    );
}

#[tokio::test]
async fn the_reference_library_verifies_our_signatures_sqlite() {
    the_reference_library_verifies_our_signatures(fixture(TestDatabase::sqlite().await).await)
        .await;
}

async fn retries_until_the_receiver_accepts(fixture: Fixture) {
    let receiver = WebhookReceiver::start(vec![500, 503, 500]).await;
    let endpoint = fixture.endpoint(&receiver.url).await;
    let task = fixture.finished_task(None).await;
    let dispatcher = dispatcher(&fixture, loopback_policy(), quick_settings());
    fixture
        .dispatch_until(&dispatcher, DEADLINE, async || {
            receiver.requests().len() >= 4
        })
        .await;
    // Let the last attempt be recorded.
    let deliveries = loop {
        let deliveries = fixture.task_deliveries(&task).await;
        if deliveries[0].state != DeliveryState::Pending {
            break deliveries;
        }
        dispatcher.run_once().await.expect("dispatch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let requests = receiver.requests();
    assert_eq!(requests.len(), 4, "three failures, then the success");
    let webhook_id = requests[0].header("webhook-id").to_owned();
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.header("webhook-id"),
            webhook_id,
            "stable across retries"
        );
        assert_eq!(request.header("content-type"), "application/json");
        assert_signed(request, &endpoint.secret);
    }
    let body: Value = serde_json::from_slice(&requests[3].body).expect("a JSON body");
    assert_eq!(body["type"], "task.succeeded");
    assert_eq!(body["data"]["task"]["id"], task.id.to_string());
    assert_eq!(body["data"]["task"]["state"], "succeeded");
    assert_eq!(body["data"]["result"]["page"]["title"], "done");

    assert_eq!(deliveries.len(), 1);
    let delivery = &deliveries[0];
    assert_eq!(
        delivery.id.to_string(),
        webhook_id,
        "the delivery id is the webhook-id"
    );
    assert_eq!(delivery.state, DeliveryState::Delivered);
    assert_eq!(delivery.attempts, 4);
    let attempts = fixture
        .webhooks
        .delivery_attempts(&fixture.tenant, delivery.id)
        .await
        .expect("attempts");
    let statuses: Vec<Option<u16>> = attempts.iter().map(|attempt| attempt.status_code).collect();
    assert_eq!(statuses, [Some(500), Some(503), Some(500), Some(200)]);
    assert_eq!(
        attempts[0].error.as_ref().map(|error| error.code),
        Some(ErrorCode::WebhookRejected)
    );
    assert!(attempts[3].error.is_none());
    assert_eq!(
        attempts[0].response_excerpt.as_deref(),
        Some("answered 500")
    );

    let stored = fixture
        .tasks
        .get_any(task.id)
        .await
        .expect("get")
        .expect("task");
    assert_eq!(
        stored.state,
        TaskState::Succeeded,
        "webhook failures never touch the task"
    );
    let endpoint = fixture
        .webhooks
        .endpoint(&fixture.tenant, endpoint.id)
        .await
        .expect("get")
        .expect("endpoint");
    assert!(endpoint.enabled);
    assert_eq!(
        endpoint.failing_since, None,
        "a success clears the failure streak"
    );
}

#[tokio::test]
async fn retries_until_the_receiver_accepts_sqlite() {
    retries_until_the_receiver_accepts(fixture(TestDatabase::sqlite().await).await).await;
}

#[tokio::test]
async fn retries_until_the_receiver_accepts_postgres() {
    retries_until_the_receiver_accepts(fixture(TestDatabase::postgres().await).await).await;
}

/// The receiver is down when the task ends and comes up later: the delivery (to the
/// task's own `webhook_url`, signed with the tenant's key) still arrives.
async fn a_receiver_that_comes_back_gets_the_delivery(fixture: Fixture) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let task = fixture.finished_task(Some(&url)).await;
    let mut settings = quick_settings();
    settings.retry_schedule = vec![Duration::from_millis(200).into(); 7];
    let dispatcher = dispatcher(&fixture, loopback_policy(), settings);
    fixture
        .dispatch_until(&dispatcher, DEADLINE, async || {
            fixture.task_deliveries(&task).await[0].attempts >= 1
        })
        .await;
    let first = fixture.task_deliveries(&task).await.remove(0);
    assert_eq!(
        first.state,
        DeliveryState::Pending,
        "a refused connection is retried"
    );

    let receiver = WebhookReceiver::start_on(port, Vec::new()).await;
    fixture
        .dispatch_until(&dispatcher, DEADLINE, async || {
            fixture.task_deliveries(&task).await[0].state == DeliveryState::Delivered
        })
        .await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let key = fixture
        .webhooks
        .signing_key(&fixture.tenant)
        .await
        .expect("the tenant's signing key");
    assert_signed(&requests[0], &key.secret);
    let attempts = fixture
        .webhooks
        .delivery_attempts(&fixture.tenant, first.id)
        .await
        .expect("attempts");
    assert!(attempts.len() >= 2);
    assert_eq!(
        attempts[0].error.as_ref().map(|error| error.code),
        Some(ErrorCode::WebhookConnectionFailed)
    );
    assert_eq!(
        attempts.last().and_then(|attempt| attempt.status_code),
        Some(200)
    );
}

#[tokio::test]
async fn a_receiver_that_comes_back_gets_the_delivery_sqlite() {
    a_receiver_that_comes_back_gets_the_delivery(fixture(TestDatabase::sqlite().await).await).await;
}

#[tokio::test]
async fn a_receiver_that_comes_back_gets_the_delivery_postgres() {
    a_receiver_that_comes_back_gets_the_delivery(fixture(TestDatabase::postgres().await).await)
        .await;
}

/// A dispatcher claims the delivery and dies before sending it (its lease is all that
/// is left of it); another dispatcher leaves the row alone while the lease holds and
/// sends it once the lease has expired.
async fn a_dead_dispatchers_delivery_is_sent_by_another(fixture: Fixture) {
    let receiver = WebhookReceiver::start(Vec::new()).await;
    let task = fixture.finished_task(Some(&receiver.url)).await;
    let lease = Duration::from_secs(2);
    let claimed = fixture.webhooks.claim(10, lease).await.expect("claim");
    assert_eq!(claimed.len(), 1, "the first dispatcher holds the delivery");
    drop(claimed); // killed: it never sends nor records anything

    let survivor = dispatcher(&fixture, loopback_policy(), quick_settings());
    assert_eq!(
        survivor.run_once().await.expect("dispatch"),
        0,
        "a held lease keeps other dispatchers off"
    );
    assert!(receiver.requests().is_empty());
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert_eq!(survivor.run_once().await.expect("dispatch"), 1);
    let requests = receiver.wait_for_requests(1, DEADLINE).await;
    assert_eq!(requests.len(), 1);
    let delivery = fixture.task_deliveries(&task).await.remove(0);
    assert_eq!(delivery.state, DeliveryState::Delivered);
    assert_eq!(requests[0].header("webhook-id"), delivery.id.to_string());
}

#[tokio::test]
async fn a_dead_dispatchers_delivery_is_sent_by_another_sqlite() {
    a_dead_dispatchers_delivery_is_sent_by_another(fixture(TestDatabase::sqlite().await).await)
        .await;
}

#[tokio::test]
async fn a_dead_dispatchers_delivery_is_sent_by_another_postgres() {
    a_dead_dispatchers_delivery_is_sent_by_another(fixture(TestDatabase::postgres().await).await)
        .await;
}

/// A dispatcher is killed while its request is in flight (the receiver got it but the
/// answer never came back); once its lease expires another dispatcher sends the same
/// delivery again, with the same webhook-id: at least once.
async fn a_dispatcher_killed_mid_request_is_replaced(fixture: Fixture) {
    let receiver = WebhookReceiver::start(vec![0]).await;
    let task = fixture.finished_task(Some(&receiver.url)).await;
    let settings = operator_config::WebhookSettings {
        request_timeout: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(3),
        ..quick_settings()
    };
    let doomed = std::sync::Arc::new(dispatcher(&fixture, loopback_policy(), settings.clone()));
    let sending = {
        let doomed = std::sync::Arc::clone(&doomed);
        tokio::spawn(async move { doomed.run_once().await })
    };
    receiver.wait_for_requests(1, DEADLINE).await;
    sending.abort(); // killed mid-request: nothing recorded, the lease is left behind
    let _ = sending.await;
    let delivery = fixture.task_deliveries(&task).await.remove(0);
    assert_eq!(delivery.state, DeliveryState::Pending);
    assert_eq!(delivery.attempts, 0, "the killed attempt left no record");

    let survivor = dispatcher(&fixture, loopback_policy(), settings);
    fixture
        .dispatch_until(&survivor, DEADLINE, async || {
            fixture.task_deliveries(&task).await[0].state == DeliveryState::Delivered
        })
        .await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "sent again: at least once");
    assert_eq!(
        requests[0].header("webhook-id"),
        requests[1].header("webhook-id")
    );
    assert_eq!(requests[1].header("webhook-id"), delivery.id.to_string());
}

#[tokio::test]
async fn a_dispatcher_killed_mid_request_is_replaced_sqlite() {
    a_dispatcher_killed_mid_request_is_replaced(fixture(TestDatabase::sqlite().await).await).await;
}

#[tokio::test]
async fn a_dispatcher_killed_mid_request_is_replaced_postgres() {
    a_dispatcher_killed_mid_request_is_replaced(fixture(TestDatabase::postgres().await).await)
        .await;
}

/// Two dispatchers claiming at the same time never get the same row.
#[tokio::test]
async fn concurrent_claims_do_not_overlap_postgres() {
    let fixture = fixture(TestDatabase::postgres().await).await;
    for _ in 0..20 {
        fixture
            .finished_task(Some("https://receiver.example/hook"))
            .await;
    }
    let lease = Duration::from_secs(30);
    let (first, second) = tokio::join!(
        fixture.webhooks.claim(15, lease),
        fixture.webhooks.claim(15, lease)
    );
    let mut ids: Vec<_> = first
        .expect("claim")
        .into_iter()
        .chain(second.expect("claim"))
        .map(|claimed| claimed.delivery.id)
        .collect();
    let claimed = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), claimed, "no delivery claimed twice");
    assert_eq!(claimed, 20, "between them they claimed every delivery");
}

async fn gone_disables_the_endpoint(fixture: Fixture) {
    let receiver = WebhookReceiver::start(vec![410]).await;
    let endpoint = fixture.endpoint(&receiver.url).await;
    let task = fixture.finished_task(None).await;
    let dispatcher = dispatcher(&fixture, loopback_policy(), quick_settings());
    fixture
        .dispatch_until(&dispatcher, DEADLINE, async || {
            fixture.task_deliveries(&task).await[0].state != DeliveryState::Pending
        })
        .await;
    let delivery = fixture.task_deliveries(&task).await.remove(0);
    assert_eq!(delivery.state, DeliveryState::Failed);
    assert_eq!(delivery.attempts, 1, "410 is not retried");
    let endpoint = fixture
        .webhooks
        .endpoint(&fixture.tenant, endpoint.id)
        .await
        .expect("get")
        .expect("endpoint");
    assert!(!endpoint.enabled);
    assert!(
        endpoint
            .disabled_reason
            .as_deref()
            .unwrap_or_default()
            .contains("410"),
        "{:?}",
        endpoint.disabled_reason
    );
    // The next task's end writes no delivery for the disabled endpoint.
    let next = fixture.finished_task(None).await;
    assert!(fixture.task_deliveries(&next).await.is_empty());
}

#[tokio::test]
async fn gone_disables_the_endpoint_sqlite() {
    gone_disables_the_endpoint(fixture(TestDatabase::sqlite().await).await).await;
}

/// An endpoint whose deliveries keep failing past `disable_after` is disabled, and the
/// reason says why.
#[tokio::test]
async fn an_endpoint_failing_for_too_long_is_disabled_sqlite() {
    let fixture = fixture(TestDatabase::sqlite().await).await;
    let receiver = WebhookReceiver::start(vec![500; 20]).await;
    let endpoint = fixture.endpoint(&receiver.url).await;
    let task = fixture.finished_task(None).await;
    let mut settings = quick_settings();
    settings.disable_after = Duration::ZERO;
    let dispatcher = dispatcher(&fixture, loopback_policy(), settings);
    fixture
        .dispatch_until(&dispatcher, DEADLINE, async || {
            !fixture
                .webhooks
                .endpoint(&fixture.tenant, endpoint.id)
                .await
                .expect("get")
                .expect("endpoint")
                .enabled
        })
        .await;
    let endpoint = fixture
        .webhooks
        .endpoint(&fixture.tenant, endpoint.id)
        .await
        .expect("get")
        .expect("endpoint");
    let reason = endpoint.disabled_reason.unwrap_or_default();
    assert!(reason.contains("failed since"), "{reason}");
    assert!(reason.contains("500"), "the last error is named: {reason}");
    // Its pending delivery is not sent any more.
    fixture
        .dispatch_until(&dispatcher, DEADLINE, async || {
            fixture.task_deliveries(&task).await[0].state == DeliveryState::Failed
        })
        .await;
}

/// Under the default policy, loopback and cloud-metadata destinations are refused, and
/// the refusal is recorded as a final error: nothing is sent, nothing retried.
async fn refused_destinations_are_recorded_and_not_retried(fixture: Fixture) {
    let receiver = WebhookReceiver::start(Vec::new()).await;
    let loopback = fixture.finished_task(Some(&receiver.url)).await;
    let metadata = fixture
        .finished_task(Some("http://169.254.169.254/latest/meta-data/"))
        .await;
    let default_policy = NetworkPolicy::parse(&[], false).expect("policy");
    let dispatcher = dispatcher(&fixture, default_policy, quick_settings());
    fixture
        .dispatch_until(&dispatcher, DEADLINE, async || {
            fixture.task_deliveries(&loopback).await[0].state != DeliveryState::Pending
                && fixture.task_deliveries(&metadata).await[0].state != DeliveryState::Pending
        })
        .await;
    for task in [&loopback, &metadata] {
        let delivery = fixture.task_deliveries(task).await.remove(0);
        assert_eq!(delivery.state, DeliveryState::Failed);
        assert_eq!(delivery.attempts, 1, "a refusal is final");
        let attempts = fixture
            .webhooks
            .delivery_attempts(&fixture.tenant, delivery.id)
            .await
            .expect("attempts");
        let error = attempts[0].error.clone().expect("an error");
        assert_eq!(error.code, ErrorCode::UrlNotAllowed, "{}", error.message);
        assert_eq!(attempts[0].status_code, None);
    }
    assert!(
        receiver.requests().is_empty(),
        "nothing reached the loopback receiver"
    );
}

#[tokio::test]
async fn refused_destinations_are_recorded_and_not_retried_sqlite() {
    refused_destinations_are_recorded_and_not_retried(fixture(TestDatabase::sqlite().await).await)
        .await;
}

#[tokio::test]
async fn refused_destinations_are_recorded_and_not_retried_postgres() {
    refused_destinations_are_recorded_and_not_retried(
        fixture(TestDatabase::postgres().await).await,
    )
    .await;
}
