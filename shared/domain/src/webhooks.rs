//! Webhooks as every role sees them: event types, signing secrets and the Standard
//! Webhooks signature, the retry schedule, and the payload a task's end produces.
//!
//! Signing follows the Standard Webhooks specification: `webhook-id`, `webhook-timestamp`
//! (Unix seconds) and `webhook-signature`, which is `v1,` followed by the base64
//! HMAC-SHA256 of `id.timestamp.body`, keyed with the base64-decoded part of the secret
//! after `whsec_`. During a rotation's overlap both the new and the previous secret sign,
//! and the header carries both signatures separated by a space, so a receiver holding
//! either secret accepts the message.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{TaskRecord, TaskState};

/// The event types a task's end produces; an endpoint's filter names some of them.
pub const EVENT_TYPES: [&str; 5] = [
    "task.succeeded",
    "task.failed",
    "task.cancelled",
    "task.timed_out",
    "task.dead",
];

/// The event type of a terminal state; `None` for a state that is not terminal.
pub fn event_type_for(state: TaskState) -> Option<&'static str> {
    match state {
        TaskState::Succeeded => Some("task.succeeded"),
        TaskState::Failed => Some("task.failed"),
        TaskState::Cancelled => Some("task.cancelled"),
        TaskState::TimedOut => Some("task.timed_out"),
        TaskState::Dead => Some("task.dead"),
        TaskState::Scheduled | TaskState::Queued | TaskState::Running => None,
    }
}

/// Whether an endpoint with this filter wants this event (an empty filter wants all).
pub fn filter_matches(filter: &[String], event_type: &str) -> bool {
    filter.is_empty() || filter.iter().any(|wanted| wanted == event_type)
}

const SECRET_PREFIX: &str = "whsec_";
/// 32 random bytes: as long as the HMAC-SHA256 block's security level needs.
const SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret is `whsec_` followed by base64 of 24 to 64 bytes")]
pub struct InvalidSecret;

/// A signing secret, `whsec_<base64>`. Kept in a `SecretString` so it never lands in a
/// log line or a `Debug` print by accident.
#[derive(Debug, Clone)]
pub struct SigningSecret(SecretString);

impl SigningSecret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rng().fill(&mut bytes[..]);
        Self(SecretString::from(format!(
            "{SECRET_PREFIX}{}",
            BASE64.encode(bytes)
        )))
    }

    pub fn parse(text: &str) -> Result<Self, InvalidSecret> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(InvalidSecret)?;
        let key = BASE64.decode(encoded).map_err(|_| InvalidSecret)?;
        if !(24..=64).contains(&key.len()) {
            return Err(InvalidSecret);
        }
        Ok(Self(SecretString::from(text.to_owned())))
    }

    /// The secret's text, for storing it and for showing it to its tenant once.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    fn key(&self) -> Vec<u8> {
        let encoded = self
            .0
            .expose_secret()
            .strip_prefix(SECRET_PREFIX)
            .unwrap_or_default();
        BASE64.decode(encoded).unwrap_or_default()
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// `v1,<base64 HMAC-SHA256 of id.timestamp.body>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let digest = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", BASE64.encode(digest))
    }

    /// Whether any `v1` signature in a `webhook-signature` header is this secret's
    /// (compared in constant time).
    pub fn verify(&self, header: &str, id: &str, timestamp: i64, body: &[u8]) -> bool {
        header.split(' ').any(|candidate| {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                return false;
            };
            let Ok(signature) = BASE64.decode(encoded) else {
                return false;
            };
            self.mac(id, timestamp, body)
                .verify_slice(&signature)
                .is_ok()
        })
    }
}

/// The secrets that sign one message: the current one, and the previous one while a
/// rotation's overlap lasts.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    pub current: SigningSecret,
    pub previous: Option<SigningSecret>,
}

impl SigningKeys {
    /// The `webhook-signature` header: one signature per secret, space-separated.
    pub fn signature_header(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut header = self.current.sign(id, timestamp, body);
        if let Some(previous) = &self.previous {
            header.push(' ');
            header.push_str(&previous.sign(id, timestamp, body));
        }
        header
    }
}

/// The delay before the next attempt after `attempts_made` attempts, or `None` when the
/// schedule is spent. Each delay is jittered by up to ±20% so that deliveries failing
/// together (an endpoint's outage) do not all come back at the same instant.
pub fn next_delay(schedule: &[Duration], attempts_made: u32) -> Option<Duration> {
    let index = usize::try_from(attempts_made.checked_sub(1)?).ok()?;
    let base = *schedule.get(index)?;
    let factor = rand::rng().random_range(0.8..=1.2);
    Some(base.mul_f64(factor))
}

/// What the outbox stores for a task's end: the event, the task's summary, its result
/// and its artifacts (without links; [`render_body`] adds them, from the public URL of
/// the deployment that sends it).
pub fn outbox_payload(
    event_type: &str,
    record: &TaskRecord,
    artifacts: Vec<Value>,
    at: DateTime<Utc>,
) -> Value {
    json!({
        "type": event_type,
        "timestamp": at,
        "data": {
            "task": {
                "id": record.id,
                "kind": record.kind,
                "state": record.state,
                "attempts": record.attempts,
                "max_attempts": record.max_attempts,
                "created_at": record.created_at,
                "started_at": record.started_at,
                "finished_at": record.finished_at,
                "error": record.error,
            },
            "result": record.result,
            "artifacts": artifacts,
        }
    })
}

