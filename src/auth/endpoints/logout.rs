//! `POST /api/v1/auth/logout` (`?all=true` ends every session of the user) and `GET /logout`
//! for browsers.

use super::{unavailable, Endpoint, Reply, Request};
use crate::auth::guard::find_token;
use crate::auth::users::EventKind;
use crate::auth::{cookies, unix_now, users, Auth};
use serde_json::json;

impl Auth {
    pub(super) async fn logout(&self, ep: Endpoint, req: &Request<'_>) -> Reply {
        let browser = ep == Endpoint::LogoutPage;
        let all = req
            .query_param("all")
            .is_some_and(|v| v == "true" || v == "1");
        let token = find_token(req.headers, &self.config.cookies.name).map(|(t, _)| t);
        let claims = token.and_then(|t| self.sessions.verify_only(t, unix_now()).ok());
        let Some(claims) = claims else {
            if browser {
                return Reply::redirect("/login", ("allow", "logout"))
                    .with_headers(self.clear_cookies(req.tls));
            }
            let mut r = self.unauthorized(req, "missing_token");
            r.headers.extend(self.clear_cookies(req.tls));
            return r;
        };
        let ended = if all {
            self.sessions.end_all(&claims.sub).await
        } else {
            self.sessions.end_session(&claims.sid).await.map(|_| 1)
        };
        match ended {
            Ok(n) => {
                match (all, claims.sub.parse::<i64>()) {
                    (true, Ok(uid)) => {
                        let recorded = self
                            .users
                            .record_sessions_revoked(uid, users::Source::Api, n as u64)
                            .await;
                        if let Err(e) = recorded {
                            tracing::warn!(request_id = req.request_id, error = %e, "auth event not recorded");
                        }
                    }
                    _ => {
                        self.event(EventKind::Logout, claims.sub.parse().ok(), None, req)
                            .await
                    }
                }
                let r = if browser {
                    let flash = cookies::set(
                        &self.config.cookies,
                        cookies::FLASH_COOKIE,
                        "success:logged_out",
                        "/",
                        60,
                        req.tls,
                    );
                    Reply::redirect("/login", ("allow", "logout"))
                        .with_headers(vec![("Set-Cookie".into(), flash)])
                } else {
                    Reply::json(
                        200,
                        json!({"logged_out": true, "sessions_ended": n}),
                        ("allow", "logout"),
                    )
                };
                r.with_headers(self.clear_cookies(req.tls))
            }
            Err(e) => {
                tracing::error!(request_id = req.request_id, error = %e, "logout failed: session store");
                unavailable(req, "store_unavailable")
            }
        }
    }
}
