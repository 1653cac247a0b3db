//! Live task events: `GET /v1/tasks/{id}/events` (Server-Sent Events) and
//! `GET /v1/tasks/{id}/ws` (WebSocket, one JSON text message per event; resume with the
//! `last_event_id` query parameter, since browsers cannot set headers on a WebSocket).
//!
//! The stream sends what is stored (after `Last-Event-ID`, or the `last_event_id` query
//! parameter, when given), then each new event as it is committed, and closes after
//! the terminal state event. Each SSE event carries the stored event's id (so a
//! reconnecting client resumes without gaps or duplicates), its kind as the event type
//! (`created`, `state`, `cancel_requested`, `artifact`, `progress`, `log`…) and the
//! event as JSON. These are plain poem handlers rather than OpenAPI operations:
//! poem-openapi's event-stream payload cannot set event ids.

use futures::{SinkExt, StreamExt};
use operator_domain::TaskEvent;
use operator_domain::TaskId;
use operator_domain::error::ErrorCode;
use operator_store::task_stream::task_events;
use poem::web::sse::{Event, SSE};
use poem::web::websocket::{CloseCode, Message, WebSocket};
use poem::web::{Data, Path};
use poem::{IntoResponse, Request, Response, handler};
use serde_json::json;
use tracing::warn;

use crate::access::Caller;
use crate::error::ApiError;
use crate::state::SharedState;

/// Checks the request and the task; returns the task and where to resume.
pub async fn open_stream(
    state: &SharedState,
    caller: &Caller,
    request: &Request,
    id: &str,
) -> Result<(TaskId, Option<i64>), ApiError> {
    let task_id = TaskId::parse(id).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidParameter,
            format!("id: {id:?} is not a task id"),
        )
    })?;
    let from_header = request
        .headers()
        .get("last-event-id")
        .map(|value| value.to_str().unwrap_or("?").to_owned());
    let from_query = request.uri().query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "last_event_id")
            .map(|(_, value)| value.into_owned())
    });
    let after =
        match from_header.or(from_query).filter(|value| !value.is_empty()) {
            None => None,
            Some(value) => Some(value.parse::<i64>().ok().filter(|id| *id >= 0).ok_or_else(
                || {
                    ApiError::new(
                        ErrorCode::InvalidParameter,
                        format!("Last-Event-ID: {value:?} is not an event id this API sent"),
                    )
                },
            )?),
        };
    if state.repo.get(&caller.tenant, task_id).await?.is_none() {
        return Err(ApiError::new(
            ErrorCode::TaskNotFound,
            format!("no task {task_id}"),
        ));
    }
    Ok((task_id, after))
}

/// The JSON form of an event, the same on SSE and WebSocket.
pub fn event_json(event: &TaskEvent) -> String {
    json!({
        "id": event.id,
        "task_id": event.task_id,
        "kind": event.kind,
        "data": event.data,
        "created_at": event.created_at,
    })
    .to_string()
}

/// `GET /v1/tasks/{id}/events`.
#[handler]
pub async fn sse(
    request: &Request,
    caller: Caller,
    Path(id): Path<String>,
    Data(state): Data<&SharedState>,
) -> poem::Result<Response> {
    let (task_id, after) = open_stream(state, &caller, request, &id).await?;
    let events = task_events(
        state.repo.clone(),
        task_id,
        after,
        state.settings.events.resync_interval,
    )
    .map(|item| match item {
        Ok(event) => Event::message(event_json(&event))
            .event_type(event.kind.clone())
            .id(event.id.to_string()),
        Err(error) => {
            warn!(error = %error, "reading task events failed; closing the stream");
            Event::message(
                json!({"code": "unavailable", "message": "the event store is unavailable; reconnect with Last-Event-ID"})
                    .to_string(),
            )
            .event_type("error")
        }
    });
    Ok(SSE::new(events)
        .keep_alive(state.settings.events.keep_alive)
        .into_response())
}

/// `GET /v1/tasks/{id}/ws`: the same events as the SSE stream, one text message each;
/// the server closes the socket (normal closure) after the terminal event.
#[handler]
pub async fn websocket(
    request: &Request,
    caller: Caller,
    Path(id): Path<String>,
    Data(state): Data<&SharedState>,
    socket: WebSocket,
) -> poem::Result<Response> {
    let (task_id, after) = open_stream(state, &caller, request, &id).await?;
    let repo = state.repo.clone();
    let resync = state.settings.events.resync_interval;
    Ok(socket
        .on_upgrade(move |mut socket| async move {
            let events = task_events(repo, task_id, after, resync);
            futures::pin_mut!(events);
            let reason = loop {
                tokio::select! {
                    next = events.next() => match next {
                        Some(Ok(event)) => {
                            if socket.send(Message::text(event_json(&event))).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(error)) => {
                            warn!(error = %error, "reading task events failed; closing the socket");
                            let _ = socket
                                .send(Message::close_with(CloseCode::Again, "the event store is unavailable; reconnect with last_event_id"))
                                .await;
                            return;
                        }
                        None => break "the task has ended",
                    },
                    incoming = socket.next() => match incoming {
                        // The client went away.
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                        // Clients have nothing to say; pings are answered by the codec.
                        Some(Ok(_)) => {}
                    },
                }
            };
            let _ = socket
                .send(Message::close_with(CloseCode::Normal, reason))
                .await;
        })
        .into_response())
}
