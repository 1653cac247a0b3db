//! The network policy inside the browser: every request a page makes is paused by
//! Chromium (CDP `Fetch.requestPaused`), checked here, then continued or failed.
//!
//! The runner checks a task's URL before the browser opens it; that alone would let a
//! page reach a refused address through a redirect, an `<img>`, a `fetch()` or an
//! iframe. Request interception closes those paths: Chromium pauses each request, and
//! each hop of a redirect chain, before it leaves the browser. The host is resolved
//! (once per task: resolutions are cached for the task's life) and every address it
//! resolves to is checked against the policy. A refused request fails with
//! `BlockedByClient`; when it was the page's own document (a navigation, or a redirect
//! of one), the task fails with a final `url_not_allowed`.
//!
//! What interception does not see is left to the egress proxy ([`crate::egress`]), the
//! backstop every connection of the browser goes through: WebSocket and WebRTC
//! connections (CDP does not pause them), windows opened by a user gesture (a `click`
//! step; the popup blocker stops the others), service workers' own requests, and a DNS
//! answer that changes between this check and the connection (the proxy connects to the
//! address it checked). This guard stays in front: it is what turns a refused document
//! into the task's `url_not_allowed`, applies the task's blocked resource types and URL
//! patterns, and lists the page's refused requests in the task's result. When the proxy
//! refuses a document this guard let through (its name resolved elsewhere the second
//! time), [`RequestGuard::document_refusal`] reports that too, from the proxy's
//! [`RefusalLog`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::network::{NetworkPolicy, Resolution, ResolveError};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};
use url::{Host, Url};

use crate::cdp::{Event, FailureLog, Page, PendingCall, Subscription};
use crate::egress::RefusalLog;
use crate::resolve::resolve_checked;

/// How many refused requests a task remembers for its result; a page that keeps
/// retrying a refused address must not grow the result without bound.
const MAX_RECORDED_REFUSALS: usize = 50;

/// A request the guard refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub url: String,
    pub resource_type: String,
    pub reason: String,
}

/// The verdict on one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// The policy refuses it.
    Refuse(CodedError),
    /// The host does not resolve; the request fails as Chromium's own lookup would.
    Unresolvable(String),
}

/// Checks a task's requests against the network policy. One per task (its DNS cache
/// and its refusals belong to that task).
pub struct RequestGuard {
    policy: NetworkPolicy,
    /// The page's main frame: its id is the page target's id.
    main_frame_id: String,
    /// DNS name and port → the verdict on it. A std mutex: never held across an await.
    resolved: Mutex<HashMap<(String, u16), Verdict>>,
    refusals: Mutex<Vec<Refusal>>,
    refused_total: Mutex<usize>,
    /// Set when the page's own document was refused: the task fails with this.
    document_refusal: Mutex<Option<CodedError>>,
    /// Resource types the task asked to block (CDP names: `Image`, `Font`, ...).
    blocked_types: Vec<&'static str>,
    /// URL patterns (`*` wildcards) the task asked to block.
    blocked_patterns: Vec<String>,
    /// The egress proxy's refusals, when the browser uses one.
    egress: Option<Arc<RefusalLog>>,
    /// An agent task's `allowed_domains`: hosts outside them are refused, narrower than
    /// the policy (empty: no narrowing).
    allowed_domains: Vec<String>,
    /// The last request for the page's own document that this guard let through: its
    /// host and port, and the egress proxy's latest refusal number then. A refusal of
    /// that host and port numbered after it is a refusal of the document.
    document_target: Mutex<Option<DocumentTarget>>,
}

struct DocumentTarget {
    host: String,
    port: u16,
    refusals_before: u64,
}

