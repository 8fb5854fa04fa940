//! Content codings: which one a client gets, read from `Accept-Encoding` with its q-values —
//! the gateway's one negotiation, for proxied answers, its own answers and static assets — and
//! gzip for whole answers the gateway writes itself.
//!
//! Pingora 0.9.1's compression module takes the first coding it knows from `Accept-Encoding`
//! and ignores q-values (`gzip;q=0` — "not gzip" — still got gzip), so the gateway chooses the
//! coding here and allows the module only the one chosen (`proxy::answer::choose_coding`).
//! Whole answers the gateway writes (pages, assets) are gzipped here and keep a
//! `Content-Length`: Pingora sends an answer without one in three sends (its head, flushed
//! early, the chunk, the last chunk), a whole answer with one leaves in one.

use std::io::Write;

/// A coding the gateway can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preferred {
    Br = 0,
    Gzip = 1,
    Zstd = 2,
}

/// Which of two codings the client rates alike wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ties {
    /// The one the client lists first (answers encoded per request: the client's order is
    /// its hint at what it decodes best).
    ClientOrder,
    /// The one offered first (precompressed assets: br costs nothing more to send).
    Offered,
}

/// The coding to send among `offered`, from every `Accept-Encoding` line in `values`: the
/// highest q above 0 (a coding's own, else `*`'s), ties broken by `ties` and then by the order
/// of `offered`; `None` when none of them is acceptable (the answer goes as it is — even to a
/// client that refused identity, which RFC 9110 §12.5.3 allows rather than failing). An item
/// with a malformed q is ignored; codings the gateway does not send (`deflate`, `compress`)
/// are passed over.
pub fn preferred<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    offered: &[Preferred],
    ties: Ties,
) -> Option<Preferred> {
    // (q in thousandths, position in the client's list) of br, gzip, zstd (indexed by
    // `Preferred as usize`) and `*` (STAR).
    const STAR: usize = 3;
    let mut seen: [Option<(u16, usize)>; 4] = [None; 4];
    let mut position = 0usize;
    for value in values {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for item in value.split(',') {
            position += 1;
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let slot = if name.eq_ignore_ascii_case("br") {
                Preferred::Br as usize
            } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                Preferred::Gzip as usize
            } else if name.eq_ignore_ascii_case("zstd") {
                Preferred::Zstd as usize
            } else if name == "*" {
                STAR
            } else {
                continue;
            };
            let mut q = Some(1000);
            for param in parts {
                if let Some((k, v)) = param.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = parse_qvalue(v.trim());
                    }
                }
            }
            if let Some(q) = q {
                seen[slot] = Some((q, position));
            }
        }
    }
    let mut best: Option<(u16, usize, usize, Preferred)> = None;
    for (rank, &coding) in offered.iter().enumerate() {
        let Some((q, pos)) = seen[coding as usize].or(seen[STAR]) else {
            continue;
        };
        if q == 0 {
            continue;
        }
        let order = match ties {
            Ties::ClientOrder => pos,
            Ties::Offered => 0,
        };
        let better = best.is_none_or(|(bq, border, brank, _)| {
            q > bq || (q == bq && (order, rank) < (border, brank))
        });
        if better {
            best = Some((q, order, rank, coding));
        }
    }
    best.map(|(.., c)| c)
}

/// A qvalue (`0`, `0.5`, `1.000`) in thousandths; `None` when malformed.
pub fn parse_qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = match int {
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
    let mut thousandths = 0u16;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    let q = whole + thousandths;
    (q <= 1000).then_some(q)
}

/// gzip of a whole body at `level` (1–9).
pub fn gzip_all(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 3 + 32),
        flate2::Compression::new(level.clamp(1, 9)),
    );
    // Writing into a Vec cannot fail.
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const ALL: [Preferred; 3] = [Preferred::Br, Preferred::Gzip, Preferred::Zstd];

    fn pick(accept: &str) -> Option<Preferred> {
        preferred([accept.as_bytes()], &ALL, Ties::ClientOrder)
    }

    #[test]
    fn the_highest_q_wins_ties_go_to_the_first_listed_and_zero_is_no() {
        use Preferred::*;
        for (accept, want) in [
            ("br", Some(Br)),
            ("br, gzip", Some(Br)),
            ("gzip, deflate, br", Some(Gzip)),
            ("gzip;q=0.5, br", Some(Br)),
            ("deflate, br", Some(Br)),
            ("x-gzip", Some(Gzip)),
            ("GZIP", Some(Gzip)),
            ("zstd, gzip", Some(Zstd)),
            ("zstd;q=0, gzip", Some(Gzip)),
            ("gzip;q=0", None),
            ("gzip; q=0.000", None),
            ("br;q=0, gzip", Some(Gzip)),
            ("gzip;q=abc", None),
            ("gzip;q=2", None),
            ("gzip;q=0.2, zstd;q=0.8", Some(Zstd)),
            ("identity", None),
            ("*", Some(Br)),
            ("gzip;q=0.5, *;q=0.1", Some(Gzip)),
            ("*;q=0", None),
            ("deflate", None),
            ("", None),
        ] {
            assert_eq!(pick(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn offered_order_breaks_ties_for_assets_and_only_offered_codings_count() {
        use Preferred::*;
        let both = [Br, Gzip];
        let assets =
            |a: &str, offered: &[Preferred]| preferred([a.as_bytes()], offered, Ties::Offered);
        assert_eq!(assets("gzip, deflate, br", &both), Some(Br));
        assert_eq!(assets("gzip, br;q=0.9", &both), Some(Gzip));
        assert_eq!(assets("br", &[Gzip]), None);
        assert_eq!(assets("zstd", &both), None);
        // Every line of the header counts.
        assert_eq!(
            preferred([&b"gzip;q=0.1"[..], &b"br"[..]], &both, Ties::ClientOrder),
            Some(Br)
        );
        assert_eq!(preferred([&b"\xff"[..]], &both, Ties::ClientOrder), None);
    }

    #[test]
    fn qvalues_are_read_strictly() {
        assert_eq!(parse_qvalue("1"), Some(1000));
        assert_eq!(parse_qvalue("1.000"), Some(1000));
        assert_eq!(parse_qvalue("0.5"), Some(500));
        assert_eq!(parse_qvalue("0.05"), Some(50));
        assert_eq!(parse_qvalue("1.001"), None);
        assert_eq!(parse_qvalue("0.1234"), None);
        assert_eq!(parse_qvalue(".5"), None);
        assert_eq!(parse_qvalue("abc"), None);
    }

    #[test]
    fn whole_bodies_round_trip_through_gzip() {
        let text = b"<html>hola</html>".repeat(100);
        let z = gzip_all(&text, 6);
        assert!(z.len() < text.len() / 4);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_end(&mut out)
            .expect("a complete gzip member");
        assert_eq!(out, text);
    }
}
