//! The network policy: which addresses a browser (and later a webhook) may reach.
//!
//! Loopback, private, link-local (cloud metadata at 169.254.169.254), carrier-grade
//! NAT, unique-local, multicast and unspecified addresses are refused unless the
//! operator allow-lists the host or a network containing the address. Hostnames are
//! checked after DNS resolution, against every address they resolve to, so a public
//! name that points at 127.0.0.1 is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use url::{Host, Url};

use crate::error::{CodedError, ErrorCode};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is neither a host name, a *.suffix pattern nor a CIDR network")]
pub struct PolicyParseError {
    pub entry: String,
}

/// A host allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` matches `a.example.com` and `example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    hosts: Vec<HostPattern>,
    networks: Vec<IpNet>,
    allow_private: bool,
}

impl NetworkPolicy {
    /// Builds a policy from allow-list entries: host names, `*.suffix` patterns, bare
    /// addresses and CIDR networks.
    pub fn parse(entries: &[String], allow_private: bool) -> Result<Self, PolicyParseError> {
        let mut policy = Self {
            allow_private,
            ..Self::default()
        };
        for raw in entries {
            let entry = raw.trim().to_ascii_lowercase();
            if entry.is_empty() {
                continue;
            }
            if let Ok(network) = entry.parse::<IpNet>() {
                policy.networks.push(network);
            } else if let Ok(address) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                policy.networks.push(IpNet::from(address));
            } else if let Some(suffix) = entry.strip_prefix("*.") {
                if !is_host_name(suffix) {
                    return Err(PolicyParseError { entry: raw.clone() });
                }
                policy.hosts.push(HostPattern::Suffix(suffix.to_owned()));
            } else if is_host_name(&entry) {
                policy.hosts.push(HostPattern::Exact(entry));
            } else {
                return Err(PolicyParseError { entry: raw.clone() });
            }
        }
        Ok(policy)
    }

    /// A policy that refuses nothing; for tests of other parts only.
    pub fn allow_all() -> Self {
        Self {
            allow_private: true,
            ..Self::default()
        }
    }

    /// Whether the policy refuses nothing at all (`network.allow_private`).
    pub fn refuses_nothing(&self) -> bool {
        self.allow_private
    }

    /// Whether the host is allow-listed by name (`intranet.example`, `*.corp.example`):
    /// such a host may be reached whatever it resolves to.
    pub fn allows_host(&self, host: &str) -> bool {
        self.host_is_allowed(host)
    }

    /// Allocates nothing: the egress proxy asks this for every connection it opens.
    fn host_is_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.hosts.iter().any(|pattern| match pattern {
            HostPattern::Exact(exact) => host.eq_ignore_ascii_case(exact),
            HostPattern::Suffix(suffix) => {
                host.eq_ignore_ascii_case(suffix) || is_subdomain_of(host, suffix)
            }
        })
    }

    fn address_is_allowed(&self, address: IpAddr) -> bool {
        self.allow_private
            || self
                .networks
                .iter()
                .any(|network| network.contains(&address))
            || restricted_reason(address).is_none()
    }

    /// Checks an address the browser is about to connect to.
    pub fn check_address(&self, host: &str, address: IpAddr) -> Result<(), CodedError> {
        if self.host_is_allowed(host) || self.address_is_allowed(address) {
            return Ok(());
        }
        let reason = restricted_reason(address).unwrap_or("restricted");
        Err(CodedError::new(
            ErrorCode::UrlNotAllowed,
            format!(
                "{host} resolves to {address}, a {reason} address, which the network policy refuses; \
                 allow it with OPERATOR_NETWORK__ALLOW"
            ),
        ))
    }

    /// Checks what can be checked without DNS: the scheme, and the address when the
    /// host is an IP literal. Used at submission, to refuse obvious cases with a 4xx.
    pub fn check_url_statically(&self, url: &Url) -> Result<(), CodedError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CodedError::new(
                ErrorCode::UrlSchemeNotAllowed,
                format!("url scheme {:?} is not allowed", url.scheme()),
            ));
        }
        match url.host() {
            Some(Host::Ipv4(address)) => {
                self.check_address(&address.to_string(), IpAddr::V4(address))
            }
            Some(Host::Ipv6(address)) => {
                self.check_address(&address.to_string(), IpAddr::V6(address))
            }
            Some(Host::Domain(domain))
                if is_localhost_name(domain) && !self.host_is_allowed(domain) =>
            {
                self.check_address(domain, IpAddr::V4(Ipv4Addr::LOCALHOST))
            }
            Some(Host::Domain(_)) => Ok(()),
            None => Err(CodedError::new(ErrorCode::InvalidUrl, "url has no host")),
        }
    }

    /// What resolving `host` takes: nothing more for an IP literal (with or without
    /// IPv6 brackets) or a `localhost` name, whose addresses are checked here, or a DNS
    /// look-up whose answers then go through [`NetworkPolicy::check_resolved`]. The
    /// look-up itself is the worker's (`operator_worker::resolve`), so this crate does
    /// no I/O.
    ///
    /// `localhost` and `*.localhost` are loopback whatever DNS says, as in Chromium:
    /// 127.0.0.1 decides, as in `check_url_statically` and the request guard; ::1 is
    /// offered too when the policy allows it, for servers that listen there.
    pub fn resolution(&self, host: &str, port: u16) -> Result<Resolution, CodedError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(address) = bare.parse::<IpAddr>() {
            self.check_address(bare, address)?;
            return Ok(Resolution::Known(vec![SocketAddr::new(address, port)]));
        }
        if is_localhost_name(bare) {
            self.check_address(bare, IpAddr::V4(Ipv4Addr::LOCALHOST))?;
            let mut addresses = vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)];
            if self
                .check_address(bare, IpAddr::V6(Ipv6Addr::LOCALHOST))
                .is_ok()
            {
                addresses.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port));
            }
            return Ok(Resolution::Known(addresses));
        }
        Ok(Resolution::Lookup(bare.to_owned()))
    }

    /// Checks every address a DNS look-up of `host` answered. One refused address
    /// refuses the host, so a name that answers with a public and a private address
    /// cannot be used to reach either.
    pub fn check_resolved(
        &self,
        host: &str,
        addresses: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        if addresses.is_empty() {
            return Err(ResolveError::Unresolvable(format!(
                "{host} resolves to no address"
            )));
        }
        for address in &addresses {
            self.check_address(host, address.ip())
                .map_err(ResolveError::Refused)?;
        }
        Ok(addresses)
    }
}

