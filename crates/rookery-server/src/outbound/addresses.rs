//! Which addresses outbound requests may reach: every public address, and the internal ones
//! (loopback, private, link-local, unique-local, ...) only when `[outbound] allow` lists them.
//!
//! Addresses are judged after name resolution, so a public name that resolves to an internal
//! address is refused like the address itself; an IPv6 address that carries an IPv4 one
//! (mapped, compatible, NAT64, 6to4) is judged by the IPv4 address it carries.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A range of addresses, `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    base: IpAddr,
    prefix: u8,
}

impl Range {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, ip) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(base) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(base) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// What `[outbound] allow` lists: address ranges and host names whose internal addresses may
/// be reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    ranges: Vec<Range>,
    /// Lowercase, without a trailing dot.
    names: Vec<String>,
}

impl AllowList {
    /// Parses the entries of `[outbound] allow`: addresses (`127.0.0.1`, `::1`), ranges
    /// (`10.0.0.0/8`, `fd00::/8`) and host names (`db.internal`). Returns the first entry that
    /// is none of these, with why.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, (String, String)> {
        let mut list = Self::default();
        for entry in entries {
            let e = entry.trim();
            match parse_range(e) {
                Some(Ok(range)) => list.ranges.push(range),
                Some(Err(why)) => return Err((entry.to_string(), why)),
                None if is_host_name(e) => list
                    .names
                    .push(e.trim_end_matches('.').to_ascii_lowercase()),
                None => {
                    return Err((
                        entry.to_string(),
                        "not an address, an address/prefix range or a host name".into(),
                    ));
                }
            }
        }
        Ok(list)
    }

    /// Whether a request to `host` may connect to `ip`: yes for public addresses, and for
    /// internal ones that the list names (by range, or by the host name they were found for).
    pub fn permits(&self, host: Option<&str>, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if internal(ip).is_none() {
            return true;
        }
        if self.ranges.iter().any(|r| r.contains(ip)) {
            return true;
        }
        host.is_some_and(|h| {
            let h = h.trim_end_matches('.');
            self.names.iter().any(|n| n.eq_ignore_ascii_case(h))
        })
    }
}

/// `Some(Ok(range))` for an address or `address/prefix`, `Some(Err(why))` for one that is
/// malformed, `None` for text that is no address at all.
fn parse_range(text: &str) -> Option<Result<Range, String>> {
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let base: IpAddr = addr.parse().ok()?;
    let max = if base.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => return Some(Err(format!("the prefix must be a number from 0 to {max}"))),
        },
    };
    Some(Ok(Range {
        base: canonical(base),
        prefix: if base.is_ipv6() && canonical(base).is_ipv4() {
            // ::ffff:a.b.c.d/120 is a.b.c.d/24.
            prefix.saturating_sub(96)
        } else {
            prefix
        },
    }))
}

fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The address an IPv6 address stands for when it carries an IPv4 one (`::ffff:a.b.c.d`);
/// else the address itself.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// Why `ip` counts as internal (a word for the log), or `None` for a public address.
pub(crate) fn internal(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "unspecified (0.0.0.0/8)",
        (10, ..) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared address space (100.64.0.0/10)",
        (127, ..) => "loopback (127.0.0.0/8)",
        (169, 254, _) => "link-local (169.254.0.0/16)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "6to4 relay anycast (192.88.99.0/24)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, ..) => "multicast (224.0.0.0/4)",
        (240..=255, ..) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    match s {
        // IPv4-compatible (deprecated): carries an IPv4 address in its last 32 bits.
        [0, 0, 0, 0, 0, 0, hi, lo] => internal_v4(embedded(hi, lo))
            .map(|_| "IPv4-compatible, carrying an internal IPv4 address"),
        // NAT64: a gateway would reach the IPv4 address it carries.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
            internal_v4(embedded(hi, lo)).map(|_| "NAT64, carrying an internal IPv4 address")
        }
        [0x64, 0xff9b, 1, ..] => Some("local-use NAT64 (64:ff9b:1::/48)"),
        // 6to4: the IPv4 address of the relay sits in bits 16..48.
        [0x2002, hi, lo, ..] => {
            internal_v4(embedded(hi, lo)).map(|_| "6to4, carrying an internal IPv4 address")
        }
        [0x0100, 0, 0, 0, ..] => Some("discard-only (100::/64)"),
        [0x2001, 0x0db8, ..] => Some("documentation (2001:db8::/32)"),
        [first, ..] if first & 0xfe00 == 0xfc00 => Some("unique-local (fc00::/7)"),
        [first, ..] if first & 0xffc0 == 0xfe80 => Some("link-local (fe80::/10)"),
        [first, ..] if first & 0xffc0 == 0xfec0 => Some("site-local (fec0::/10)"),
        [first, ..] if first & 0xff00 == 0xff00 => Some("multicast (ff00::/8)"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_of_both_families_are_recognised() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:a00:1::1",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(internal(ip(s)).is_some(), "{s} is internal");
        }
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "11.0.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(internal(ip(s)).is_none(), "{s} is public");
        }
    }

    #[test]
    fn the_allow_list_takes_addresses_ranges_and_names() {
        let list =
            AllowList::parse(["127.0.0.1", "10.0.0.0/8", "fd00::/8", "DB.internal."]).unwrap();
        assert!(list.permits(None, ip("127.0.0.1")));
        assert!(
            list.permits(None, ip("::ffff:127.0.0.1")),
            "mapped counts as IPv4"
        );
        assert!(!list.permits(None, ip("127.0.0.2")));
        assert!(!list.permits(None, ip("::1")));
        assert!(list.permits(None, ip("10.200.0.1")));
        assert!(!list.permits(None, ip("192.168.0.1")));
        assert!(list.permits(None, ip("fd12::1")));
        assert!(!list.permits(None, ip("fc12::1")));
        assert!(list.permits(Some("db.internal"), ip("192.168.0.1")));
        assert!(list.permits(Some("DB.INTERNAL."), ip("192.168.0.1")));
        assert!(!list.permits(Some("other.internal"), ip("192.168.0.1")));
        assert!(
            list.permits(None, ip("93.184.216.34")),
            "public is always allowed"
        );
        let mapped = AllowList::parse(["::ffff:192.168.0.0/112"]).unwrap();
        assert!(mapped.permits(None, ip("192.168.3.4")));
        assert!(!mapped.permits(None, ip("10.3.4.5")));
        let none = AllowList::default();
        assert!(!none.permits(Some("localhost"), ip("127.0.0.1")));
        assert!(!none.permits(None, ip("0.0.0.0")));
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "10.0.0.0/33",
            "::1/129",
            "10.0.0.0/x",
            "not a host",
            "a..b",
            "",
        ] {
            assert!(AllowList::parse([bad]).is_err(), "{bad:?}");
        }
        let all = AllowList::parse(["0.0.0.0/0"]).unwrap();
        assert!(all.permits(None, ip("127.0.0.1")));
    }
}
