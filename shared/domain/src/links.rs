//! The addresses of a task and an artifact in the API, for `Location` headers, views
//! and webhook payloads: formatted here and nowhere else. Also the two grants that
//! stand in for credentials where a client cannot send them:
//!
//! - a signed artifact link, `/v1/artifacts/{id}?tenant=…&exp=…&sig=…`, which task
//!   responses and webhook payloads carry, so a file can be fetched (by a browser, a
//!   webhook receiver) without a key until `exp`;
//! - a stream ticket, `?ticket=…` on `/v1/tasks/{id}/events` and `/ws`, since browsers
//!   cannot set headers on an `EventSource` or a WebSocket: short-lived, one task.
//!
//! Both are HMAC-SHA256 over what they grant (the kind, the tenant, the id, the expiry),
//! keyed by a [`LinkKey`] every replica shares (the store keeps them); `sig` names the
//! key (`kid.mac`), so a key can be replaced while links signed with the old one live.

use std::fmt::Display;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::{TaskId, TenantId};

/// `{public_url}/v1/tasks/{id}`.
pub fn task_url(public_url: &str, id: impl Display) -> String {
    format!("{}/v1/tasks/{id}", public_url.trim_end_matches('/'))
}

/// `{public_url}/v1/artifacts/{id}`: the download.
pub fn artifact_url(public_url: &str, id: impl Display) -> String {
    format!("{}/v1/artifacts/{id}", public_url.trim_end_matches('/'))
}

/// A key that signs links and tickets.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkKey {
    pub kid: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "LinkKey({})", self.kid)
    }
}

/// What a grant allows: one artifact's download, or one task's event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantScope {
    Artifact,
    TaskEvents,
}

impl GrantScope {
    fn label(self) -> &'static str {
        match self {
            Self::Artifact => "artifact",
            Self::TaskEvents => "task-events",
        }
    }
}

fn mac(key: &LinkKey, scope: GrantScope, tenant: &str, id: &str, expires: i64) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key.secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for part in [scope.label(), tenant, id, &expires.to_string()] {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    mac
}

/// `kid.mac` for a grant.
pub fn grant_signature(
    key: &LinkKey,
    scope: GrantScope,
    tenant: &TenantId,
    id: impl Display,
    expires: i64,
) -> String {
    let digest = mac(key, scope, tenant.as_str(), &id.to_string(), expires)
        .finalize()
        .into_bytes();
    format!("{}.{}", key.kid, URL_SAFE_NO_PAD.encode(digest))
}

/// Whether `signature` (`kid.mac`) grants `scope` on `id` for `tenant` until
/// `expires`, which must not have passed at `now` (Unix seconds). Compared in
/// constant time.
pub fn grant_holds(
    keys: &[LinkKey],
    signature: &str,
    scope: GrantScope,
    tenant: &str,
    id: &str,
    expires: i64,
    now: i64,
) -> bool {
    if expires <= now {
        return false;
    }
    let Some((kid, encoded)) = signature.split_once('.') else {
        return false;
    };
    let Ok(presented) = URL_SAFE_NO_PAD.decode(encoded) else {
        return false;
    };
    keys.iter().filter(|key| key.kid == kid).any(|key| {
        mac(key, scope, tenant, id, expires)
            .verify_slice(&presented)
            .is_ok()
    })
}

/// `{public_url}/v1/artifacts/{id}?tenant=…&exp=…&sig=…`: the download without
/// credentials until `expires` (Unix seconds).
pub fn signed_artifact_url(
    public_url: &str,
    key: &LinkKey,
    tenant: &TenantId,
    id: impl Display,
    expires: i64,
) -> String {
    let id = id.to_string();
    let signature = grant_signature(key, GrantScope::Artifact, tenant, &id, expires);
    format!(
        "{}?tenant={tenant}&exp={expires}&sig={signature}",
        artifact_url(public_url, &id)
    )
}

