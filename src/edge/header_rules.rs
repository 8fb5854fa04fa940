//! Header rules (`headers:` in `gateway.yaml`): fixed headers to remove, set or add on the
//! request sent upstream and on the response sent to the client.
//!
//! This module owns the config shape, its validation and the compiled operations. It refuses
//! headers that other parts of the gateway own: message framing and hop-by-hop headers (the
//! HTTP layer), and the identity headers that auth injects and strips (`Authorization`,
//! `X-User-Id`, `X-User-Role`, `X-Session-Id`, `X-Request-Id`). It does not interpolate
//! values: they are sent as written.

use http::{HeaderMap, HeaderName, HeaderValue};
use std::collections::BTreeMap;

/// Operations on one direction's headers. Applied as: `remove`, then `set`, then `add`.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderOps {
    /// Headers to set, replacing every existing value of that name. Default: none.
    pub set: BTreeMap<String, String>,
    /// Headers to append, keeping existing values of that name. Default: none.
    pub add: BTreeMap<String, String>,
    /// Header names to remove, every value. Default: none.
    pub remove: Vec<String>,
}

/// `headers:` — `request` ops apply to what the upstream receives, `response` ops to what the
/// client receives. Header names are case-insensitive. Default: no ops.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderRulesConfig {
    /// Ops on the request forwarded upstream.
    pub request: HeaderOps,
    /// Ops on the response returned to the client.
    pub response: HeaderOps,
}

/// Which way a set of ops applies; decides which names are off limits.
#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Request,
    Response,
}

/// Which op a name appears in; `Host` may only be set, and only on requests.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Remove,
    Set,
    Add,
}

/// Framing and hop-by-hop headers: rewriting them desynchronises the message or the connection.
const FRAMING: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "content-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Headers the gateway injects for upstreams after stripping any copy the client sent.
const IDENTITY: &[&str] = &[
    "authorization",
    "x-user-id",
    "x-user-role",
    "x-session-id",
    "x-request-id",
];

/// Why `name` (lowercase) may not appear in this op, or `None` when it may.
fn refusal(name: &str, dir: Direction, kind: Kind) -> Option<&'static str> {
    if FRAMING.contains(&name) {
        return Some("is a framing or hop-by-hop header, managed by the HTTP layer");
    }
    if IDENTITY.contains(&name) {
        return Some("is an identity header owned by the gateway (auth sets and strips it)");
    }
    if name == "host" && !(dir == Direction::Request && kind == Kind::Set) {
        return Some("may only be replaced with `request.set` (a request needs exactly one Host)");
    }
    None
}

impl HeaderRulesConfig {
    /// Every problem in this section, each prefixed with its path below `at`, e.g.
    /// `routes[0].headers.request.set.Connection: ...`: names that are not valid header names,
    /// values that are not visible ASCII, names listed twice in one op (names are
    /// case-insensitive), and names this module refuses to touch (see the module docs).
    pub fn validate(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for (section, ops, dir) in [
            ("request", &self.request, Direction::Request),
            ("response", &self.response, Direction::Response),
        ] {
            let at = format!("{at}.{section}");
            for (i, name) in ops.remove.iter().enumerate() {
                check_name(
                    &mut problems,
                    &format!("{at}.remove[{i}]"),
                    name,
                    dir,
                    Kind::Remove,
                );
            }
            for (op, map, kind) in [("set", &ops.set, Kind::Set), ("add", &ops.add, Kind::Add)] {
                let mut seen = Vec::new();
                for (name, value) in map {
                    let path = format!("{at}.{op}.{name}");
                    check_name(&mut problems, &path, name, dir, kind);
                    let lower = name.to_ascii_lowercase();
                    if seen.contains(&lower) {
                        problems.push(format!(
                            "{path}: listed twice (header names are case-insensitive)"
                        ));
                    }
                    seen.push(lower);
                    if parse_value(value).is_none() {
                        problems.push(format!(
                            "{path}: value {value:?} must be visible ASCII, spaces or tabs (no line breaks or control characters)"
                        ));
                    }
                }
            }
        }
        problems
    }
}

