//! The Pingora lane's one writer of the gateway's own answers ([`Answer`]), and the
//! compression decisions shared with proxied answers.

use super::{Ctx, Gateway};
use crate::answer::Answer;
use crate::errors::Reject;
use http::Method;
use pingora::http::ResponseHeader;
use pingora::modules::http::compression::ResponseCompression;
use pingora::prelude::*;
use pingora::proxy::Session;

impl Gateway {
    /// Writes a whole answer: its headers, then length, request id, `no-store` on errors,
    /// CORS for this request, HSTS on TLS, and the gateway's br encoding when it applies.
    pub(super) async fn send_answer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        answer: Answer,
    ) -> Result<()> {
        let Answer {
            status,
            headers,
            mut body,
        } = answer;
        // No case-preserving second map: the gateway's own names are its own to spell (the
        // standard ones go out Title-Case, the rest lower-case), and every insert below would
        // otherwise go into two maps.
        let mut resp = ResponseHeader::build_no_case(status, Some(3 + headers.len()))?;
        let has_length = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        if !has_length {
            resp.insert_header("content-length", body.len().to_string())?;
        }
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if status >= 400 {
            resp.insert_header("cache-control", "no-store")?;
        }
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("set-cookie") {
                resp.append_header(k, v.as_str())?;
            } else {
                resp.insert_header(k, v.as_str())?;
            }
        }
        if let Some(cors) = ctx.cors.as_ref().filter(|c| c.is_enabled()) {
            for (k, v) in cors.response_headers(&session.req_header().headers) {
                if k == http::header::VARY {
                    resp.append_header(k, v)?;
                } else {
                    resp.insert_header(k, v)?;
                }
            }
        }
        if let (true, Some(h)) = (ctx.tls_conn, ctx.snapshot.config.server.tls.hsts.as_ref()) {
            resp.insert_header("strict-transport-security", h.header_value())?;
        }
        // A whole answer keeps a length when encoded: it leaves in one send.
        let encoded =
            match Self::choose_coding(session, ctx, &mut resp, Some(body.len() as u64), true)? {
                Coding::Br => Some(("br", crate::edge::brotli_body::compress_all(&body))),
                Coding::Gzip => Some((
                    "gzip",
                    crate::edge::coding::gzip_all(
                        &body,
                        ctx.snapshot.config.server.compression.level,
                    ),
                )),
                Coding::Identity | Coding::Module => None,
            };
        if let Some((name, encoded)) = encoded {
            body = bytes::Bytes::from(encoded);
            Self::encoded_headers(&mut resp, name)?;
            resp.insert_header("content-length", body.len().to_string())?;
        }
        ctx.status = status;
        if crate::DRAINING.load(std::sync::atomic::Ordering::Acquire)
            || session.is_process_shutting_down()
        {
            session.set_keepalive(None);
        }
        let head_only = session.req_header().method == Method::HEAD || body.is_empty();
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }

    /// Answers `r` (an HTML page for browsers, JSON for API clients) and keeps it for the
    /// access log. Always `Ok(true)`: the request is answered.
    pub(super) async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        r: Reject,
    ) -> Result<bool> {
        self.send_reject(session, ctx, &r).await?;
        ctx.reject = Some(r);
        Ok(true)
    }

    /// Writes `r` without keeping it (`fail_to_proxy` keeps it itself).
    pub(super) async fn send_reject(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        r: &Reject,
    ) -> Result<()> {
        let answer = self.reject_answer(ctx, r, session.req_header().uri.query());
        self.send_answer(session, ctx, answer).await
    }

    /// The answer's content coding, decided once, from the answer first: compression on, the
    /// route not opted out, not a WebSocket or a `HEAD`, a status with a whole body (not 206 or
    /// a `Content-Range`), not already encoded, at least `compression.min_size` when its length
    /// is known, and a compressible type (`edge::brotli_body::compressible`, the one list for
    /// every coding). Only an answer that passes has the client's `Accept-Encoding` read
    /// (`edge::coding::preferred`, the one negotiation: q-values and `*` honoured, `q=0` is a
    /// no, ties to the coding the client lists first): br is the gateway's own
    /// encoder; gzip of a `whole` answer (one the gateway writes itself, its body in hand) too;
    /// gzip of a proxied answer and zstd are Pingora's compression module, switched on here for
    /// this answer alone and allowed only the chosen coding (it stays off, and parses nothing,
    /// for every other request). A compressible answer the client takes as it is still says
    /// `Vary: Accept-Encoding`.
    pub(super) fn choose_coding(
        session: &mut Session,
        ctx: &Ctx,
        resp: &mut ResponseHeader,
        len: Option<u64>,
        whole: bool,
    ) -> Result<Coding> {
        use crate::edge::coding::{Preferred, Ties};
        use pingora::protocols::http::compression::Algorithm;
        const OFFERED: [Preferred; 3] = [Preferred::Br, Preferred::Gzip, Preferred::Zstd];
        let compressible = Self::compressible_answer(session, ctx, resp, len);
        let preferred = compressible
            .then(|| {
                let values = session
                    .req_header()
                    .headers
                    .get_all(http::header::ACCEPT_ENCODING)
                    .iter()
                    .map(|v| v.as_bytes());
                crate::edge::coding::preferred(values, &OFFERED, Ties::ClientOrder)
            })
            .flatten();
        let mut coding = match preferred {
            None => Coding::Identity,
            Some(Preferred::Br) => Coding::Br,
            Some(Preferred::Gzip) if whole => Coding::Gzip,
            Some(Preferred::Gzip | Preferred::Zstd) => Coding::Module,
        };
        // The module follows this answer's decision, also when an earlier head of the same
        // request (a proxied answer that failed before it was written) switched it on.
        let modules = &mut session.downstream_modules_ctx;
        match modules
            .get_mut::<ResponseCompression>()
            .filter(|m| m.is_header_phase())
        {
            Some(m) if coding == Coding::Module => {
                // Only the chosen coding: the module itself would take the first one the client
                // lists, whatever its q (and its brotli stream is never finished: br is ours).
                // It is shown an `Accept-Encoding` naming the chosen coding alone, and every
                // other coding's level is 0.
                let (chosen, only) = if preferred == Some(Preferred::Zstd) {
                    (Algorithm::Zstd, &*ZSTD_ONLY)
                } else {
                    (Algorithm::Gzip, &*GZIP_ONLY)
                };
                m.adjust_level(0);
                m.adjust_algorithm_level(chosen, ctx.snapshot.config.server.compression.level);
                // Its response filter, which runs after this one, compresses (and says Vary).
                m.request_filter(only);
            }
            Some(m) if m.is_enabled() => m.adjust_level(0),
            None if coding == Coding::Module => coding = Coding::Identity,
            _ => {}
        }
        if compressible && coding == Coding::Identity {
            append_vary_accept_encoding(resp)?;
        }
        Ok(coding)
    }

    /// The answer-side half of [`Self::choose_coding`]: whether this answer is worth encoding.
    fn compressible_answer(
        session: &Session,
        ctx: &Ctx,
        resp: &ResponseHeader,
        len: Option<u64>,
    ) -> bool {
        let c = ctx.snapshot.config.server.compression;
        let status = resp.status.as_u16();
        c.enabled
            && ctx.route.as_ref().is_none_or(|r| r.compression)
            && !ctx.websocket
            && session.req_header().method != Method::HEAD
            && !(status < 200 || status == 204 || status == 206 || status == 304)
            // A range of the identity body: encoding it would make its offsets lie.
            && !resp.headers.contains_key(http::header::CONTENT_RANGE)
            && !resp.headers.contains_key(http::header::CONTENT_ENCODING)
            && len.is_none_or(|n| n > 0 && n >= c.min_size.0)
            && resp
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(crate::edge::brotli_body::compressible)
    }

    /// Marks a response header as encoded with `coding` by the gateway (its length is the
    /// writer's to set, when it knows it).
    pub(super) fn encoded_headers(resp: &mut ResponseHeader, coding: &'static str) -> Result<()> {
        resp.remove_header(&http::header::CONTENT_LENGTH);
        resp.remove_header(&http::header::ACCEPT_RANGES);
        resp.insert_header(http::header::CONTENT_ENCODING, coding)?;
        append_vary_accept_encoding(resp)?;
        let etag = resp
            .headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(etag) = etag.filter(|e| e.starts_with('"')) {
            resp.insert_header(http::header::ETAG, format!("W/{etag}"))?;
        }
        Ok(())
    }
}

