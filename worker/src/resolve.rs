//! DNS resolution under the network policy: the policy (in `operator_domain::network`)
//! decides, this module does the look-up. The egress proxy and the webhook dispatcher
//! connect only to the addresses answered here.

use std::net::SocketAddr;

use operator_domain::error::{CodedError, ErrorCode};
use operator_domain::network::{NetworkPolicy, Resolution, ResolveError};
use url::Url;

/// The addresses a connection to `host:port` may use: every address the host resolves
/// to, each one checked (see [`NetworkPolicy::resolution`]).
///
/// The egress proxy connects to one of these addresses and never resolves the name
/// again: a DNS answer that changes after the check (DNS rebinding) changes nothing.
pub async fn resolve_checked(
    policy: &NetworkPolicy,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, ResolveError> {
    match policy
        .resolution(host, port)
        .map_err(ResolveError::Refused)?
    {
        Resolution::Known(addresses) => Ok(addresses),
        Resolution::Lookup(name) => {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|error| {
                    ResolveError::Unresolvable(format!("cannot resolve {name}: {error}"))
                })?
                .collect();
            policy.check_resolved(&name, addresses)
        }
    }
}

/// Resolves the URL's host and checks every address it resolves to; a host that does
/// not resolve is the network's failure (`navigation_failed`, retried), not the
/// policy's.
pub async fn check_url(policy: &NetworkPolicy, url: &Url) -> Result<Vec<SocketAddr>, CodedError> {
    policy.check_url_statically(url)?;
    let host = url
        .host_str()
        .ok_or_else(|| CodedError::new(ErrorCode::InvalidUrl, "url has no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    resolve_checked(policy, host, port)
        .await
        .map_err(|error| match error {
            ResolveError::Refused(refused) => refused,
            ResolveError::Unresolvable(message) => {
                CodedError::new(ErrorCode::NavigationFailed, message)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> NetworkPolicy {
        let entries: Vec<String> = entries.iter().map(|entry| entry.to_string()).collect();
        NetworkPolicy::parse(&entries, false).expect("policy")
    }

    fn url(text: &str) -> Url {
        Url::parse(text).expect("url")
    }

    #[tokio::test]
    async fn names_are_checked_after_resolution() {
        let default = policy(&[]);
        // "localhost" resolves to loopback: refused by the static check already.
        let error = check_url(&default, &url("http://localhost/"))
            .await
            .expect_err("loopback");
        assert_eq!(error.code, ErrorCode::UrlNotAllowed);
        let allowing = policy(&["127.0.0.0/8", "::1"]);
        assert!(
            check_url(&allowing, &url("http://127.0.0.1:9/"))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn resolve_checked_answers_checked_addresses_or_says_why_not() {
        let default = policy(&[]);
        for refused in [
            "127.0.0.1",
            "[::1]",
            "::ffff:10.0.0.1",
            "localhost",
            "App.Localhost.",
        ] {
            let error = resolve_checked(&default, refused, 80)
                .await
                .expect_err(refused);
            assert!(
                matches!(&error, ResolveError::Refused(coded) if coded.code == ErrorCode::UrlNotAllowed),
                "{refused}: {error:?}"
            );
        }
        assert_eq!(
            resolve_checked(&default, "93.184.215.14", 443).await,
            Ok(vec!["93.184.215.14:443".parse().expect("address")])
        );
        // RFC 6761: `.invalid` never resolves.
        assert!(matches!(
            resolve_checked(&default, "no-such-host.invalid", 80).await,
            Err(ResolveError::Unresolvable(_))
        ));
        let by_name = policy(&["localhost"]);
        let addresses = resolve_checked(&by_name, "localhost", 3000)
            .await
            .expect("allowed");
        assert_eq!(addresses[0], "127.0.0.1:3000".parse().expect("address"));
    }
}
