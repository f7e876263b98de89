//! Webhooks over HTTP with a timeout, no redirects, and a destination policy: loopback,
//! private, link-local, unique-local and other internal addresses are refused unless
//! allowlisted. The policy is applied to the addresses the resolver returns — the only ones
//! the client connects to — and to IP literals in the URL, so DNS cannot smuggle a request
//! to an internal host.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::{Delivered, DeliveryError, http_error, http_outcome};

/// Whether an address is internal: never a webhook target unless allowlisted.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || a >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            let embedded_v4 = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                is_internal(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)))
            };
            let first = seg[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // IPv4-compatible ::/96 (deprecated; some stacks still route it to IPv4)
                || seg[..6] == [0; 6]
                // IPv4-translated ::ffff:0:0/96 (SIIT), which translators turn into IPv4
                || seg[..6] == [0, 0, 0, 0, 0xffff, 0]
                // NAT64 64:ff9b::/96 reaches the embedded IPv4 address
                || (seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && embedded_v4(seg[6], seg[7]))
                || (first == 0x64 && seg[1] == 0xff9b && seg[2] == 1) // local NAT64 64:ff9b:1::/48
                || (first == 0x2002 && embedded_v4(seg[1], seg[2])) // 6to4 2002::/16
                || (first == 0x2001 && seg[1] == 0x0db8) // documentation 2001:db8::/32
                || (first == 0x0100 && seg[1..4] == [0; 3]) // discard-only 100::/64
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link local fe80::/10
                || (first & 0xffc0) == 0xfec0 // site local fec0::/10 (deprecated)
        }
    }
}

/// Hosts and addresses webhooks may reach even though they are internal.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    hosts: BTreeSet<String>,
}

impl Allowlist {
    /// From entries such as `127.0.0.1`, `::1`, `[0:0:0:0:0:0:0:1]` or `crm.internal.`:
    /// addresses in their canonical form, names in lower case without the root's dot, so an
    /// entry matches however the URL or the operator spells the same host.
    pub fn new(entries: &[String]) -> Self {
        Self {
            hosts: entries.iter().map(|e| canonical_host(e)).collect(),
        }
    }

    fn allows_host(&self, host: &str) -> bool {
        self.hosts.contains(&canonical_host(host))
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.hosts.contains(&ip.to_string())
    }
}

/// A host as the allowlist compares it: an IP address in its canonical text, a name in lower
/// case without brackets or a trailing dot.
fn canonical_host(host: &str) -> String {
    let bare = host.trim().trim_matches(['[', ']']);
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => bare.trim_end_matches('.').to_ascii_lowercase(),
    }
}

/// Looks names up with the system resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            Ok(Box::new(found.into_iter()) as Addrs)
        })
    }
}