/// A value of visible ASCII, spaces and tabs. `HeaderValue::from_str` also accepts bytes
/// above 0x7f (obs-text), which peers decode inconsistently, so they are refused here.
fn parse_value(value: &str) -> Option<HeaderValue> {
    let printable = |b: u8| b == b'\t' || (0x20..0x7f).contains(&b);
    if value.bytes().all(printable) {
        HeaderValue::from_str(value).ok()
    } else {
        None
    }
}

fn check_name(problems: &mut Vec<String>, path: &str, name: &str, dir: Direction, kind: Kind) {
    match HeaderName::from_bytes(name.as_bytes()) {
        Err(_) => problems.push(format!("{path}: {name:?} is not a valid header name")),
        Ok(n) => {
            if let Some(why) = refusal(n.as_str(), dir, kind) {
                problems.push(format!("{path}: {name} {why}"));
            }
        }
    }
}

/// One compiled operation on a header map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Remove every value of this header.
    Remove(HeaderName),
    /// Replace every value of this header with this one.
    Set(HeaderName, HeaderValue),
    /// Append this value, keeping existing ones.
    Add(HeaderName, HeaderValue),
}

/// Compiled rules: names and values parsed once, ops in application order.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    request: Vec<HeaderOp>,
    response: Vec<HeaderOp>,
}

impl HeaderRules {
    /// Compiles the config. Entries that [`HeaderRulesConfig::validate`] would report
    /// (invalid names or values, refused headers) are skipped, so even an unvalidated config
    /// can never rewrite framing or identity headers.
    pub fn new(cfg: &HeaderRulesConfig) -> HeaderRules {
        HeaderRules {
            request: compile(&cfg.request, Direction::Request),
            response: compile(&cfg.response, Direction::Response),
        }
    }

    /// Applies the request ops (remove, then set, then add) to the headers sent upstream.
    pub fn apply_request(&self, headers: &mut HeaderMap) {
        apply(&self.request, headers);
    }

    /// Applies the response ops (remove, then set, then add) to the headers sent to the client.
    pub fn apply_response(&self, headers: &mut HeaderMap) {
        apply(&self.response, headers);
    }

    /// The request ops in application order, for callers whose header type is not
    /// [`HeaderMap`] (e.g. Pingora's request header). Empty when there are none.
    pub fn request_ops(&self) -> &[HeaderOp] {
        &self.request
    }

    /// The response ops in application order; see [`HeaderRules::request_ops`].
    pub fn response_ops(&self) -> &[HeaderOp] {
        &self.response
    }
}

fn compile(ops: &HeaderOps, dir: Direction) -> Vec<HeaderOp> {
    let name = |n: &str, kind: Kind| {
        HeaderName::from_bytes(n.as_bytes())
            .ok()
            .filter(|h| refusal(h.as_str(), dir, kind).is_none())
    };
    let pair = |(n, v): (&String, &String), kind: Kind| Some((name(n, kind)?, parse_value(v)?));
    let removes = ops
        .remove
        .iter()
        .filter_map(|n| name(n, Kind::Remove))
        .map(HeaderOp::Remove);
    let sets = ops
        .set
        .iter()
        .filter_map(|e| pair(e, Kind::Set))
        .map(|(n, v)| HeaderOp::Set(n, v));
    let adds = ops
        .add
        .iter()
        .filter_map(|e| pair(e, Kind::Add))
        .map(|(n, v)| HeaderOp::Add(n, v));
    removes.chain(sets).chain(adds).collect()
}