impl RequestGuard {
    pub fn new(policy: NetworkPolicy, main_frame_id: impl Into<String>) -> Self {
        Self {
            policy,
            main_frame_id: main_frame_id.into(),
            resolved: Mutex::default(),
            refusals: Mutex::default(),
            refused_total: Mutex::new(0),
            document_refusal: Mutex::new(None),
            blocked_types: Vec::new(),
            blocked_patterns: Vec::new(),
            egress: None,
            allowed_domains: Vec::new(),
            document_target: Mutex::new(None),
        }
    }

    /// Also treats the egress proxy's refusal of the page's own document as the
    /// guard's: the task fails with `url_not_allowed`, not with the network error
    /// Chromium reports (or the proxy's 403 page it shows).
    pub fn with_egress(mut self, refusals: Option<Arc<RefusalLog>>) -> Self {
        self.egress = refusals;
        self
    }

    /// Also fails requests of these resource types and URLs matching these patterns
    /// (the task's own choice, to save time; not policy refusals).
    pub fn blocking(mut self, types: Vec<&'static str>, patterns: Vec<String>) -> Self {
        self.blocked_types = types;
        self.blocked_patterns = patterns;
        self
    }

    /// Also refuses every host outside `domains` (an agent task's `allowed_domains`).
    pub fn confined_to(mut self, domains: Vec<String>) -> Self {
        self.allowed_domains = domains;
        self
    }

    fn blocked_by_task(&self, resource_type: &str, url: &str) -> bool {
        self.blocked_types.contains(&resource_type)
            || self
                .blocked_patterns
                .iter()
                .any(|pattern| wildcard_match(pattern, url))
    }

    /// Why the page's own document was refused, if it was: by this guard, or by the
    /// egress proxy after this guard let it through (its name resolved elsewhere).
    pub fn document_refusal(&self) -> Option<CodedError> {
        if let Some(refusal) = self
            .document_refusal
            .lock()
            .ok()
            .and_then(|refusal| refusal.clone())
        {
            return Some(refusal);
        }
        let egress = self.egress.as_ref()?;
        let refused = {
            let target = self.document_target.lock().ok()?;
            let target = target.as_ref()?;
            egress.refused_since(&target.host, target.port, target.refusals_before)?
        };
        if let Ok(mut slot) = self.document_refusal.lock()
            && slot.is_none()
        {
            *slot = Some(refused.clone());
        }
        Some(refused)
    }

    /// Remembers a request for the page's own document that is about to leave.
    fn remember_document(&self, url: &str) {
        let Some(egress) = &self.egress else {
            return;
        };
        // Read before the request is continued: a refusal of it comes later.
        let refusals_before = egress.latest();
        let target = Url::parse(url).ok().and_then(|url| {
            Some(DocumentTarget {
                host: url.host_str()?.to_owned(),
                port: url.port_or_known_default()?,
                refusals_before,
            })
        });
        if let Ok(mut slot) = self.document_target.lock() {
            *slot = target;
        }
    }

    /// The refused requests (the first few) and how many there were in all.
    pub fn refusals(&self) -> (Vec<Refusal>, usize) {
        let list = self
            .refusals
            .lock()
            .map(|list| list.clone())
            .unwrap_or_default();
        let total = self.refused_total.lock().map(|total| *total).unwrap_or(0);
        (list, total)
    }

    async fn decide(&self, paused: &RequestPaused) -> Decision {
        let is_main_document =
            paused.resource_type == "Document" && paused.frame_id == self.main_frame_id;
        let url = &paused.request.url;
        if !is_main_document && self.blocked_by_task(&paused.resource_type, url) {
            return Decision::Fail("BlockedByClient");
        }
        match self.check(url).await {
            Verdict::Allow => {
                if is_main_document {
                    self.remember_document(url);
                }
                Decision::Continue
            }
            Verdict::Unresolvable(message) => {
                info!(url = %url, error = %message, "request to an unresolvable host");
                Decision::Fail("NameNotResolved")
            }
            Verdict::Refuse(error) => {
                warn!(url = %url, document = is_main_document, reason = %error.message, "request refused by the network policy");
                self.record(
                    Refusal {
                        url: url.clone(),
                        resource_type: paused.resource_type.clone(),
                        reason: error.message.clone(),
                    },
                    is_main_document.then_some(error),
                );
                Decision::Fail("BlockedByClient")
            }
        }
    }

