//! The trusted headers that carry a caller's verified identity and address from the gateway to
//! the worker and objects.
//!
//! The gateway removes any of these a client sent and sets them from a verified token (or, in
//! demos, from the query) and from the connection; the worker and objects read them and trust
//! them.

use std::net::{IpAddr, Ipv6Addr};

use http::HeaderName;

/// The caller's user id.
pub const USER_ID: HeaderName = HeaderName::from_static("x-rookery-user-id");
/// The caller's display name.
pub const USER_NAME: HeaderName = HeaderName::from_static("x-rookery-user-name");
/// The caller's permissions, comma-separated.
pub const PERMISSIONS: HeaderName = HeaderName::from_static("x-rookery-permissions");
/// The client's IP address: the peer's, or the last address of the configured proxy header
/// (`client_ip_header`). Read it with `Request::client_ip`.
pub const CLIENT_IP: HeaderName = HeaderName::from_static("x-rookery-client-ip");

/// The name of a per-client object, such as a rate limiter, for client `ip`: an IPv4 address
/// as it is (`::ffff:a.b.c.d` counts as `a.b.c.d`); an IPv6 address by its /64 prefix
/// (`2001:db8:1:2::/64`), since one subscriber usually holds a whole /64 and could otherwise
/// pick a fresh address, and so a fresh budget, for every request.
pub fn client_key(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !(u128::from(u64::MAX));
            format!("{}/64", Ipv6Addr::from(prefix))
        }
    }
}
