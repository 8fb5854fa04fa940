//! IP allow and deny lists (`ip_rules:` in `gateway.yaml`): which client addresses may use a
//! route at all.
//!
//! This module owns the config shape, its validation and the compiled matcher. It does not
//! decide who the client is: the caller passes the address resolved by
//! [`crate::edge::forwarding::client_ip`] (trusted proxies already applied), and it does not
//! choose the status of a refusal (the gateway answers 403).

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::IpAddr;

/// `ip_rules:` — CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or plain addresses (`192.0.2.7`).
///
/// Both lists default to empty, which lets every client through. IPv4-mapped IPv6 entries
/// (`::ffff:10.0.0.0/104`) are treated as their IPv4 equivalent (`10.0.0.0/8`). A CIDR with
/// host bits set (`10.1.2.3/8`) means its network (`10.0.0.0/8`).
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpRulesConfig {
    /// When non-empty, only these addresses may pass (minus `deny`). Default: empty.
    pub allow: Vec<String>,
    /// These addresses never pass, even when also allowed. Default: empty.
    pub deny: Vec<String>,
}

impl IpRulesConfig {
    /// Every problem in this section, each prefixed with its path below `at`, e.g.
    /// `routes[2].ip_rules.deny[0]: "10.0.0.300" is not an IP address or CIDR`.
    pub fn validate(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for (list, entries) in [("allow", &self.allow), ("deny", &self.deny)] {
            for (i, entry) in entries.iter().enumerate() {
                if parse_entry(entry).is_none() {
                    problems.push(format!(
                        "{at}.{list}[{i}]: {entry:?} is not an IP address or CIDR"
                    ));
                }
            }
        }
        problems
    }
}

/// Compiled rules: networks parsed once, split by family and merged.
#[derive(Debug, Clone, Default)]
pub struct IpRules {
    allow_v4: Vec<Ipv4Net>,
    allow_v6: Vec<Ipv6Net>,
    deny_v4: Vec<Ipv4Net>,
    deny_v6: Vec<Ipv6Net>,
    /// Whether the config listed any `allow` entry, valid or not. An allow list whose every
    /// entry was invalid must still refuse everyone rather than silently open the gate.
    allow_listed: bool,
}

impl IpRules {
    /// Compiles the config. Invalid entries are skipped ([`IpRulesConfig::validate`] reports
    /// them), but a non-empty `allow` list keeps restricting access even if none of its
    /// entries parsed: such rules fail closed.
    pub fn new(cfg: &IpRulesConfig) -> IpRules {
        let (allow_v4, allow_v6) = compile(&cfg.allow);
        let (deny_v4, deny_v6) = compile(&cfg.deny);
        IpRules {
            allow_v4,
            allow_v6,
            deny_v4,
            deny_v6,
            allow_listed: !cfg.allow.is_empty(),
        }
    }

    /// Whether a client at `ip` may pass.
    ///
    /// `deny` wins over `allow`; when `allow` is non-empty only listed addresses pass. An
    /// IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, as dual-stack sockets report IPv4 peers) is
    /// matched as IPv4. `None` (client address unknown) passes only when `allow` is empty.
    pub fn permits(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else {
            return !self.allow_listed;
        };
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                if self.deny_v4.iter().any(|n| n.contains(&v4)) {
                    return false;
                }
                !self.allow_listed || self.allow_v4.iter().any(|n| n.contains(&v4))
            }
            IpAddr::V6(v6) => {
                if self.deny_v6.iter().any(|n| n.contains(&v6)) {
                    return false;
                }
                !self.allow_listed || self.allow_v6.iter().any(|n| n.contains(&v6))
            }
        }
    }
}

/// A CIDR or a plain address (a /32 or /128), with IPv4-mapped IPv6 networks turned into
/// IPv4 ones and host bits cleared.
fn parse_entry(s: &str) -> Option<IpNet> {
    let s = s.trim();
    let net = s
        .parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))?;
    Some(
        match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
                Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(IpNet::V4)
                    .unwrap_or(net),
                None => net,
            },
            other => other,
        }
        .trunc(),
    )
}

