//! `GET /v1/tasks/{id}/events` over HTTP: history, a live event, the end of the stream,
//! `Last-Event-ID`, and error codes.

use std::time::Duration;

use operator_testkit::{read_json, read_sse, read_sse_counting};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{TestApi, spawn_api};

async fn queued_task(api: &TestApi) -> String {
    let (status, task) = api
        .submit(&json!({"kind": "pdf", "input": {"url": "https://example.com"}}))
        .await;
    assert_eq!(status, 202, "{task}");
    task["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn a_stream_carries_history_and_live_events_then_closes() {
    let api = spawn_api().await;
    let id = queued_task(&api).await;
    let response = api
        .http
        .get(format!("{}/v1/tasks/{id}/events", api.base))
        .send()
        .await
        .expect("connect");
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .starts_with("text/event-stream")
    );
    let (seen, arrived) = tokio::sync::watch::channel(0);
    let reading = tokio::spawn(read_sse_counting(response, seen));
    history_arrived(arrived).await;
    let (status, _) = api.post(&format!("/v1/tasks/{id}/cancel")).await;
    assert_eq!(status, 200);
    let events = reading.await.expect("join");
    let kinds: Vec<_> = events
        .iter()
        .map(|event| event.event.clone().unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["created", "state"]);
    assert_eq!(events[1].data["data"]["state"], "cancelled");
    assert_eq!(events[0].data["task_id"], id.as_str());
    assert_eq!(
        events[0].id.as_deref(),
        Some(events[0].data["id"].to_string().as_str())
    );

    // After the end: everything, or what follows Last-Event-ID (header or query).
    let all = read_sse(
        api.http
            .get(format!("{}/v1/tasks/{id}/events", api.base))
            .send()
            .await
            .expect("connect"),
    )
    .await;
    assert_eq!(all, events);
    let first_id = events[0].id.clone().expect("id");
    let resumed = read_sse(
        api.http
            .get(format!("{}/v1/tasks/{id}/events", api.base))
            .header("Last-Event-ID", &first_id)
            .send()
            .await
            .expect("connect"),
    )
    .await;
    assert_eq!(resumed, events[1..]);
    let resumed = read_sse(
        api.http
            .get(format!(
                "{}/v1/tasks/{id}/events?last_event_id={first_id}",
                api.base
            ))
            .send()
            .await
            .expect("connect"),
    )
    .await;
    assert_eq!(resumed, events[1..]);
}

#[tokio::test]
async fn event_streams_refuse_bad_requests_with_codes() {
    let api = spawn_api().await;
    let id = queued_task(&api).await;
    let missing = "00000000-0000-7000-8000-000000000000";
    for (path, header, status, code) in [
        (
            format!("/v1/tasks/{missing}/events"),
            None,
            404,
            "task_not_found",
        ),
        (
            "/v1/tasks/nope/events".to_owned(),
            None,
            400,
            "invalid_parameter",
        ),
        (
            format!("/v1/tasks/{id}/events"),
            Some("yesterday"),
            400,
            "invalid_parameter",
        ),
        (
            format!("/v1/tasks/{id}/events?last_event_id=-4"),
            None,
            400,
            "invalid_parameter",
        ),
    ] {
        let mut request = api.http.get(format!("{}{path}", api.base));
        if let Some(header) = header {
            request = request.header("Last-Event-ID", header);
        }
        let (got_status, body) = read_json(request.send().await.expect("request")).await;
        assert_eq!(
            (got_status, body["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
}

/// Reads text messages until the server closes the socket; returns them and the close code.
/// Waits until a reader has seen the first event (`created`, the history): the stream
/// is live from then on.
async fn history_arrived(mut arrived: tokio::sync::watch::Receiver<usize>) {
    tokio::time::timeout(
        Duration::from_secs(10),
        arrived.wait_for(|count| *count >= 1),
    )
    .await
    .expect("the history in time")
    .expect("the reader runs");
}

/// Reads a socket's messages until it closes, telling `seen` how many have arrived.
async fn read_socket(
    mut socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    seen: tokio::sync::watch::Sender<usize>,
) -> (Vec<serde_json::Value>, Option<u16>) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut messages = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("a message or the end in time");
        match next {
            Some(Ok(Message::Text(text))) => {
                messages.push(serde_json::from_str(text.as_str()).expect("JSON"));
                seen.send_replace(messages.len());
            }
            Some(Ok(Message::Close(frame))) => {
                return (messages, frame.map(|frame| u16::from(frame.code)));
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (messages, None),
        }
    }
}

/// A WebSocket handshake request presenting the test's owner key.
fn with_key(
    api: &TestApi,
    url: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", api.key).parse().expect("header"),
    );
    request
}

#[tokio::test]
async fn a_websocket_carries_the_same_events_and_closes_normally() {
    let api = spawn_api().await;
    let id = queued_task(&api).await;
    let ws_base = api.base.replace("http://", "ws://");
    let (socket, _) =
        tokio_tungstenite::connect_async(with_key(&api, &format!("{ws_base}/v1/tasks/{id}/ws")))
            .await
            .expect("upgrade");
    let (seen, arrived) = tokio::sync::watch::channel(0);
    let reading = tokio::spawn(read_socket(socket, seen));
    history_arrived(arrived).await;
    let (status, _) = api.post(&format!("/v1/tasks/{id}/cancel")).await;
    assert_eq!(status, 200);
    let (messages, close) = reading.await.expect("join");
    let kinds: Vec<_> = messages
        .iter()
        .map(|message| message["kind"].clone())
        .collect();
    assert_eq!(kinds, [json!("created"), json!("state")]);
    assert_eq!(messages[1]["data"]["state"], "cancelled");
    assert_eq!(
        close,
        Some(1000),
        "a normal closure after the terminal event"
    );

    let first_id = &messages[0]["id"];
    let (socket, _) = tokio_tungstenite::connect_async(with_key(
        &api,
        &format!("{ws_base}/v1/tasks/{id}/ws?last_event_id={first_id}"),
    ))
    .await
    .expect("upgrade");
    let (resumed, _) = read_socket(socket, tokio::sync::watch::channel(0).0).await;
    assert_eq!(resumed, messages[1..]);

    let missing = "00000000-0000-7000-8000-000000000000";
    let refused = tokio_tungstenite::connect_async(with_key(
        &api,
        &format!("{ws_base}/v1/tasks/{missing}/ws"),
    ))
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 404)
        }
        other => panic!("an unknown task is refused before the upgrade: {other:?}"),
    }
}