fn apply(ops: &[HeaderOp], headers: &mut HeaderMap) {
    for op in ops {
        match op {
            HeaderOp::Remove(name) => {
                headers.remove(name);
            }
            HeaderOp::Set(name, value) => {
                headers.insert(name.clone(), value.clone());
            }
            HeaderOp::Add(name, value) => {
                headers.append(name.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> HeaderRulesConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    fn values(m: &HeaderMap, name: &str) -> Vec<String> {
        m.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn set_replaces_every_existing_value() {
        let rules = HeaderRules::new(&cfg("request: {set: {X-Env: prod}}"));
        let mut h = map(&[("x-env", "a"), ("x-env", "b")]);
        rules.apply_request(&mut h);
        assert_eq!(values(&h, "x-env"), ["prod"]);
    }

    #[test]
    fn add_appends_after_existing_values() {
        let rules = HeaderRules::new(&cfg("response: {add: {Cache-Control: no-transform}}"));
        let mut h = map(&[("cache-control", "private")]);
        rules.apply_response(&mut h);
        assert_eq!(values(&h, "cache-control"), ["private", "no-transform"]);
    }

    #[test]
    fn remove_drops_every_value_case_insensitively() {
        let rules = HeaderRules::new(&cfg("response: {remove: [Server, X-POWERED-BY]}"));
        let mut h = map(&[
            ("server", "nginx"),
            ("x-powered-by", "a"),
            ("x-powered-by", "b"),
        ]);
        rules.apply_response(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn ops_apply_remove_then_set_then_add() {
        let rules = HeaderRules::new(&cfg(
            "request:\n  add: {X-A: added}\n  set: {X-A: set}\n  remove: [x-a]\n",
        ));
        let mut h = map(&[("x-a", "client")]);
        rules.apply_request(&mut h);
        assert_eq!(values(&h, "x-a"), ["set", "added"]);
        let names: Vec<_> = rules
            .request_ops()
            .iter()
            .map(|op| match op {
                HeaderOp::Remove(_) => "remove",
                HeaderOp::Set(..) => "set",
                HeaderOp::Add(..) => "add",
            })
            .collect();
        assert_eq!(names, ["remove", "set", "add"]);
    }

    #[test]
    fn request_and_response_ops_are_separate() {
        let rules = HeaderRules::new(&cfg(
            "request: {set: {X-Upstream-Only: '1'}}\nresponse: {set: {X-Client-Only: '1'}}",
        ));
        let mut req = HeaderMap::new();
        let mut resp = HeaderMap::new();
        rules.apply_request(&mut req);
        rules.apply_response(&mut resp);
        assert!(req.contains_key("x-upstream-only") && !req.contains_key("x-client-only"));
        assert!(resp.contains_key("x-client-only") && !resp.contains_key("x-upstream-only"));
    }

    #[test]
    fn ops_list_carries_parsed_lowercase_names_and_values() {
        let rules = HeaderRules::new(&cfg("response: {set: {X-Frame-Options: DENY}}"));
        assert_eq!(
            rules.response_ops(),
            [HeaderOp::Set(
                HeaderName::from_static("x-frame-options"),
                HeaderValue::from_static("DENY")
            )]
        );
        assert!(rules.request_ops().is_empty());
    }

    #[test]
    fn empty_rules_change_nothing() {
        let rules = HeaderRules::new(&HeaderRulesConfig::default());
        let mut h = map(&[("x-a", "1")]);
        rules.apply_request(&mut h);
        rules.apply_response(&mut h);
        assert_eq!(h, map(&[("x-a", "1")]));
        assert!(HeaderRulesConfig::default().validate("headers").is_empty());
    }

    #[test]
    fn host_may_be_set_on_requests_only() {
        let c = cfg("request: {set: {Host: api.internal}}");
        assert!(c.validate("headers").is_empty());
        let mut h = map(&[("host", "public.example.com")]);
        HeaderRules::new(&c).apply_request(&mut h);
        assert_eq!(values(&h, "host"), ["api.internal"]);

        let bad = cfg("request: {add: {Host: a}, remove: [host]}\nresponse: {set: {Host: b}}");
        let p = bad.validate("headers");
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p
            .iter()
            .all(|m| m.contains("may only be replaced with `request.set`")));
        let rules = HeaderRules::new(&bad);
        assert!(rules.request_ops().is_empty() && rules.response_ops().is_empty());
    }

    #[test]
    fn framing_and_hop_by_hop_headers_are_refused() {
        let c = cfg(
            "request: {set: {Content-Length: '5'}, remove: [Transfer-Encoding]}\nresponse: {add: {Connection: close}}",
        );
        assert_eq!(
            c.validate("routes[0].headers"),
            vec![
                "routes[0].headers.request.remove[0]: Transfer-Encoding is a framing or hop-by-hop header, managed by the HTTP layer",
                "routes[0].headers.request.set.Content-Length: Content-Length is a framing or hop-by-hop header, managed by the HTTP layer",
                "routes[0].headers.response.add.Connection: Connection is a framing or hop-by-hop header, managed by the HTTP layer",
            ]
        );
        let rules = HeaderRules::new(&c);
        assert!(rules.request_ops().is_empty() && rules.response_ops().is_empty());
    }

    #[test]
    fn identity_headers_are_refused_in_every_op() {
        let c = cfg(
            "request:\n  set: {X-User-Id: '1'}\n  add: {x-user-role: admin}\n  remove: [Authorization, X-Session-Id, X-Request-Id]\n",
        );
        let p = c.validate("headers");
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p
            .iter()
            .all(|m| m.contains("identity header owned by the gateway")));
        assert!(p[0].starts_with("headers.request.remove[0]: Authorization "));
        let mut h = map(&[("x-user-id", "42"), ("authorization", "Bearer t")]);
        HeaderRules::new(&c).apply_request(&mut h);
        assert_eq!(values(&h, "x-user-id"), ["42"]);
        assert_eq!(values(&h, "authorization"), ["Bearer t"]);
    }

    #[test]
    fn invalid_names_and_values_are_reported_and_skipped() {
        let c = cfg("request:\n  set: {'Bad Name': x, X-Ok: \"line\\nbreak\", X-Good: fine}\n  remove: ['']\n");
        assert_eq!(
            c.validate("headers"),
            vec![
                "headers.request.remove[0]: \"\" is not a valid header name",
                "headers.request.set.Bad Name: \"Bad Name\" is not a valid header name",
                "headers.request.set.X-Ok: value \"line\\nbreak\" must be visible ASCII, spaces or tabs (no line breaks or control characters)",
            ]
        );
        let rules = HeaderRules::new(&c);
        assert_eq!(
            rules.request_ops(),
            [HeaderOp::Set(
                HeaderName::from_static("x-good"),
                HeaderValue::from_static("fine")
            )]
        );
    }

    #[test]
    fn non_ascii_values_are_refused() {
        let c = cfg("response: {set: {X-Greeting: héllo}}");
        assert_eq!(c.validate("h").len(), 1);
        assert!(HeaderRules::new(&c).response_ops().is_empty());
    }

    #[test]
    fn names_differing_only_in_case_are_reported_twice_listed() {
        let c = cfg("response: {set: {X-A: '1', x-a: '2'}}");
        assert_eq!(
            c.validate("h"),
            vec!["h.response.set.x-a: listed twice (header names are case-insensitive)"]
        );
    }

    #[test]
    fn empty_values_are_allowed() {
        let c = cfg("request: {set: {X-Empty: ''}}");
        assert!(c.validate("h").is_empty());
        let mut h = HeaderMap::new();
        HeaderRules::new(&c).apply_request(&mut h);
        assert_eq!(values(&h, "x-empty"), [""]);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(serde_yaml::from_str::<HeaderRulesConfig>("requests: {}").is_err());
        assert!(serde_yaml::from_str::<HeaderRulesConfig>("request: {delete: [a]}").is_err());
    }
}