/// The storage keys of a stored payload's artifacts, by artifact id (for presigning).
pub fn artifact_keys(payload: &Value) -> Vec<(String, String)> {
    payload
        .pointer("/data/artifacts")
        .and_then(Value::as_array)
        .map(|artifacts| {
            artifacts
                .iter()
                .filter_map(|artifact| {
                    Some((
                        artifact.get("id")?.as_str()?.to_owned(),
                        artifact.get("storage_key")?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How the links of a body are signed: the key, the task's tenant and the expiry
/// (Unix seconds).
pub struct LinkGrant<'a> {
    pub key: &'a crate::links::LinkKey,
    pub tenant: &'a crate::TenantId,
    pub expires: i64,
}

/// The body sent: the stored payload with each artifact's API link
/// (`{public_url}/v1/artifacts/{id}`) as `url`, the same link signed to work without
/// credentials until the grant expires as `signed_url`, and, when the store can
/// presign, a time-limited direct link as `download_url` (from `signed`, by artifact
/// id). The internal storage key is removed.
pub fn render_body(
    payload: &Value,
    public_url: &str,
    signed: &std::collections::HashMap<String, String>,
    grant: Option<&LinkGrant<'_>>,
) -> Vec<u8> {
    let mut payload = payload.clone();
    if let Some(artifacts) = payload
        .pointer_mut("/data/artifacts")
        .and_then(Value::as_array_mut)
    {
        for artifact in artifacts {
            let Some(object) = artifact.as_object_mut() else {
                continue;
            };
            object.remove("storage_key");
            let Some(id) = object.get("id").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let link = crate::links::artifact_url(public_url, &id);
            object.insert("url".to_owned(), Value::String(link));
            if let Some(grant) = grant {
                let link = crate::links::signed_artifact_url(
                    public_url,
                    grant.key,
                    grant.tenant,
                    &id,
                    grant.expires,
                );
                object.insert("signed_url".to_owned(), Value::String(link));
            }
            if let Some(download) = signed.get(&id) {
                object.insert("download_url".to_owned(), Value::String(download.clone()));
            }
        }
    }
    serde_json::to_vec(&payload).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example vector the Standard Webhooks libraries test against.
    #[test]
    fn signs_the_specification_example() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let signature = secret.sign(id, 1_614_265_330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(secret.verify(&signature, id, 1_614_265_330, body));
        assert!(!secret.verify(&signature, id, 1_614_265_331, body));
    }

    #[test]
    fn a_rotation_overlap_sends_both_signatures() {
        let keys = SigningKeys {
            current: SigningSecret::generate(),
            previous: Some(SigningSecret::generate()),
        };
        let header = keys.signature_header("msg_1", 1_700_000_000, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(keys.current.verify(&header, "msg_1", 1_700_000_000, b"{}"));
        let previous = keys.previous.as_ref().expect("previous");
        assert!(previous.verify(&header, "msg_1", 1_700_000_000, b"{}"));
        assert!(!SigningSecret::generate().verify(&header, "msg_1", 1_700_000_000, b"{}"));
    }

    #[test]
    fn secrets_are_checked() {
        let generated = SigningSecret::generate();
        assert!(SigningSecret::parse(generated.expose()).is_ok());
        assert!(SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningSecret::parse("whsec_!!!").is_err());
        assert!(SigningSecret::parse("whsec_AAAA").is_err());
    }

    #[test]
    fn the_schedule_ends_and_jitters() {
        let schedule = [Duration::from_secs(10), Duration::from_secs(100)];
        assert_eq!(next_delay(&schedule, 0), None);
        let first = next_delay(&schedule, 1).expect("first retry");
        assert!(first >= Duration::from_secs(8) && first <= Duration::from_secs(12));
        assert!(next_delay(&schedule, 2).expect("second") >= Duration::from_secs(80));
        assert_eq!(next_delay(&schedule, 3), None);
    }

    #[test]
    fn the_body_links_artifacts() {
        let payload = json!({"type": "task.succeeded", "data": {"artifacts": [{"id": "a1", "storage_key": "t/k/a1.png"}]}});
        assert_eq!(
            artifact_keys(&payload),
            vec![("a1".to_owned(), "t/k/a1.png".to_owned())]
        );
        let signed =
            std::collections::HashMap::from([("a1".to_owned(), "https://s3/signed".to_owned())]);
        let key = crate::links::LinkKey {
            kid: "lk1".to_owned(),
            secret: vec![7; 32],
        };
        let tenant = crate::TenantId::default_tenant();
        let grant = LinkGrant {
            key: &key,
            tenant: &tenant,
            expires: 4_000_000_000,
        };
        let body: Value = serde_json::from_slice(&render_body(
            &payload,
            "https://ops.example/",
            &signed,
            Some(&grant),
        ))
        .expect("json");
        let artifact = &body["data"]["artifacts"][0];
        assert_eq!(artifact["url"], "https://ops.example/v1/artifacts/a1");
        assert!(
            artifact["signed_url"]
                .as_str()
                .is_some_and(|url| url.starts_with(
                    "https://ops.example/v1/artifacts/a1?tenant=default&exp=4000000000&sig=lk1."
                )),
            "{artifact}"
        );
        assert_eq!(artifact["download_url"], "https://s3/signed");
        assert!(
            artifact.get("storage_key").is_none(),
            "internal keys stay inside"
        );
    }
}