    fn record(&self, refusal: Refusal, document_error: Option<CodedError>) {
        if let Ok(mut total) = self.refused_total.lock() {
            *total += 1;
        }
        if let Ok(mut list) = self.refusals.lock()
            && list.len() < MAX_RECORDED_REFUSALS
        {
            list.push(refusal);
        }
        if let Some(error) = document_error
            && let Ok(mut slot) = self.document_refusal.lock()
            && slot.is_none()
        {
            *slot = Some(error);
        }
    }

    /// The verdict on a URL. A DNS name is resolved (once per task) through
    /// [`crate::resolve`], under the same policy rules as the egress proxy's.
    pub async fn check(&self, text: &str) -> Verdict {
        let url = match Url::parse(text) {
            Ok(url) => url,
            Err(error) => {
                return Verdict::Refuse(refused(format!("{text:?} is not a valid URL: {error}")));
            }
        };
        match url.scheme() {
            "http" | "https" => {}
            // Content the page already holds; nothing leaves the browser.
            "data" | "blob" | "about" => return Verdict::Allow,
            other => {
                return Verdict::Refuse(refused(format!(
                    "the scheme {other:?} is not allowed; only http and https are"
                )));
            }
        }
        let port = url.port_or_known_default().unwrap_or(80);
        if let Some(host) = url.host_str()
            && !operator_domain::agent::domain_allowed(&self.allowed_domains, host)
        {
            return Verdict::Refuse(refused(format!(
                "host {host} is not in the task's allowed_domains"
            )));
        }
        let host = match url.host() {
            None => return Verdict::Refuse(refused(format!("{text} has no host"))),
            // Allowed by name: its addresses are not looked at (nor looked up).
            Some(Host::Domain(domain)) if self.policy.allows_host(domain) => {
                return Verdict::Allow;
            }
            Some(_) => url.host_str().unwrap_or_default(),
        };
        // IP literals and `localhost` names need no look-up; the policy decides.
        match self.policy.resolution(host, port) {
            Err(error) => Verdict::Refuse(error),
            Ok(Resolution::Known(_)) => Verdict::Allow,
            Ok(Resolution::Lookup(name)) => self.looked_up(name, port).await,
        }
    }

    /// The verdict on a DNS name, from the task's cache or a look-up.
    async fn looked_up(&self, name: String, port: u16) -> Verdict {
        let key = (name.to_ascii_lowercase(), port);
        if let Some(cached) = self
            .resolved
            .lock()
            .ok()
            .and_then(|cache| cache.get(&key).cloned())
        {
            return cached;
        }
        let verdict = match resolve_checked(&self.policy, &name, port).await {
            Ok(_) => Verdict::Allow,
            Err(ResolveError::Refused(error)) => Verdict::Refuse(error),
            Err(ResolveError::Unresolvable(message)) => Verdict::Unresolvable(message),
        };
        if let Ok(mut cache) = self.resolved.lock() {
            cache.insert(key, verdict.clone());
        }
        verdict
    }

    /// How many distinct hosts were resolved (for tests of the cache).
    pub fn resolutions(&self) -> usize {
        self.resolved.lock().map(|cache| cache.len()).unwrap_or(0)
    }
}

