//! `POST /api/v1/auth/refresh`: a refresh token exchanged for new tokens, unless the account
//! changed since the session began.

use super::{bad_request, unavailable, Reply, Request};
use crate::auth::sessions::SessionError;
use crate::auth::users::EventKind;
use crate::auth::{cookies, unix_now, Auth};
use serde_json::json;

impl Auth {
    pub(super) async fn refresh(&self, req: &Request<'_>) -> Reply {
        let from_body = req.fields().and_then(|f| {
            f.get("refresh_token")
                .and_then(|v| v.as_str())
                .map(String::from)
        });
        let token = from_body.or_else(|| {
            cookies::get(req.headers, &self.config.cookies.refresh_name).map(String::from)
        });
        let Some(token) = token else {
            return bad_request(req, "Send refresh_token.");
        };
        let now = unix_now();
        let claims = match self.sessions.verify_refresh(&token, now) {
            Ok(c) => c,
            Err(e) => return self.unauthorized(req, e.reason()),
        };
        // The account as it is now: a disabled, deleted or re-roled account refreshes nothing,
        // and a session begun before the user's latest account change is over.
        let valid_after = match self
            .account_valid_after(&claims.sub, &claims.role, req)
            .await
        {
            Ok(Some(t)) => t,
            Ok(None) => {
                if let Err(e) = self.sessions.end_session(&claims.sid).await {
                    tracing::warn!(request_id = req.request_id, error = %e, "could not end the session of a disabled account");
                }
                let mut r = self.unauthorized(req, "account_disabled");
                r.headers.extend(self.clear_cookies(req.tls));
                return r;
            }
            Err(r) => return r,
        };
        let span = req.trace.db(self.sessions.store.kind(), "session refresh");
        let refreshed = self.sessions.refresh(&token, now, valid_after).await;
        span.end();
        match refreshed {
            Ok(pair) => {
                let uid = pair.access.sub.parse::<i64>().ok();
                self.event(EventKind::Refresh, uid, None, req).await;
                let user = json!({"id": pair.access.sub, "role": pair.access.role});
                let mut r = Reply::json(200, self.pair_json(&pair, user), ("allow", "refresh"));
                r.headers.extend(self.session_cookies(&pair, req.tls));
                r
            }
            Err(SessionError::RefreshReuse { user_id }) => {
                tracing::warn!(request_id = req.request_id, user = %user_id, "refresh token reuse: session revoked");
                self.event(EventKind::RefreshReuse, user_id.parse().ok(), None, req)
                    .await;
                let mut r = self.unauthorized(req, "refresh_reuse");
                r.headers.extend(self.clear_cookies(req.tls));
                r
            }
            Err(SessionError::Store(_)) => unavailable(req, "store_unavailable"),
            Err(e) => self.unauthorized(req, e.reason()),
        }
    }

    /// `Some(t)`: the user exists, is enabled and still has `role`; sessions begun before
    /// `t` (unix ms, the latest account change) are over. `None`: the account is gone,
    /// disabled or changed role. `Err`: the database cannot say (the 503 to answer).
    pub(super) async fn account_valid_after(
        &self,
        sub: &str,
        role: &str,
        req: &Request<'_>,
    ) -> Result<Option<i64>, Reply> {
        let db_down = || unavailable(req, "database_unavailable");
        let Ok(id) = sub.parse::<i64>() else {
            return Ok(None);
        };
        match self.users.find_by_id(id).await {
            Ok(Some(u)) if !u.disabled && u.role.as_str() == role => {}
            Ok(_) => return Ok(None),
            Err(e) => {
                tracing::error!(error = %e, "user database unavailable: account not checked");
                return Err(db_down());
            }
        }
        match self.users.sessions_valid_after(id).await {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                tracing::error!(error = %e, "user database unavailable: revocations not checked");
                Err(db_down())
            }
        }
    }
}