/// A stream ticket: `tenant.task.exp.kid.mac` (none of the parts holds a dot).
pub fn stream_ticket(key: &LinkKey, tenant: &TenantId, task: TaskId, expires: i64) -> String {
    let signature = grant_signature(key, GrantScope::TaskEvents, tenant, task, expires);
    format!("{tenant}.{task}.{expires}.{signature}")
}

/// The tenant and task a ticket grants, if it is genuine and current.
pub fn verify_stream_ticket(
    keys: &[LinkKey],
    ticket: &str,
    now: i64,
) -> Option<(TenantId, TaskId)> {
    let mut parts = ticket.splitn(4, '.');
    let (tenant, task, expires, signature) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let expires: i64 = expires.parse().ok()?;
    grant_holds(
        keys,
        signature,
        GrantScope::TaskEvents,
        tenant,
        task,
        expires,
        now,
    )
    .then(|| Some((TenantId::parse(tenant).ok()?, TaskId::parse(task).ok()?)))
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str) -> LinkKey {
        LinkKey {
            kid: kid.to_owned(),
            secret: kid.as_bytes().repeat(4),
        }
    }

    #[test]
    fn a_signed_link_holds_for_its_artifact_tenant_and_time_only() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let keys = [key("k1"), key("k2")];
        let signature = grant_signature(&keys[1], GrantScope::Artifact, &tenant, "a1", 1000);
        let holds = |signature: &str, scope, tenant: &str, id: &str, expires, now| {
            grant_holds(&keys, signature, scope, tenant, id, expires, now)
        };
        assert!(holds(
            &signature,
            GrantScope::Artifact,
            "acme",
            "a1",
            1000,
            999
        ));
        assert!(
            !holds(&signature, GrantScope::Artifact, "acme", "a1", 1000, 1000),
            "expired"
        );
        assert!(
            !holds(&signature, GrantScope::Artifact, "acme", "a2", 1000, 999),
            "another artifact"
        );
        assert!(
            !holds(&signature, GrantScope::Artifact, "other", "a1", 1000, 999),
            "another tenant"
        );
        assert!(
            !holds(&signature, GrantScope::Artifact, "acme", "a1", 2000, 999),
            "a later expiry"
        );
        assert!(
            !holds(&signature, GrantScope::TaskEvents, "acme", "a1", 1000, 999),
            "another scope"
        );
        assert!(
            !grant_holds(
                &keys[..1],
                &signature,
                GrantScope::Artifact,
                "acme",
                "a1",
                1000,
                999
            ),
            "an unknown key"
        );
        let url = signed_artifact_url("http://api", &keys[0], &tenant, "a1", 1000);
        assert!(
            url.starts_with("http://api/v1/artifacts/a1?tenant=acme&exp=1000&sig=k1."),
            "{url}"
        );
    }

    #[test]
    fn a_ticket_names_its_task_and_expires() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let task = TaskId::parse("01a21111-bfb7-751a-b5fb-d3e89c604455").expect("task");
        let keys = [key("k1")];
        let ticket = stream_ticket(&keys[0], &tenant, task, 100);
        assert_eq!(
            verify_stream_ticket(&keys, &ticket, 99),
            Some((tenant, task))
        );
        assert_eq!(verify_stream_ticket(&keys, &ticket, 100), None);
        let forged = ticket.replacen("acme", "other", 1);
        assert_eq!(verify_stream_ticket(&keys, &forged, 99), None);
        assert_eq!(verify_stream_ticket(&keys, "nonsense", 99), None);
    }

    #[test]
    fn a_trailing_slash_on_the_public_url_is_not_doubled() {
        assert_eq!(
            task_url("http://api:8080/", "t1"),
            "http://api:8080/v1/tasks/t1"
        );
        assert_eq!(
            artifact_url("https://ops.example", "a1"),
            "https://ops.example/v1/artifacts/a1"
        );
    }
}