/// Matches `text` against a pattern where `*` stands for any run of characters.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, rest) = parts.split_first().unwrap_or((&"", &[]));
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let (last, middle) = rest.split_last().unwrap_or((&"", &[]));
    for part in middle {
        match remaining.find(part) {
            Some(position) => remaining = &remaining[position + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// `Fetch.requestPaused`, the parts the guard looks at.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestPaused {
    request_id: String,
    request: PausedRequest,
    frame_id: String,
    resource_type: String,
}

#[derive(Debug, Deserialize)]
struct PausedRequest {
    url: String,
}

/// What happens to a paused request.
enum Decision {
    Continue,
    /// Fail it with this CDP `Network.ErrorReason`.
    Fail(&'static str),
}

impl Decision {
    fn send(&self, page: &Page, request_id: &str) {
        // Detached: the answer must not wait for Chromium's acknowledgement, and a page
        // that went away meanwhile makes it fail, which is expected.
        match self {
            Self::Continue => page.send_detached(
                "Fetch.continueRequest",
                json!({ "requestId": request_id }),
                FailureLog::Debug,
            ),
            Self::Fail(reason) => page.send_detached(
                "Fetch.failRequest",
                json!({ "requestId": request_id, "errorReason": reason }),
                FailureLog::Debug,
            ),
        }
    }
}

/// A page's request interception, set up when the page is opened (ahead of its task):
/// every request of every resource type is paused at the request stage, redirect hops
/// included, and refused until a task's guard is installed.
pub struct Interception {
    /// The task's guard, once installed. A std mutex: held only to read or swap the
    /// `Arc`, on the connection's reader task and on the task's thread.
    guard: Arc<Mutex<Option<Arc<RequestGuard>>>>,
    _paused_requests: Subscription,
}

impl Interception {
    /// Listens for paused requests, then asks Chromium to pause them; the returned call
    /// is Chromium's acknowledgement, to be waited for with the page's other set-up.
    pub fn start(page: &Page) -> (Self, PendingCall) {
        let guard: Arc<Mutex<Option<Arc<RequestGuard>>>> = Arc::default();
        let slot = Arc::clone(&guard);
        let answering = page.clone();
        let subscription = page.subscribe(move |event: &Event| {
            if event.method != "Fetch.requestPaused" {
                return;
            }
            let Some(paused) = event.parse::<RequestPaused>() else {
                return;
            };
            let installed = slot.lock().ok().and_then(|guard| guard.clone());
            let Some(guard) = installed else {
                Decision::Fail("BlockedByClient").send(&answering, &paused.request_id);
                return;
            };
            // The verdict may look a host name up: decided on its own task, never on
            // the connection's reader.
            let page = answering.clone();
            tokio::spawn(async move {
                guard.decide(&paused).await.send(&page, &paused.request_id);
            });
        });
        let enabled = page.start(
            "Fetch.enable",
            json!({ "patterns": [{ "urlPattern": "*", "requestStage": "Request" }] }),
        );
        (
            Self {
                guard,
                _paused_requests: subscription,
            },
            enabled,
        )
    }

    /// From now on the page's requests are decided by `guard`. Must happen before the
    /// page loads anything.
    pub fn install(&self, guard: Arc<RequestGuard>) {
        if let Ok(mut slot) = self.guard.lock() {
            *slot = Some(guard);
        }
    }
}

fn refused(message: String) -> CodedError {
    CodedError::new(ErrorCode::UrlNotAllowed, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allow: &[&str]) -> RequestGuard {
        let entries: Vec<String> = allow.iter().map(|entry| entry.to_string()).collect();
        RequestGuard::new(
            NetworkPolicy::parse(&entries, false).expect("policy"),
            "frame",
        )
    }

    fn is_refused(verdict: &Verdict) -> bool {
        matches!(verdict, Verdict::Refuse(error) if error.code == ErrorCode::UrlNotAllowed)
    }

    #[tokio::test]
    async fn internal_addresses_and_local_schemes_are_refused_by_default() {
        let default = guard(&[]);
        for url in [
            "http://127.0.0.1:8080/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://[::1]/",
            "http://localhost/",
            "http://app.localhost/",
            "file:///etc/passwd",
            "chrome://settings",
            "javascript:alert(1)",
            "ftp://example.com/",
        ] {
            assert!(is_refused(&default.check(url).await), "{url}");
        }
        assert_eq!(default.check("data:text/plain,hi").await, Verdict::Allow);
        assert_eq!(
            default.check("https://93.184.215.14/").await,
            Verdict::Allow
        );
    }

    #[tokio::test]
    async fn a_host_allowed_by_name_does_not_open_its_address() {
        let by_name = guard(&["localhost"]);
        assert_eq!(
            by_name.check("http://localhost:3000/page").await,
            Verdict::Allow
        );
        assert!(is_refused(
            &by_name.check("http://127.0.0.1:3000/page").await
        ));
        assert_eq!(by_name.resolutions(), 0, "no lookup for allowed names");
    }

    #[tokio::test]
    async fn resolutions_are_cached_per_task() {
        let default = guard(&[]);
        // A name that resolves to loopback through the system resolver.
        let first = default.check("http://localhost.localdomain/").await;
        let second = default.check("http://localhost.localdomain/other").await;
        assert_eq!(first, second);
        assert!(default.resolutions() <= 1);
    }

    #[test]
    fn wildcards_match_runs_of_characters() {
        assert!(wildcard_match(
            "*://ads.example/*",
            "https://ads.example/x.js"
        ));
        assert!(wildcard_match("*.png", "http://a.test/p.png"));
        assert!(!wildcard_match("*.png", "http://a.test/p.png?x"));
        assert!(wildcard_match("http://a.test/", "http://a.test/"));
        assert!(!wildcard_match("a*b*c", "acb"));
        assert!(wildcard_match("a*b*c", "a-b-c"));
    }

    #[test]
    fn refusals_are_recorded_and_capped() {
        let default = guard(&[]);
        for index in 0..(MAX_RECORDED_REFUSALS + 5) {
            default.record(
                Refusal {
                    url: format!("http://127.0.0.1/{index}"),
                    resource_type: "Image".into(),
                    reason: "loopback".into(),
                },
                None,
            );
        }
        let (list, total) = default.refusals();
        assert_eq!(list.len(), MAX_RECORDED_REFUSALS);
        assert_eq!(total, MAX_RECORDED_REFUSALS + 5);
        assert!(default.document_refusal().is_none());
    }

    fn paused(url: &str, resource_type: &str, frame_id: &str) -> RequestPaused {
        RequestPaused {
            request_id: "request".into(),
            request: PausedRequest { url: url.into() },
            frame_id: frame_id.into(),
            resource_type: resource_type.into(),
        }
    }

    #[tokio::test]
    async fn the_egress_proxy_refusing_the_document_refuses_the_task() {
        let refusals = Arc::new(RefusalLog::default());
        let error = CodedError::new(ErrorCode::UrlNotAllowed, "rebound to loopback");
        // A refusal from before the document left does not count.
        refusals.record("93.184.215.14", 80, &error);
        let guarded = guard(&[]).with_egress(Some(Arc::clone(&refusals)));
        let document = paused("http://93.184.215.14/page", "Document", "frame");
        assert!(matches!(
            guarded.decide(&document).await,
            Decision::Continue
        ));
        assert!(guarded.document_refusal().is_none());
        // The proxy refuses a sub-resource's host, then the document's.
        refusals.record("203.0.113.9", 80, &error);
        assert!(
            guarded.document_refusal().is_none(),
            "not the document's host"
        );
        refusals.record("93.184.215.14", 80, &error);
        assert_eq!(guarded.document_refusal(), Some(error.clone()));
        // A sub-frame's document is not the page's.
        let other = guard(&[]).with_egress(Some(Arc::clone(&refusals)));
        let frame = paused("http://93.184.215.14/frame", "Document", "child");
        assert!(matches!(other.decide(&frame).await, Decision::Continue));
        refusals.record("93.184.215.14", 80, &error);
        assert!(other.document_refusal().is_none());
    }
}