/// What [`NetworkPolicy::resolution`] says resolving a host takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The host names its addresses itself (an IP literal, `localhost`); all checked.
    Known(Vec<SocketAddr>),
    /// A DNS name to look up (brackets and nothing else removed).
    Lookup(String),
}

/// Why a host has no address to use: the policy refuses the host
/// (a final `url_not_allowed`), or it does not resolve (the network's failure, not the
/// policy's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Refused(CodedError),
    #[error("{0}")]
    Unresolvable(String),
}

fn is_localhost_name(domain: &str) -> bool {
    let domain = domain.trim_end_matches('.');
    domain.eq_ignore_ascii_case("localhost") || is_subdomain_of(domain, "localhost")
}

/// Whether `host` ends with `.` + `parent`, ignoring ASCII case (`parent` is lowercase).
fn is_subdomain_of(host: &str, parent: &str) -> bool {
    let (host, parent) = (host.as_bytes(), parent.as_bytes());
    host.len() > parent.len()
        && host[host.len() - parent.len() - 1] == b'.'
        && host[host.len() - parent.len()..].eq_ignore_ascii_case(parent)
}

fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

/// Why an address is restricted, or `None` for a public address.
pub fn restricted_reason(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => restricted_v6(v6),
    }
}

fn restricted_v4(address: Ipv4Addr) -> Option<&'static str> {
    let octets = address.octets();
    if address.is_loopback() {
        Some("loopback")
    } else if address.is_unspecified() || octets[0] == 0 {
        Some("unspecified")
    } else if address.is_private() {
        Some("private")
    } else if address.is_link_local() {
        Some("link-local")
    } else if octets[0] == 100 && (64..128).contains(&octets[1]) {
        Some("carrier-grade NAT")
    } else if address.is_multicast() || address.is_broadcast() || octets[0] >= 240 {
        Some("reserved")
    } else if octets[0] == 192 && octets[1] == 0 && octets[2] == 0 {
        Some("IETF protocol assignment")
    } else if octets[0] == 198 && (octets[1] == 18 || octets[1] == 19) {
        Some("benchmarking")
    } else {
        None
    }
}

