//! Live sessions: what makes a signed token acceptable. A token is accepted only while its
//! key (`access_token:{jti}` / `refresh_token:{jti}`, prefixes configurable) exists in the
//! session store, whatever its signature says.
//!
//! Store layout (values are small JSON documents):
//! - `{access_prefix}{jti}` → session id, TTL = access TTL (slid forward on use, see below)
//! - `{refresh_prefix}{jti}` → session id, TTL = refresh TTL
//! - `session:{sid}` → the session's current access and refresh jti, user, role, start time
//! - `user_sessions:{user_id}` → set of session ids (logout everywhere)
//!
//! Sliding renewal: a use in the second half of the access key's TTL extends the key to a
//! full access TTL (one store write, not one per request), never past the session's
//! absolute lifetime. Refresh rotates both tokens; a refresh token presented after its key
//! is gone while its session lives is reuse, and ends the whole session.

use super::jwt::{Claims, Jwt, JwtError, TokenType};
use super::store::{SessionStore, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Why a token or session was refused.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid token: {0}")]
    Token(#[from] JwtError),
    #[error("session revoked or expired")]
    Revoked,
    #[error("refresh token reused; session revoked")]
    RefreshReuse { user_id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SessionError {
    /// Short label for logs and the `reason` of auth metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Token(e) => e.reason(),
            SessionError::Revoked => "revoked",
            SessionError::RefreshReuse { .. } => "refresh_reuse",
            SessionError::Store(_) => "store_unavailable",
        }
    }
}

/// Lifetimes and key prefixes (from `auth.sessions`).
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub access_prefix: String,
    pub refresh_prefix: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub absolute_lifetime: Duration,
}

/// A freshly issued token pair.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub access: Claims,
    pub refresh: Claims,
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionRecord {
    sub: String,
    role: String,
    access_jti: String,
    refresh_jti: String,
    /// Unix seconds when the session began (absolute lifetime counts from here).
    started: i64,
}

/// Issues, checks, renews and ends sessions.
pub struct Sessions {
    pub store: Arc<dyn SessionStore>,
    pub jwt: Jwt,
    pub settings: SessionSettings,
    /// Local cache of live sessions kept honest by Redis pub/sub (Redis store only).
    pub live: Option<Arc<super::revocation::Revocations>>,
}

fn session_key(sid: &str) -> String {
    format!("session:{sid}")
}

fn user_key(sub: &str) -> String {
    format!("user_sessions:{sub}")
}