/// Resolves names with `inner` and drops internal addresses the allowlist does not name.
/// The client connects only to what this returns, so the address checked is the address
/// connected to: a name that resolves differently the next time (DNS rebinding) is checked
/// again then.
struct PolicyResolver {
    allow: Arc<Allowlist>,
    inner: Arc<dyn Resolve>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_owned();
        let lookup = self.inner.resolve(name);
        Box::pin(async move {
            let found: Vec<SocketAddr> = lookup.await?.collect();
            let allowed: Vec<SocketAddr> = if allow.allows_host(&host) {
                found
            } else {
                found
                    .into_iter()
                    .filter(|a| allow.allows_ip(a.ip()))
                    .collect()
            };
            if allowed.is_empty() {
                return Err(format!("refused: {host} resolves only to internal addresses").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The webhook client.
#[derive(Debug)]
pub struct WebhookChannel {
    client: reqwest::Client,
    allow: Arc<Allowlist>,
}

impl WebhookChannel {
    /// A client with `timeout`, no redirects, and the destination policy.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(allow: Allowlist, timeout: Duration) -> Result<Self, String> {
        Self::with_resolver(allow, timeout, Arc::new(SystemResolver))
    }

    /// [`WebhookChannel::new`] with names looked up by `resolver` instead of the system's;
    /// the destination policy applies to whatever it returns.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn with_resolver(
        allow: Allowlist,
        timeout: Duration,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Self, String> {
        let allow = Arc::new(allow);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PolicyResolver {
                allow: allow.clone(),
                inner: resolver,
            }))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Self { client, allow })
    }

    /// Checks a URL before any connection: scheme, and an IP-literal host against the policy.
    ///
    /// # Errors
    /// A permanent error naming why the destination is refused.
    pub fn check_destination(&self, url: &str) -> Result<reqwest::Url, DeliveryError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            DeliveryError::permanent(format!("webhook URL {url:?} is invalid: {e}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(DeliveryError::permanent(format!(
                "webhook URL scheme {:?} is not http or https",
                parsed.scheme()
            )));
        }
        let host = parsed.host_str().unwrap_or_default();
        // `localhost` and its subdomains are loopback by definition (RFC 6761), whatever a
        // resolver says; with or without the trailing dot.
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if (name == "localhost" || name.ends_with(".localhost")) && !self.allow.allows_host(host) {
            return Err(DeliveryError::permanent(format!(
                "refused: {host} is loopback (allowlist it to call it)"
            )));
        }
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>()
            && !self.allow.allows_ip(ip)
            && !self.allow.allows_host(host)
        {
            return Err(DeliveryError::permanent(format!(
                "refused: {ip} is an internal address (allowlist it to call it)"
            )));
        }
        Ok(parsed)
    }

    /// Calls a webhook; the idempotency key goes along as `Idempotency-Key`.
    ///
    /// # Errors
    /// Permanent for a refused destination or a 4xx; transient for connection errors,
    /// 429 and 5xx. A name that resolves only to internal addresses is refused permanently.
    pub async fn call(
        &self,
        key: &str,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<Delivered, DeliveryError> {
        let url = self.check_destination(url)?;
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| DeliveryError::permanent(format!("invalid method {method}")))?;
        let mut request = self
            .client
            .request(method, url)
            .header("Idempotency-Key", key);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            let chain = crate::scheduler::error_chain(&e);
            if chain.contains("refused: ") {
                DeliveryError::permanent(chain)
            } else {
                http_error(&e, "the webhook")
            }
        })?;
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        http_outcome(
            response.status().as_u16(),
            retry_after.as_deref(),
            "the webhook",
        )?;
        Ok(Delivered::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allowlist_entry_matches_its_host_however_it_is_spelled() {
        let allow = Allowlist::new(&["[0:0:0:0:0:0:0:1]".into(), "CRM.Internal.".into()]);
        for host in [
            "::1",
            "[::1]",
            "crm.internal",
            "crm.internal.",
            "Crm.INTERNAL",
        ] {
            assert!(allow.allows_host(host), "{host}");
        }
        assert!(allow.allows_ip("::1".parse().unwrap()));
        assert!(!allow.allows_host("crm.internal.example"));
        assert!(!allow.allows_ip("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::10.0.0.1",
            "::8.8.8.8",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "fec0::1",
            "2001:db8::1",
            "100::1",
            "::ffff:0:127.0.0.1",
            "::ffff:0:8.8.8.8",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn ip_literal_destinations_are_refused_before_connecting_unless_allowlisted() {
        let strict = WebhookChannel::new(Allowlist::default(), Duration::from_secs(1)).unwrap();
        for url in [
            "http://127.0.0.1:9/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://localhost./",
            "http://api.LOCALHOST/",
            "ftp://example.com/",
        ] {
            assert!(
                matches!(
                    strict.check_destination(url),
                    Err(DeliveryError::Permanent { .. })
                ),
                "{url}"
            );
        }
        assert!(
            strict
                .check_destination("https://hooks.example.com/x")
                .is_ok()
        );
        let local = WebhookChannel::new(
            Allowlist::new(&["127.0.0.1".into()]),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(local.check_destination("http://127.0.0.1:9/x").is_ok());
        assert!(local.check_destination("http://169.254.169.254/").is_err());
    }
}