fn compile(entries: &[String]) -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in entries.iter().filter_map(|e| parse_entry(e)) {
        match net {
            IpNet::V4(n) => v4.push(n),
            IpNet::V6(n) => v6.push(n),
        }
    }
    // Merging overlapping and adjacent networks keeps the per-request scan short.
    (Ipv4Net::aggregate(&v4), Ipv6Net::aggregate(&v6))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> IpRules {
        IpRules::new(&IpRulesConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn empty_rules_let_everyone_through() {
        let r = rules(&[], &[]);
        assert!(r.permits(ip("192.0.2.1")));
        assert!(r.permits(ip("2001:db8::1")));
        assert!(r.permits(None));
    }

    #[test]
    fn allow_list_admits_only_listed_networks() {
        let r = rules(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"], &[]);
        assert!(r.permits(ip("10.1.2.3")));
        assert!(r.permits(ip("192.0.2.7")));
        assert!(!r.permits(ip("192.0.2.8")));
        assert!(r.permits(ip("2001:db8:1::5")));
        assert!(!r.permits(ip("2001:db9::1")));
        assert!(!r.permits(ip("11.0.0.1")));
    }

    #[test]
    fn deny_wins_over_allow() {
        let r = rules(&["10.0.0.0/8"], &["10.9.0.0/16"]);
        assert!(r.permits(ip("10.8.0.1")));
        assert!(!r.permits(ip("10.9.0.1")));
        let same = rules(&["192.0.2.1"], &["192.0.2.1"]);
        assert!(!same.permits(ip("192.0.2.1")));
    }

    #[test]
    fn deny_only_blocks_listed_and_passes_the_rest() {
        let r = rules(&[], &["203.0.113.0/24", "2001:db8::bad"]);
        assert!(!r.permits(ip("203.0.113.9")));
        assert!(!r.permits(ip("2001:db8::bad")));
        assert!(r.permits(ip("203.0.114.1")));
        assert!(r.permits(ip("2001:db8::bad:1")));
    }

    #[test]
    fn unknown_client_passes_only_without_allow_list() {
        assert!(rules(&[], &["10.0.0.0/8"]).permits(None));
        assert!(!rules(&["10.0.0.0/8"], &[]).permits(None));
    }

    #[test]
    fn ipv4_mapped_ipv6_client_is_matched_as_ipv4() {
        let r = rules(&["10.0.0.0/8"], &["10.9.9.9"]);
        assert!(r.permits(ip("::ffff:10.1.1.1")));
        assert!(!r.permits(ip("::ffff:10.9.9.9")));
        assert!(!r.permits(ip("::ffff:11.1.1.1")));
    }

    #[test]
    fn ipv4_mapped_config_entries_match_ipv4_clients() {
        let r = rules(&["::ffff:10.0.0.0/104"], &["::ffff:10.9.9.9"]);
        assert!(r.permits(ip("10.1.1.1")));
        assert!(!r.permits(ip("10.9.9.9")));
        assert!(!r.permits(ip("11.0.0.1")));
    }

    #[test]
    fn families_do_not_cross_match() {
        let r = rules(&["0.0.0.0/0"], &[]);
        assert!(r.permits(ip("198.51.100.1")));
        assert!(!r.permits(ip("2001:db8::1")));
        let r6 = rules(&["::/0"], &[]);
        assert!(r6.permits(ip("2001:db8::1")));
        // A v4 client, even one reported as v4-mapped v6, is not covered by ::/0.
        assert!(!r6.permits(ip("198.51.100.1")));
        assert!(!r6.permits(ip("::ffff:198.51.100.1")));
    }

    #[test]
    fn host_bits_in_cidr_mean_the_network() {
        let r = rules(&["10.1.2.3/8"], &[]);
        assert!(r.permits(ip("10.200.0.1")));
    }

    #[test]
    fn entries_are_trimmed() {
        let r = rules(&[" 192.0.2.0/24 "], &[]);
        assert!(r.permits(ip("192.0.2.5")));
    }

    #[test]
    fn allow_list_of_only_invalid_entries_fails_closed() {
        let r = rules(&["not-an-ip"], &[]);
        assert!(!r.permits(ip("192.0.2.1")));
        assert!(!r.permits(None));
    }

    #[test]
    fn invalid_entries_are_skipped_and_the_rest_apply() {
        let r = rules(&["bogus", "192.0.2.0/24"], &["nope"]);
        assert!(r.permits(ip("192.0.2.5")));
        assert!(!r.permits(ip("198.51.100.1")));
    }

    #[test]
    fn validate_reports_each_bad_entry_with_its_path() {
        let cfg = IpRulesConfig {
            allow: vec!["10.0.0.0/8".into(), "10.0.0.300".into()],
            deny: vec!["".into(), "2001:db8::/129".into(), "192.0.2.1".into()],
        };
        assert_eq!(
            cfg.validate("routes[2].ip_rules"),
            vec![
                "routes[2].ip_rules.allow[1]: \"10.0.0.300\" is not an IP address or CIDR",
                "routes[2].ip_rules.deny[0]: \"\" is not an IP address or CIDR",
                "routes[2].ip_rules.deny[1]: \"2001:db8::/129\" is not an IP address or CIDR",
            ]
        );
        assert!(IpRulesConfig::default().validate("x").is_empty());
    }

    #[test]
    fn config_deserialises_strictly_with_defaults() {
        let cfg: IpRulesConfig = serde_yaml::from_str("deny: [10.0.0.0/8]").unwrap();
        assert_eq!(cfg.deny, vec!["10.0.0.0/8"]);
        assert!(cfg.allow.is_empty());
        assert!(serde_yaml::from_str::<IpRulesConfig>("allowed: [1.2.3.4]").is_err());
    }
}
