//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and
//! `tracestate` headers read from a request and written on the requests the gateway sends,
//! and new trace and span ids.
//!
//! This file is pure: strings in, values out. It knows nothing of spans, samplers or the
//! exporter.

use std::fmt;

/// A 16-byte trace id; never all zeros once made by [`TraceId::random`] or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id; never all zeros once made by [`SpanId::random`] or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

/// The part of a span that crosses process boundaries: ids and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The `sampled` trace flag (bit 0 of `trace-flags`).
    pub sampled: bool,
}

/// What a request brought: the caller's span context (a remote parent) and its
/// `tracestate`, passed on unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub parent: SpanContext,
    pub tracestate: Option<String>,
}

/// Longest `tracestate` passed on; a longer one is dropped (W3C: "vendors SHOULD propagate
/// at least 512 characters").
pub const MAX_TRACESTATE: usize = 512;
/// Most list members a `tracestate` may have (W3C §3.3.1.1).
const MAX_TRACESTATE_MEMBERS: usize = 32;

const HEX: &[u8; 16] = b"0123456789abcdef";

impl TraceId {
    /// A fresh random id (never all zeros).
    pub fn random() -> TraceId {
        loop {
            let v = (u128::from(next_u64()) << 64) | u128::from(next_u64());
            if v != 0 {
                return TraceId(v.to_be_bytes());
            }
        }
    }

    /// Lower-case hex, 32 digits, without allocating.
    pub fn hex(&self) -> HexId<32> {
        HexId::new(&self.0)
    }
}

impl SpanId {
    /// A fresh random id (never all zeros).
    pub fn random() -> SpanId {
        loop {
            let v = next_u64();
            if v != 0 {
                return SpanId(v.to_be_bytes());
            }
        }
    }