fn new_sid() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Sessions {
    fn access_key(&self, jti: &str) -> String {
        format!("{}{jti}", self.settings.access_prefix)
    }

    fn refresh_key(&self, jti: &str) -> String {
        format!("{}{jti}", self.settings.refresh_prefix)
    }

    /// Seconds the session may still live, counting from `started`.
    fn lifetime_left(&self, started: i64, now: i64) -> Duration {
        let end = started.saturating_add(self.settings.absolute_lifetime.as_secs() as i64);
        Duration::from_secs(end.saturating_sub(now).max(0) as u64)
    }

    /// Starts a session for a user who just proved who they are.
    pub async fn start(
        &self,
        user_id: &str,
        role: &str,
        now: i64,
    ) -> Result<TokenPair, SessionError> {
        self.issue_pair(user_id, role, &new_sid(), now, now).await
    }

    async fn issue_pair(
        &self,
        sub: &str,
        role: &str,
        sid: &str,
        started: i64,
        now: i64,
    ) -> Result<TokenPair, SessionError> {
        let (access_token, access) = self.jwt.issue(sub, role, sid, TokenType::Access, now)?;
        let (refresh_token, refresh) = self.jwt.issue(sub, role, sid, TokenType::Refresh, now)?;
        let left = self.lifetime_left(started, now);
        let access_ttl = self
            .settings
            .access_ttl
            .min(left)
            .max(Duration::from_secs(1));
        let refresh_ttl = self
            .settings
            .refresh_ttl
            .min(left)
            .max(Duration::from_secs(1));
        let record = SessionRecord {
            sub: sub.into(),
            role: role.into(),
            access_jti: access.jti.clone(),
            refresh_jti: refresh.jti.clone(),
            started,
        };
        let record =
            serde_json::to_string(&record).map_err(|e| StoreError::Other(e.to_string()))?;
        self.store
            .set(&session_key(sid), &record, refresh_ttl)
            .await?;
        self.store
            .set(&self.access_key(&access.jti), sid, access_ttl)
            .await?;
        self.store
            .set(&self.refresh_key(&refresh.jti), sid, refresh_ttl)
            .await?;
        self.store
            .set_add(&user_key(sub), sid, self.settings.refresh_ttl)
            .await?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            access,
            refresh,
        })
    }

    /// Verifies an access token and its live session; slides the session forward when the
    /// key is in the second half of its TTL. Returns the claims and whether it was renewed.
    pub async fn check(&self, token: &str, now: i64) -> Result<(Claims, bool), SessionError> {
        let claims = self.jwt.verify(token, TokenType::Access, now)?;
        let key = self.access_key(&claims.jti);
        let t = std::time::Instant::now();
        let cache = self.live.as_ref().map(|l| &l.cache);
        let ttl = match cache.and_then(|c| c.get(&claims.jti, t)) {
            Some(ttl) => ttl,
            None => {
                let Some(ttl) = self.store.ttl(&key).await? else {
                    return Err(SessionError::Revoked);
                };
                if let Some(c) = cache {
                    c.put(&claims.jti, ttl, t);
                }
                ttl
            }
        };
        let mut renewed = false;
        if ttl < self.settings.access_ttl / 2 {
            // The session record knows when it began; renew within the absolute lifetime.
            if let Some(rec) = self.record(&claims.sid).await? {
                let left = self.lifetime_left(rec.started, now);
                let target = self.settings.access_ttl.min(left);
                if target > ttl {
                    renewed = self.store.expire(&key, target).await?;
                    match (renewed, cache) {
                        (true, Some(c)) => c.put(&claims.jti, target, t),
                        (false, Some(c)) => c.evict(&claims.jti),
                        _ => {}
                    }
                }
            }
        }
        Ok((claims, renewed))
    }

    /// Verifies an access token signature and claims only (store down, route fails open).
    pub fn verify_only(&self, token: &str, now: i64) -> Result<Claims, SessionError> {
        Ok(self.jwt.verify(token, TokenType::Access, now)?)
    }

    /// Re-issues the access token of a live session with the same jti (for a renewed cookie).
    pub fn reissue_access(&self, claims: &Claims, now: i64) -> Result<String, SessionError> {
        let (token, _) =
            self.jwt
                .issue_with_jti(&claims.sub, &claims.role, &claims.sid, &claims.jti, now)?;
        Ok(token)
    }

    async fn record(&self, sid: &str) -> Result<Option<SessionRecord>, SessionError> {
        Ok(self
            .store
            .get(&session_key(sid))
            .await?
            .and_then(|v| serde_json::from_str::<SessionRecord>(&v).ok()))
    }

    /// Rotates a refresh token: the old one dies, a new pair is issued for the same session.
    /// A dead refresh token whose session still lives is reuse: the session is revoked.
    pub async fn refresh(&self, refresh_token: &str, now: i64) -> Result<TokenPair, SessionError> {
        let claims = self.jwt.verify(refresh_token, TokenType::Refresh, now)?;
        let taken = self.store.take(&self.refresh_key(&claims.jti)).await?;
        let record = self.record(&claims.sid).await?;
        match (taken, record) {
            (Some(_), Some(rec)) => {
                self.store
                    .delete(&[self.access_key(&rec.access_jti)])
                    .await?;
                self.announce(&rec.access_jti).await;
                self.issue_pair(&rec.sub, &rec.role, &claims.sid, rec.started, now)
                    .await
            }
            (None, Some(_)) => {
                self.end_session(&claims.sid).await?;
                Err(SessionError::RefreshReuse {
                    user_id: claims.sub,
                })
            }
            _ => Err(SessionError::Revoked),
        }
    }

    /// Tells every instance (pub/sub) that this access token is dead; its key is gone already.
    async fn announce(&self, access_jti: &str) {
        if let Some(live) = &self.live {
            live.publish(&[access_jti.to_string()]).await;
        }
    }

    /// Ends one session: its tokens stop working on the next request.
    pub async fn end_session(&self, sid: &str) -> Result<(), SessionError> {
        if let Some(rec) = self.record(sid).await? {
            self.store
                .delete(&[
                    self.access_key(&rec.access_jti),
                    self.refresh_key(&rec.refresh_jti),
                    session_key(sid),
                ])
                .await?;
            self.store.set_remove(&user_key(&rec.sub), sid).await?;
            self.announce(&rec.access_jti).await;
        } else {
            self.store.delete(&[session_key(sid)]).await?;
        }
        Ok(())
    }

    /// Ends every session of a user; returns how many there were.
    pub async fn end_all(&self, user_id: &str) -> Result<usize, SessionError> {
        let sids = self.store.set_members(&user_key(user_id)).await?;
        for sid in &sids {
            self.end_session(sid).await?;
        }
        self.store.delete(&[user_key(user_id)]).await?;
        Ok(sids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::{Alg, JwtSettings, KeyMaterial, KeySource};
    use crate::auth::store::MemoryStore;
    use std::sync::Mutex;

    /// Sessions over an in-process store whose clock the test moves.
    fn sessions(access: u64, absolute: u64) -> (Sessions, Arc<Mutex<tokio::time::Instant>>) {
        let now = Arc::new(Mutex::new(tokio::time::Instant::now()));
        let clock = now.clone();
        let store = MemoryStore::with_clock(Arc::new(move || *clock.lock().expect("clock")));
        let jwt = Jwt::new(JwtSettings {
            alg: Alg::HS256,
            issuer: "gatehouse".into(),
            audience: "predicthealth".into(),
            access_ttl: Duration::from_secs(access),
            refresh_ttl: Duration::from_secs(absolute),
            leeway: Duration::from_secs(30),
            signing: KeySource {
                kid: None,
                material: KeyMaterial::Secret(vec![1u8; 32]),
            },
            verify_only: Vec::new(),
        })
        .expect("jwt");
        let s = Sessions {
            store: Arc::new(store),
            jwt,
            settings: SessionSettings {
                access_prefix: "access_token:".into(),
                refresh_prefix: "refresh_token:".into(),
                access_ttl: Duration::from_secs(access),
                refresh_ttl: Duration::from_secs(absolute),
                absolute_lifetime: Duration::from_secs(absolute),
            },
            live: None,
        };
        (s, now)
    }

    fn advance(clock: &Arc<Mutex<tokio::time::Instant>>, secs: u64) {
        *clock.lock().expect("clock") += Duration::from_secs(secs);
    }

    #[tokio::test]
    async fn a_use_in_the_first_half_writes_nothing_and_the_second_half_slides_the_key() {
        let (s, clock) = sessions(100, 1000);
        let t0 = 1_800_000_000;
        let pair = s.start("7", "patient", t0).await.expect("start");
        let key = format!("access_token:{}", pair.access.jti);
        advance(&clock, 30);
        let (_, renewed) = s.check(&pair.access_token, t0 + 30).await.expect("live");
        assert!(!renewed, "first half: no store write");
        advance(&clock, 40); // 70 s in: 30 s left, under half of 100 s
        let (_, renewed) = s.check(&pair.access_token, t0 + 70).await.expect("live");
        assert!(renewed);
        let ttl = s.store.ttl(&key).await.expect("ttl").expect("key");
        assert!(
            ttl > Duration::from_secs(90),
            "slid back to a full access TTL, got {ttl:?}"
        );
    }

    #[tokio::test]
    async fn renewal_never_passes_the_absolute_lifetime() {
        let (s, clock) = sessions(100, 150);
        let t0 = 1_800_000_000;
        let pair = s.start("7", "patient", t0).await.expect("start");
        let key = format!("access_token:{}", pair.access.jti);
        advance(&clock, 80);
        let (_, renewed) = s.check(&pair.access_token, t0 + 80).await.expect("live");
        assert!(renewed);
        let ttl = s.store.ttl(&key).await.expect("ttl").expect("key");
        assert!(
            ttl <= Duration::from_secs(70),
            "capped at the 150 s lifetime, got {ttl:?}"
        );
        advance(&clock, 71);
        assert!(matches!(
            s.check(&pair.access_token, t0 + 151).await,
            Err(SessionError::Revoked) | Err(SessionError::Token(_))
        ));
    }

    #[tokio::test]
    async fn a_reissued_cookie_token_keeps_the_session_key() {
        let (s, _clock) = sessions(100, 1000);
        let t0 = 1_800_000_000;
        let pair = s.start("7", "patient", t0).await.expect("start");
        let fresh = s.reissue_access(&pair.access, t0 + 60).expect("reissue");
        let (claims, _) = s.check(&fresh, t0 + 60).await.expect("live");
        assert_eq!(claims.jti, pair.access.jti);
        assert!(claims.exp > pair.access.exp);
    }
}
