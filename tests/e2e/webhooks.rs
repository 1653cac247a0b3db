//! Webhooks end to end: a real task in real Chromium ends, and a receiver on loopback
//! gets a signed delivery for its registered endpoint and for the task's own
//! `webhook_url`; the deliveries API shows them, and a redelivery keeps the webhook-id.

use std::time::Duration;

use operator_domain::webhooks::SigningSecret;
use operator_testkit::{ReceivedRequest, WebhookReceiver};
use serde_json::{Value, json};

use crate::TASK_DEADLINE;
use crate::helpers::{PageServer, TestApp};

fn verify(request: &ReceivedRequest, secret: &str) -> bool {
    let secret = SigningSecret::parse(secret).expect("a whsec_ secret");
    let timestamp: i64 = request
        .header("webhook-timestamp")
        .parse()
        .expect("timestamp");
    secret.verify(
        request.header("webhook-signature"),
        request.header("webhook-id"),
        timestamp,
        &request.body,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_is_delivered_signed_to_its_webhooks_embedded() {
    a_finished_task_is_delivered_signed_to_its_webhooks(TestApp::embedded().await, false).await;
}

/// On S3, payloads also carry a presigned direct `download_url` (s3s-fs checks it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_is_delivered_signed_to_its_webhooks_distributed() {
    a_finished_task_is_delivered_signed_to_its_webhooks(TestApp::distributed().await, true).await;
}

async fn a_finished_task_is_delivered_signed_to_its_webhooks(app: TestApp, presigned: bool) {
    let pages = PageServer::start().await;
    let receiver = WebhookReceiver::start(Vec::new()).await;
    let own_url = receiver.url.replace("/hook", "/own");

    let response = app
        .http
        .post(format!("{}/v1/webhooks", app.base))
        .json(&json!({"url": receiver.url, "event_types": ["task.succeeded"]}))
        .send()
        .await
        .expect("create the endpoint");
    let (status, endpoint) = operator_testkit::read_json(response).await;
    assert_eq!(status, 201, "{endpoint}");
    let endpoint_secret = endpoint["secret"].as_str().expect("secret").to_owned();
    let endpoint_id = endpoint["id"].as_str().expect("id").to_owned();
    let (_, tenant_key) = app.get("/v1/webhook-signing-key").await;
    let tenant_secret = tenant_key["secret"].as_str().expect("secret").to_owned();

    let (status, task) = app
        .submit(&json!({"kind": "screenshot", "input": {"url": pages.url("hooked"), "viewport": {"width": 320, "height": 240}}, "webhook_url": own_url}))
        .await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().expect("id").to_owned();
    let done = app
        .wait_for(&id, &["succeeded", "failed", "dead"], TASK_DEADLINE)
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");

    let requests = receiver.wait_for_requests(2, Duration::from_secs(30)).await;
    assert_eq!(requests.len(), 2);
    for request in &requests {
        let secret = if request.path == "/own" {
            &tenant_secret
        } else {
            &endpoint_secret
        };
        assert!(verify(request, secret), "signed for {}", request.path);
        let body: Value = serde_json::from_slice(&request.body).expect("JSON");
        assert_eq!(body["type"], "task.succeeded");
        assert_eq!(body["data"]["task"]["id"], id.as_str());
        assert_eq!(body["data"]["result"]["page"]["title"], "page hooked");
        let link = body["data"]["artifacts"][0]["url"]
            .as_str()
            .expect("an artifact link");
        assert!(link.starts_with(&app.base), "{link}");
        let (content_type, bytes) = app.download(link).await;
        assert_eq!(content_type, "image/png");
        assert!(!bytes.is_empty());
        let artifact = &body["data"]["artifacts"][0];
        assert!(artifact.get("storage_key").is_none(), "{artifact}");
        // The receiver holds no key: the signed link is how it fetches the file.
        let signed = artifact["signed_url"].as_str().expect("a signed link");
        let response = reqwest::get(signed)
            .await
            .expect("download the signed link");
        assert_eq!(response.status().as_u16(), 200, "{signed}");
        assert_eq!(
            response.bytes().await.expect("bytes").to_vec(),
            bytes,
            "the signed link serves the same file without credentials"
        );
        match artifact["download_url"].as_str() {
            Some(direct) => {
                assert!(presigned, "no presigned link without S3: {direct}");
                assert!(direct.contains("X-Amz-Signature"), "{direct}");
                let (_, direct_bytes) = app.download(direct).await;
                assert_eq!(
                    direct_bytes, bytes,
                    "the presigned link serves the same file"
                );
            }
            None => assert!(!presigned, "S3 artifacts get a presigned link: {artifact}"),
        }
    }
    let mut paths: Vec<&str> = requests
        .iter()
        .map(|request| request.path.as_str())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/hook", "/own"]);

    // The receiver has answered; the dispatcher records the attempt right after.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let deliveries = loop {
        let (status, deliveries) = app
            .get(&format!("/v1/webhooks/{endpoint_id}/deliveries"))
            .await;
        assert_eq!(status, 200);
        if deliveries["items"][0]["state"] != "pending" {
            break deliveries;
        }
        assert!(tokio::time::Instant::now() < deadline, "{deliveries}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let delivery = deliveries["items"][0].clone();
    assert_eq!(
        deliveries["items"].as_array().map(Vec::len),
        Some(1),
        "{deliveries}"
    );
    assert_eq!(delivery["state"], "delivered", "{delivery}");
    assert_eq!(delivery["attempt_log"][0]["status_code"], 200);
    let delivery_id = delivery["id"].as_str().expect("id").to_owned();
    let first = requests
        .iter()
        .find(|request| request.path == "/hook")
        .expect("the endpoint's request");
    assert_eq!(first.header("webhook-id"), delivery_id);

    let (status, redelivered) = app
        .post(&format!(
            "/v1/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver"
        ))
        .await;
    assert_eq!(status, 202, "{redelivered}");
    let requests = receiver.wait_for_requests(3, Duration::from_secs(30)).await;
    assert_eq!(
        requests[2].header("webhook-id"),
        delivery_id,
        "the same webhook-id"
    );
    assert!(verify(&requests[2], &endpoint_secret));

    let (status, all) = app.get(&format!("/v1/tasks/{id}/webhook-deliveries")).await;
    assert_eq!(status, 200);
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2), "{all}");
    app.shutdown().await;
}
