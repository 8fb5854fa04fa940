//! Who the client is and what the upstream is told about it: the client IP (from
//! `X-Forwarded-For` only through trusted proxies), `X-Request-Id`, and the hop-by-hop
//! headers that must not cross the proxy.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// The real client address. `X-Forwarded-For` is believed only when the TCP peer is a
/// trusted proxy; then the list is walked from the right, skipping trusted hops, and the
/// first untrusted address is the client (so a client cannot inject a fake left-most entry).
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !is_trusted(ip, trusted) {
                    break;
                }
            }
            None => break,
        }
    }
    Some(client)
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    // "1.2.3.4:5678" or "[::1]:5678"
    hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    trusted.iter().any(|n| n.contains(&ip))
}

/// A request id from the client is kept only if it is short and plain.
pub fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// 128 random bits as 32 lower-case hex digits.
pub fn new_request_id() -> String {
    hex32(id_bits())
}

/// 128 bits for a request id from a per-thread wyrand stream seeded by the OS-seeded
/// `rand::random` once: ids need to be unique, not unpredictable (nothing trusts them), and
/// the ChaCha generator behind `rand::random` cost ~300 instructions an id.
fn id_bits() -> u128 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random());
    }
    STATE.with(|state| {
        let next = || {
            let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
            state.set(s);
            let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
            (t >> 64) as u64 ^ t as u64
        };
        (u128::from(next()) << 64) | u128::from(next())
    })
}

/// `v` as 32 lower-case hex digits, written directly: `format!("{v:032x}")` goes through the
/// formatting machinery (width, padding) on every request.
fn hex32(v: u128) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Only ASCII hex digits were written: the check cannot fail (nor cost much).
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// Headers meaningful only for one hop (RFC 9110 §7.6.1), plus the legacy ones proxies drop.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Headers only the gateway sets towards upstreams (the signed-in user's identity); a
/// client's copies are removed on every route.
pub const IDENTITY_HEADERS: &[&str] =
    &["authorization", "x-user-id", "x-user-role", "x-session-id"];

/// Whether any `Connection` line lists `close` (RFC 9110 §7.6.1: every line counts; Pingora
/// reads only the first).
pub fn connection_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// Names listed in `Connection:` (also hop-by-hop), lower-cased.
pub fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty() && s != "close" && s != "keep-alive")
        .collect()
}

/// Marker carried across keep-alive requests so the wrapper (`edge::listener`) knows a
/// connection is reused, and by whom (for the per-ip connection count). The lane sets it;
/// here so that the lane need not import the listener that wraps it.
pub struct Reused(pub Option<std::net::IpAddr>);

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().expect("value"));
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let ip = client_ip(
            Some("203.0.113.9".parse().expect("ip")),
            &xff("1.1.1.1"),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, Some("203.0.113.9".parse().expect("ip")));
    }

    #[test]
    fn trusted_proxy_chain_is_walked_from_the_right() {
        let trusted = nets(&["10.0.0.0/8"]);
        let ip = client_ip(
            Some("10.0.0.1".parse().expect("ip")),
            &xff("6.6.6.6, 198.51.100.7, 10.0.0.2"),
            &trusted,
        );
        assert_eq!(ip, Some("198.51.100.7".parse().expect("ip")));
    }

    #[test]
    fn garbage_in_xff_stops_the_walk() {
        let trusted = nets(&["10.0.0.0/8"]);
        let ip = client_ip(
            Some("10.0.0.1".parse().expect("ip")),
            &xff("1.2.3.4, nonsense"),
            &trusted,
        );
        assert_eq!(ip, Some("10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn close_on_any_connection_line_counts() {
        let mut h = HeaderMap::new();
        h.append("connection", "keep-alive".parse().expect("v"));
        assert!(!connection_close(&h));
        h.append("connection", "Upgrade, Close".parse().expect("v"));
        assert!(connection_close(&h));
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id("abc-123_x.y:z"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("has space"));
        assert!(!valid_request_id(&"a".repeat(129)));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(valid_request_id(&id));
        assert_ne!(id, new_request_id());
        for v in [
            0,
            1,
            0xdead_beef,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            assert_eq!(hex32(v), format!("{v:032x}"));
        }
    }

    #[test]
    fn request_ids_do_not_repeat_within_or_across_threads() {
        let mut seen: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(seen.len(), 10_000);
        let other =
            std::thread::spawn(|| (0..10_000).map(|_| new_request_id()).collect::<Vec<_>>())
                .join()
                .expect("thread");
        seen.extend(other);
        assert_eq!(seen.len(), 20_000, "two threads made the same id");
    }
}
