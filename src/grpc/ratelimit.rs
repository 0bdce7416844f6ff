//! The transport's side of rate limiting: who the client is (the connection's address, or a
//! trusted proxy's header) and the one [`Gate::check`] that handlers call before they work.
//! The limits themselves live in [`crate::domain::limits`].

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::HeaderName;
use tonic::Request;

use crate::config::Config;
use crate::domain::limits::{Key, Kind, Limiter};
use crate::error::AppResult;
use crate::ids::TenantId;

/// Where a request's client address comes from.
#[derive(Clone, Debug)]
pub struct ClientAddress {
    trusted_proxies: Vec<IpAddr>,
    header: Option<HeaderName>,
}

impl From<&Config> for ClientAddress {
    fn from(c: &Config) -> Self {
        Self {
            trusted_proxies: c.trusted_proxies.clone(),
            header: HeaderName::from_bytes(c.client_ip_header.as_bytes()).ok(),
        }
    }
}

impl ClientAddress {
    /// The client's address: the last entry of the configured header when the peer is a
    /// trusted proxy (what that proxy appended), the peer's address otherwise. Without a
    /// peer (an in-process transport) every caller shares the unspecified address.
    pub fn of<T>(&self, req: &Request<T>) -> IpAddr {
        let peer = req.remote_addr().map(|a| a.ip());
        let forwarded = || {
            let header = self.header.as_ref()?;
            let value = req.metadata().get(header.as_str())?.to_str().ok()?;
            value.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
        };
        match peer {
            Some(p) if self.trusted_proxies.contains(&p) => forwarded().unwrap_or(p),
            Some(p) => p,
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }
}

/// What handlers call to count a call against its limits.
#[derive(Clone)]
pub struct Gate {
    limiter: Arc<Limiter>,
    clients: ClientAddress,
}

impl Gate {
    /// A gate over the node's limiter.
    pub fn new(limiter: Arc<Limiter>, clients: ClientAddress) -> Self {
        Self { limiter, clients }
    }

    /// The request's client address (see [`ClientAddress::of`]).
    pub fn client_ip<T>(&self, req: &Request<T>) -> IpAddr {
        self.clients.of(req)
    }

    /// Counts one `kind` call of `tenant` against each key's bucket; RATE_LIMITED (answered
    /// as RESOURCE_EXHAUSTED with RetryInfo) when any is empty.
    pub async fn check(&self, tenant: TenantId, kind: Kind, keys: &[Key]) -> AppResult<()> {
        self.limiter.check(tenant, kind, keys).await
    }

    /// The limiter, for domain flows that check after resolving the tenant (login).
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tonic::transport::server::TcpConnectInfo;

    fn from(peer: &str, header: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(peer.parse::<SocketAddr>().unwrap()),
        });
        if let Some(h) = header {
            req.metadata_mut()
                .insert("x-forwarded-for", h.parse().unwrap());
        }
        req
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy_and_only_its_last_entry() {
        let clients = ClientAddress {
            trusted_proxies: vec!["10.0.0.1".parse().unwrap()],
            header: Some(HeaderName::from_static("x-forwarded-for")),
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A client's own claim comes first; the proxy appended what it saw.
        let proxied = from("10.0.0.1:4000", Some("6.6.6.6, 203.0.113.7"));
        assert_eq!(clients.of(&proxied), ip("203.0.113.7"));
        let direct = from("198.51.100.2:4000", Some("203.0.113.7"));
        assert_eq!(clients.of(&direct), ip("198.51.100.2"));
        let junk = from("10.0.0.1:4000", Some("not an address"));
        assert_eq!(clients.of(&junk), ip("10.0.0.1"));
        assert_eq!(clients.of(&from("10.0.0.1:4000", None)), ip("10.0.0.1"));
    }
}