/// What Pingora's compression module is shown of a request whose answer it encodes: the
/// coding [`Gateway::choose_coding`] chose, alone.
static GZIP_ONLY: std::sync::LazyLock<pingora::http::RequestHeader> =
    std::sync::LazyLock::new(|| accepting("gzip"));
static ZSTD_ONLY: std::sync::LazyLock<pingora::http::RequestHeader> =
    std::sync::LazyLock::new(|| accepting("zstd"));

fn accepting(coding: &'static str) -> pingora::http::RequestHeader {
    let mut req = pingora::http::RequestHeader::build_no_case("GET", b"/", Some(1))
        .expect("a fixed request head");
    req.insert_header(http::header::ACCEPT_ENCODING, coding)
        .expect("a fixed header");
    req
}

/// How an answer goes to the client ([`Gateway::choose_coding`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coding {
    /// As it is.
    Identity,
    /// br, encoded by the gateway (`edge::brotli_body`).
    Br,
    /// gzip of a whole answer the gateway writes, encoded by the gateway (`edge::coding`).
    Gzip,
    /// gzip or zstd, as chosen here, encoded by Pingora's compression module (shown only
    /// that coding).
    Module,
}

/// `Vary: Accept-Encoding`, unless the answer already varies on it (or on everything).
fn append_vary_accept_encoding(resp: &mut ResponseHeader) -> Result<()> {
    let varies = resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if !varies {
        resp.append_header(http::header::VARY, "Accept-Encoding")?;
    }
    Ok(())
}