    /// Lower-case hex, 16 digits, without allocating.
    pub fn hex(&self) -> HexId<16> {
        HexId::new(&self.0)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

/// An id as `N` lower-case hex digits, on the stack.
#[derive(Clone, Copy)]
pub struct HexId<const N: usize>([u8; N]);

impl<const N: usize> HexId<N> {
    fn new(bytes: &[u8]) -> Self {
        let mut out = [b'0'; N];
        for (i, b) in bytes.iter().take(N / 2).enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        HexId(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Display for HexId<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `traceparent` value, `00-{trace id}-{span id}-{flags}`, on the stack (55 bytes).
#[derive(Clone, Copy)]
pub struct TraceParent([u8; 55]);

impl TraceParent {
    pub fn new(ctx: &SpanContext) -> TraceParent {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        out[3..35].copy_from_slice(&ctx.trace_id.hex().0);
        out[36..52].copy_from_slice(&ctx.span_id.hex().0);
        out[53..55].copy_from_slice(if ctx.sampled { b"01" } else { b"00" });
        TraceParent(out)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({})", self.as_str())
    }
}

/// Parses one `traceparent` value (W3C §3.2, and §4.3 for versions after 00). `None` when it
/// is not valid: the caller then starts a new trace.
///
/// Version 00 is exactly 55 characters. A later version (not `ff`) may be longer, with a `-`
/// after the flags; its first four fields are read as version 00's and only the sampled bit
/// of its flags is kept. Hex is lower case only; all-zero trace or span ids are invalid.
/// Optional white space (spaces, tabs) around the value is ignored.
pub fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    let v = trim_ows(value);
    if v.len() < 55 {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    if version == 0 && v.len() != 55 {
        return None;
    }
    if version > 0 && v.len() > 55 && v[55] != b'-' {
        return None;
    }
    let mut trace = [0u8; 16];
    for (i, b) in trace.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span = [0u8; 8];
    for (i, b) in span.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some(SpanContext {
        trace_id: TraceId(trace),
        span_id: SpanId(span),
        sampled: flags & 1 == 1,
    })
}

/// The `tracestate` to pass on, from the values of every `tracestate` header line (joined
/// with `,` as HTTP list headers are). `None` when absent, empty, over [`MAX_TRACESTATE`]
/// bytes, with more than 32 members, with a member that is not `key=value`, or with bytes
/// outside printable ASCII. Kept as received otherwise (keys and values are not checked
/// further: the gateway adds no member of its own).
pub fn parse_tracestate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
    let mut out = String::new();
    for v in values {
        let v = trim_ows(v);
        if v.is_empty() {
            continue;
        }
        if !v.iter().all(|b| (0x20..0x7f).contains(b) || *b == b'\t') {
            return None;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(std::str::from_utf8(v).ok()?);
        if out.len() > MAX_TRACESTATE {
            return None;
        }
    }
    let mut members = 0;
    for m in out.split(',') {
        let m = m.trim_matches([' ', '\t']);
        if m.is_empty() {
            continue; // empty list members are allowed and ignored
        }
        members += 1;
        match m.split_once('=') {
            Some((k, _)) if !k.is_empty() && !k.contains([' ', '\t']) => {}
            _ => return None,
        }
    }
    (members > 0 && members <= MAX_TRACESTATE_MEMBERS).then_some(out)
}

/// What a request carries, from its headers: `None` (start a new trace) unless there is
/// exactly one valid `traceparent`. Its `tracestate` is kept only with a valid parent.
pub fn incoming(headers: &http::HeaderMap) -> Option<Incoming> {
    let mut parents = headers.get_all("traceparent").iter();
    let first = parents.next()?;
    if parents.next().is_some() {
        return None; // two traceparent lines: which one is meant cannot be known
    }
    let parent = parse_traceparent(first.as_bytes())?;
    let tracestate = parse_tracestate(headers.get_all("tracestate").iter().map(|v| v.as_bytes()));
    Some(Incoming { parent, tracestate })
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| *b != b' ' && *b != b'\t');
    let end = v.iter().rposition(|b| *b != b' ' && *b != b'\t');
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// Two lower-case hex digits. Upper case is invalid in `traceparent` (W3C §3.2.2).
fn hex_byte(two: &[u8]) -> Option<u8> {
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(d(two[0])? << 4 | d(two[1])?)
}

/// 64 bits from a per-thread wyrand stream seeded once by the OS-seeded `rand::random`: ids
/// must be unique and spread, not secret, and the ChaCha generator behind `rand::random`
/// costs ~300 instructions a call (the same choice as request ids in `edge::forwarding`).
fn next_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random());
    }
    STATE.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn tp(version: &str, trace: &str, span: &str, flags: &str) -> String {
        format!("{version}-{trace}-{span}-{flags}")
    }

    fn parse(s: &str) -> Option<SpanContext> {
        parse_traceparent(s.as_bytes())
    }

    #[test]
    fn the_specs_example_is_read_with_its_ids_and_sampled_flag() {
        let c = parse(&tp("00", TRACE, SPAN, "01")).expect("valid");
        assert_eq!(c.trace_id.to_string(), TRACE);
        assert_eq!(c.span_id.to_string(), SPAN);
        assert!(c.sampled);
        let c = parse(&tp("00", TRACE, SPAN, "00")).expect("valid");
        assert!(!c.sampled);
        // Unknown flag bits are ignored; only bit 0 is `sampled`.
        assert!(!parse(&tp("00", TRACE, SPAN, "02")).expect("valid").sampled);
        assert!(parse(&tp("00", TRACE, SPAN, "ff")).expect("valid").sampled);
    }

    #[test]
    fn formatting_gives_back_what_was_parsed() {
        let s = tp("00", TRACE, SPAN, "01");
        let c = parse(&s).expect("valid");
        assert_eq!(TraceParent::new(&c).as_str(), s);
        let c = SpanContext {
            sampled: false,
            ..c
        };
        assert_eq!(TraceParent::new(&c).as_str(), tp("00", TRACE, SPAN, "00"));
    }

    #[test]
    fn all_zero_ids_are_invalid() {
        assert!(parse(&tp("00", &"0".repeat(32), SPAN, "01")).is_none());
        assert!(parse(&tp("00", TRACE, &"0".repeat(16), "01")).is_none());
    }

    #[test]
    fn upper_case_and_non_hex_digits_are_invalid() {
        assert!(parse(&tp("00", &TRACE.to_uppercase(), SPAN, "01")).is_none());
        assert!(parse(&tp("00", TRACE, &SPAN.to_uppercase(), "01")).is_none());
        assert!(parse(&tp("00", TRACE, SPAN, "0A")).is_none());
        assert!(parse(&tp("0A", TRACE, SPAN, "01")).is_none());
        assert!(parse(&tp("00", &TRACE.replace('a', "g"), SPAN, "01")).is_none());
        assert!(parse(&tp("00", TRACE, &SPAN.replace('a', "."), "01")).is_none());
        assert!(parse(&tp("00", TRACE, SPAN, "0.")).is_none());
    }

    #[test]
    fn wrong_lengths_and_separators_are_invalid() {
        assert!(parse("").is_none());
        assert!(parse(&tp("00", &TRACE[1..], SPAN, "01")).is_none());
        assert!(parse(&tp("00", &format!("{TRACE}0"), SPAN, "01")).is_none());
        assert!(parse(&tp("00", TRACE, &SPAN[1..], "01")).is_none());
        assert!(parse(&tp("00", TRACE, SPAN, "1")).is_none());
        assert!(parse(&tp("0", TRACE, SPAN, "01")).is_none());
        assert!(parse(&format!("00_{TRACE}-{SPAN}-01")).is_none());
        assert!(parse(&format!("00-{TRACE}_{SPAN}-01")).is_none());
        assert!(parse(&format!("00-{TRACE}-{SPAN}_01")).is_none());
        // Version 00 has nothing after the flags.
        assert!(parse(&format!("{}-extra", tp("00", TRACE, SPAN, "01"))).is_none());
        assert!(parse(&format!("{}.", tp("00", TRACE, SPAN, "01"))).is_none());
    }

    #[test]
    fn version_ff_is_invalid() {
        assert!(parse(&tp("ff", TRACE, SPAN, "01")).is_none());
    }

    #[test]
    fn later_versions_are_read_as_version_00_and_may_carry_more_fields() {
        let c = parse(&tp("cc", TRACE, SPAN, "01")).expect("same length");
        assert_eq!(c.trace_id.to_string(), TRACE);
        let c = parse(&format!(
            "{}-what-the-future-holds",
            tp("cc", TRACE, SPAN, "01")
        ))
        .expect("with a field after a dash");
        assert_eq!(c.span_id.to_string(), SPAN);
        assert!(c.sampled);
        // Anything after the flags must start with a dash.
        assert!(parse(&format!("{}x", tp("cc", TRACE, SPAN, "01"))).is_none());
        // The fields it shares with 00 are held to 00's rules.
        assert!(parse(&tp("cc", &"0".repeat(32), SPAN, "01")).is_none());
        assert!(parse(&tp("cc", TRACE, SPAN, "0x")).is_none());
    }

    #[test]
    fn optional_white_space_around_the_value_is_ignored() {
        let s = format!(" \t{}\t ", tp("00", TRACE, SPAN, "01"));
        assert!(parse(&s).is_some());
    }

    #[test]
    fn one_traceparent_is_continued_and_two_start_a_new_trace() {
        let mut h = http::HeaderMap::new();
        let v = tp("00", TRACE, SPAN, "01");
        h.append("traceparent", v.parse().expect("v"));
        h.append("tracestate", "congo=t61rcWkgMzE".parse().expect("v"));
        h.append("tracestate", "rojo=00f067aa0ba902b7".parse().expect("v"));
        let inc = incoming(&h).expect("continued");
        assert_eq!(inc.parent.trace_id.to_string(), TRACE);
        assert_eq!(
            inc.tracestate.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        h.append("traceparent", v.parse().expect("v"));
        assert!(incoming(&h).is_none());
        assert!(incoming(&http::HeaderMap::new()).is_none());
    }

    #[test]
    fn tracestate_is_kept_within_bounds_and_dropped_past_them() {
        let one = |s: &str| parse_tracestate([s.as_bytes()]);
        assert_eq!(one("a=1,b=2").as_deref(), Some("a=1,b=2"));
        assert_eq!(one("a=1, ,b=2").as_deref(), Some("a=1, ,b=2"));
        assert_eq!(one(""), None);
        assert_eq!(one("novalue"), None);
        assert_eq!(one("=v"), None);
        assert_eq!(one("a=\u{e9}"), None);
        let long = format!("k={}", "v".repeat(MAX_TRACESTATE - 2));
        assert_eq!(one(&long).map(|s| s.len()), Some(MAX_TRACESTATE));
        let too_long = format!("k={}", "v".repeat(MAX_TRACESTATE - 1));
        assert_eq!(one(&too_long), None);
        let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(one(&members.join(",")), None);
        assert!(one(&members[..32].join(",")).is_some());
    }

    #[test]
    fn new_ids_are_never_zero_and_differ() {
        let a = TraceId::random();
        let b = TraceId::random();
        assert_ne!(a, b);
        assert_ne!(a.0, [0; 16]);
        assert_ne!(SpanId::random(), SpanId::random());
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(SpanId::random().hex().as_str().len(), 16);
    }
}
