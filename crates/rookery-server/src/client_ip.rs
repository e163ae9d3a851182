//! Who the client is for rate limits: its IP address, from the peer or a trusted proxy's
//! header, and the key its limiter object is named by.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName};

/// The client's address: the last address in `header` (across all its lines) when one is
/// configured and holds an address, else the peer's. IPv4-mapped IPv6 addresses count as IPv4.
///
/// Proxies append to lists like `X-Forwarded-For`, each adding a line or a `, address`: the
/// last address is the one our trusted proxy saw; everything before it is whatever the client
/// sent, so a client's own line must not win.
pub(crate) fn client_ip(headers: &HeaderMap, header: Option<&HeaderName>, peer: IpAddr) -> IpAddr {
    let from_header = header
        .and_then(|h| headers.get_all(h).iter().next_back())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| parse_ip(v.trim()));
    canonical(from_header.unwrap_or(peer))
}

/// An address as proxies write it: bare, or with a port (`1.2.3.4:80`, `[2001:db8::1]:80`).
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
        })
}

/// `::ffff:a.b.c.d` is the IPv4 client `a.b.c.d` (a dual-stack listener sees them so).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The name of the client's rate-limiter object (see [`rookery::identity::client_key`]).
pub(crate) fn rate_limit_key(ip: IpAddr) -> String {
    rookery::identity::client_key(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");

    fn peer() -> IpAddr {
        "10.9.9.9".parse().unwrap()
    }

    fn headers(lines: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(XFF, HeaderValue::from_static(l));
        }
        h
    }

    #[test]
    fn the_last_address_of_the_last_line_counts() {
        let ip = |lines: &[&'static str]| client_ip(&headers(lines), Some(&XFF), peer());
        // The client's own line comes first; the proxy's line is last.
        assert_eq!(
            ip(&["6.6.6.6", "1.2.3.4"]),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ip(&["6.6.6.6, 7.7.7.7", "5.5.5.5, 1.2.3.4"]),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(ip(&["1.2.3.4:5678"]), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(
            ip(&["[2001:db8::1]:443"]),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ip(&["::ffff:1.2.3.4"]),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // Nothing usable: the peer.
        assert_eq!(ip(&["garbage"]), peer());
        assert_eq!(ip(&[]), peer());
        assert_eq!(client_ip(&headers(&["1.2.3.4"]), None, peer()), peer());
        let mapped_peer: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            client_ip(&HeaderMap::new(), None, mapped_peer),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv6_clients_share_a_limit_per_64() {
        let key = |s: &str| rate_limit_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:3::1"), "2001:db8:1:3::/64");
        assert_eq!(key("1.2.3.4"), "1.2.3.4");
        assert_eq!(key("::ffff:1.2.3.4"), "1.2.3.4");
    }
}