fn restricted_v6(address: Ipv6Addr) -> Option<&'static str> {
    if let Some(mapped) = address.to_ipv4_mapped() {
        return restricted_v4(mapped);
    }
    let segments = address.segments();
    let first = segments[0];
    // The IPv4 address in the last 32 bits, or at `from` (a segment index).
    let embedded = |from: usize| {
        Ipv4Addr::from((u32::from(segments[from]) << 16) | u32::from(segments[from + 1]))
    };
    if address.is_loopback() {
        Some("loopback")
    } else if address.is_unspecified() {
        Some("unspecified")
    } else if segments[..6].iter().all(|segment| *segment == 0) {
        // IPv4-compatible (::a.b.c.d, deprecated by RFC 4291): reaches the IPv4
        // address on hosts that still route it.
        restricted_v4(embedded(6)).or(Some("IPv4-compatible (deprecated)"))
    } else if (first & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (first & 0xffc0) == 0xfec0 {
        Some("site-local (deprecated)")
    } else if (first & 0xfe00) == 0xfc00 {
        Some("unique-local")
    } else if address.is_multicast() {
        Some("reserved")
    } else if first == 0x0064 && segments[1] == 0xff9b && (segments[2] == 0 || segments[2] == 1) {
        // NAT64, well-known (64:ff9b::/96) and local-use (64:ff9b:1::/48), embed an
        // IPv4 address in the last 32 bits.
        restricted_v4(embedded(6))
    } else if first == 0x2002 {
        // 6to4 (2002::/16): the relay's IPv4 address is bits 16 to 48.
        restricted_v4(embedded(1))
    } else if first == 0x2001 && segments[1] == 0 {
        // Teredo (2001::/32): the server's IPv4 address in bits 32 to 64, the client's,
        // inverted, in the last 32.
        let client = Ipv4Addr::from(!u32::from(embedded(6)));
        restricted_v4(embedded(2)).or_else(|| restricted_v4(client))
    } else if (first == 0x2001 && segments[1] == 0x0db8) || (first & 0xfff0) == 0x3ff0 {
        Some("documentation")
    } else if first == 0x0100 && segments[1..4].iter().all(|segment| *segment == 0) {
        Some("discard-only")
    } else if first == 0x2001 && (segments[1] & 0xfff0) == 0x0020 {
        Some("reserved (ORCHIDv2)")
    } else if first == 0x2001 && segments[1] == 0x0002 && segments[2] == 0 {
        Some("benchmarking")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> NetworkPolicy {
        let entries: Vec<String> = entries.iter().map(|entry| entry.to_string()).collect();
        NetworkPolicy::parse(&entries, false).expect("valid policy")
    }

    fn url(text: &str) -> Url {
        Url::parse(text).expect("url")
    }

    #[test]
    fn the_default_policy_refuses_internal_addresses() {
        let default = policy(&[]);
        for target in [
            "http://127.0.0.1/",
            "http://10.1.2.3/",
            "http://172.20.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0.0.0.0/",
            "http://100.100.100.200/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            // IPv4 embedded in IPv6: IPv4-compatible, 6to4, Teredo, NAT64.
            "http://[::7f00:1]/",
            "http://[::a9fe:a9fe]/",
            "http://[2002:7f00:1::]/",
            "http://[2002:a9fe:a9fe::1]/",
            "http://[2001:0:7f00:1::1]/",
            "http://[2001:0:5db8:1::f5fe:fffe]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[64:ff9b:1::a00:1]/",
            // Special-purpose ranges.
            "http://[2001:db8::1]/",
            "http://[3fff::1]/",
            "http://[100::1]/",
            "http://[fec0::1]/",
            "http://[2001:20::1]/",
            "http://[2001:2::1]/",
            "http://localhost:8080/",
            "http://app.localhost/",
        ] {
            let error = default
                .check_url_statically(&url(target))
                .expect_err(target);
            assert_eq!(error.code, ErrorCode::UrlNotAllowed, "{target}");
        }
        assert!(
            default
                .check_url_statically(&url("https://93.184.215.14/"))
                .is_ok()
        );
        // The same schemes around a public IPv4 address, and ordinary global IPv6.
        for public in [
            "http://[2002:5db8:d70e::1]/",
            "http://[2001:0:5db8:d70e::a247:28f1]/",
            "http://[64:ff9b::5db8:d70e]/",
            "http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/",
        ] {
            assert!(
                default.check_url_statically(&url(public)).is_ok(),
                "{public}"
            );
        }
        assert!(
            default
                .check_url_statically(&url("https://example.com/"))
                .is_ok()
        );
    }

    #[test]
    fn allow_lists_open_hosts_and_networks() {
        let allowing = policy(&["10.0.0.0/8", "127.0.0.1", "*.corp.example", "intranet"]);
        assert!(
            allowing
                .check_url_statically(&url("http://10.9.9.9/"))
                .is_ok()
        );
        assert!(
            allowing
                .check_url_statically(&url("http://127.0.0.1:3000/"))
                .is_ok()
        );
        assert!(
            allowing
                .check_url_statically(&url("http://192.168.0.1/"))
                .is_err()
        );
        assert!(
            allowing
                .check_address("wiki.corp.example", "192.168.0.7".parse().expect("ip"))
                .is_ok()
        );
        assert!(
            allowing
                .check_address("intranet", "172.16.0.1".parse().expect("ip"))
                .is_ok()
        );
        assert!(
            allowing
                .check_address("evil.example", "172.16.0.1".parse().expect("ip"))
                .is_err()
        );
    }

    #[test]
    fn malformed_entries_are_refused() {
        for entry in ["10.0.0.0/99", "http://x", "a b", "*."] {
            assert!(
                NetworkPolicy::parse(&[entry.to_string()], false).is_err(),
                "{entry}"
            );
        }
    }

    #[test]
    fn literals_and_localhost_resolve_without_dns() {
        let default = policy(&[]);
        for refused in [
            "127.0.0.1",
            "[::1]",
            "::ffff:10.0.0.1",
            "localhost",
            "App.Localhost.",
        ] {
            let error = default.resolution(refused, 80).expect_err(refused);
            assert_eq!(error.code, ErrorCode::UrlNotAllowed, "{refused}");
        }
        assert_eq!(
            default.resolution("93.184.215.14", 443),
            Ok(Resolution::Known(vec![
                "93.184.215.14:443".parse().expect("address")
            ]))
        );
        assert_eq!(
            default.resolution("example.com", 80),
            Ok(Resolution::Lookup("example.com".to_owned()))
        );
        // Allowed by name: loopback, whatever DNS says about `localhost`.
        let by_name = policy(&["localhost"]);
        let Ok(Resolution::Known(addresses)) = by_name.resolution("localhost", 3000) else {
            panic!("localhost is allowed by name");
        };
        assert_eq!(addresses[0], "127.0.0.1:3000".parse().expect("address"));
        assert!(by_name.resolution("127.0.0.1", 3000).is_err());
        // Allowed by network: 127.0.0.1 decides; ::1 only joins when allowed too.
        assert_eq!(
            policy(&["127.0.0.0/8"]).resolution("localhost", 80),
            Ok(Resolution::Known(vec![
                "127.0.0.1:80".parse().expect("address")
            ]))
        );
        assert!(matches!(
            policy(&["127.0.0.0/8", "::1"]).resolution("localhost", 80),
            Ok(Resolution::Known(found)) if found.len() == 2
        ));
    }

    #[test]
    fn every_looked_up_address_is_checked() {
        let default = policy(&[]);
        let public: SocketAddr = "93.184.215.14:80".parse().expect("address");
        let private: SocketAddr = "10.0.0.1:80".parse().expect("address");
        assert_eq!(
            default.check_resolved("a.example", vec![public]),
            Ok(vec![public])
        );
        assert!(matches!(
            default.check_resolved("a.example", vec![public, private]),
            Err(ResolveError::Refused(coded)) if coded.code == ErrorCode::UrlNotAllowed
        ));
        assert!(matches!(
            default.check_resolved("a.example", vec![]),
            Err(ResolveError::Unresolvable(_))
        ));
    }

    #[test]
    fn host_names_match_without_regard_to_case() {
        let allowing = policy(&["intranet", "*.corp.example"]);
        assert!(allowing.allows_host("INTRANET."));
        assert!(allowing.allows_host("Wiki.Corp.Example"));
        assert!(allowing.allows_host("corp.example"));
        assert!(!allowing.allows_host("evilcorp.example"));
        assert!(!allowing.allows_host("corp.example.evil"));
        assert!(is_localhost_name("A.LOCALHOST"));
        assert!(!is_localhost_name("notlocalhost"));
        assert!(!is_localhost_name("localhost.evil"));
    }
}
