//! The response cache's side of a proxied request: whether it may use the cache, and under
//! which key (`crate::cache` owns the policy and the store).

use super::{Ctx, Gateway};
use pingora::prelude::*;
use pingora::proxy::Session;

impl Gateway {
    /// Turns the cache on for this request when its route caches and the request may use it
    /// (`request_cache_filter`).
    pub(super) fn cache_admit(&self, session: &mut Session, ctx: &mut Ctx) {
        let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.as_ref()) else {
            return;
        };
        if ctx.websocket {
            return;
        }
        match policy.admits(session.req_header(), ctx.identity.is_some()) {
            crate::cache::Admission::Use => {
                session
                    .cache
                    .enable(self.cache.store, None, None, self.cache.lock, None);
                session
                    .cache
                    .set_max_file_size_bytes(self.cache.store.max_object_size());
            }
            crate::cache::Admission::Bypass => ctx.cache_bypass = true,
            crate::cache::Admission::Off => {}
        }
    }

    /// The cache key: route, host (lower case), normalised path and query.
    pub(super) fn cache_key(session: &Session, ctx: &Ctx) -> Result<pingora::cache::CacheKey> {
        let (Some(route), Some(path)) = (ctx.route.as_ref(), ctx.path.as_deref()) else {
            return Error::e_explain(ErrorType::InternalError, "no route in context");
        };
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let target = match req.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let primary = crate::cache::store::primary_key(&route.name, &host, &target);
        Ok(pingora::cache::CacheKey::new(primary, route.name.as_str()))
    }
}
