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
//! full access TTL, and the refresh key and session record to the idle timeout (a few store
//! writes per half access TTL, not per request), never past the session's absolute
//! lifetime. A session nobody uses for the idle timeout is gone: its refresh key expires
//! with it. Idle timeout and absolute lifetime may differ per role. Refresh rotates both
//! tokens; a refresh token presented after its key is gone while its session lives is
//! reuse, and ends the whole session.
//!
//! Account changes (see `users::accounts`) end the sessions of a user that started before
//! the change: [`Sessions::end_all_before`].

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

/// Lifetimes and key prefixes (from `auth.sessions` and `auth.roles.ROLE.sessions`).
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub access_prefix: String,
    pub refresh_prefix: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub absolute_lifetime: Duration,
    /// A session with no activity for this long ends.
    pub idle_timeout: Duration,
    /// Per-role `(idle_timeout, absolute_lifetime)` where a role sets its own.
    pub roles: Vec<(String, RolePolicy)>,
}

/// A role's own session limits (`auth.roles.ROLE.sessions`); `None` keeps the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolePolicy {
    pub idle_timeout: Option<Duration>,
    pub absolute_lifetime: Option<Duration>,
}

impl SessionSettings {
    /// `(idle_timeout, absolute_lifetime)` for a role.
    pub fn limits(&self, role: &str) -> (Duration, Duration) {
        let own = self
            .roles
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, p)| *p)
            .unwrap_or_default();
        (
            own.idle_timeout.unwrap_or(self.idle_timeout),
            own.absolute_lifetime.unwrap_or(self.absolute_lifetime),
        )
    }

    /// The access key's full TTL for a role: never longer than its idle timeout.
    fn access_ttl_for(&self, role: &str) -> Duration {
        self.access_ttl.min(self.limits(role).0)
    }
}

/// A freshly issued token pair, with the lifetimes their keys (and cookies) got.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub access: Claims,
    pub refresh: Claims,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionRecord {
    sub: String,
    role: String,
    access_jti: String,
    refresh_jti: String,
    /// Unix seconds when the session began (absolute lifetime counts from here).
    started: i64,
    /// Unix milliseconds when the session began (account changes compare with it); absent
    /// in records of older versions: `started` then counts.
    #[serde(default)]
    started_ms: i64,
}

impl SessionRecord {
    fn started_ms(&self) -> i64 {
        if self.started_ms > 0 {
            self.started_ms
        } else {
            self.started.saturating_mul(1000)
        }
    }
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

    /// Seconds a session of `role` may still live, counting from `started`.
    fn lifetime_left(&self, role: &str, started: i64, now: i64) -> Duration {
        let absolute = self.settings.limits(role).1;
        let end = started.saturating_add(absolute.as_secs() as i64);
        Duration::from_secs(end.saturating_sub(now).max(0) as u64)
    }

    /// The refresh key's (and session record's) TTL after activity now: the idle timeout,
    /// within the refresh TTL and the absolute lifetime.
    fn refresh_ttl_for(&self, role: &str, left: Duration) -> Duration {
        let idle = self.settings.limits(role).0;
        self.settings
            .refresh_ttl
            .min(idle)
            .min(left)
            .max(Duration::from_secs(1))
    }

    /// Starts a session for a user who just proved who they are.
    pub async fn start(
        &self,
        user_id: &str,
        role: &str,
        now: i64,
    ) -> Result<TokenPair, SessionError> {
        let started_ms = super::users::unix_now_ms().max(now.saturating_mul(1000));
        self.issue_pair(user_id, role, &new_sid(), (now, started_ms), now)
            .await
    }

    async fn issue_pair(
        &self,
        sub: &str,
        role: &str,
        sid: &str,
        (started, started_ms): (i64, i64),
        now: i64,
    ) -> Result<TokenPair, SessionError> {
        let (access_token, access) = self.jwt.issue(sub, role, sid, TokenType::Access, now)?;
        let (refresh_token, refresh) = self.jwt.issue(sub, role, sid, TokenType::Refresh, now)?;
        let left = self.lifetime_left(role, started, now);
        let access_ttl = self
            .settings
            .access_ttl_for(role)
            .min(left)
            .max(Duration::from_secs(1));
        let refresh_ttl = self.refresh_ttl_for(role, left);
        let record = SessionRecord {
            sub: sub.into(),
            role: role.into(),
            access_jti: access.jti.clone(),
            refresh_jti: refresh.jti.clone(),
            started,
            started_ms,
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
            access_ttl,
            refresh_ttl,
        })
    }

    /// Verifies an access token and its live session; slides the session forward when the
    /// key is in the second half of its TTL. Returns the claims and, when it was renewed,
    /// the access key's new TTL (what a re-issued cookie's `Max-Age` must say).
    pub async fn check(
        &self,
        token: &str,
        now: i64,
    ) -> Result<(Claims, Option<Duration>), SessionError> {
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
        let mut renewed = None;
        let full = self.settings.access_ttl_for(&claims.role);
        if ttl < full / 2 {
            // The session record knows when it began; renew within the absolute lifetime.
            if let Some(rec) = self.record(&claims.sid).await? {
                let left = self.lifetime_left(&rec.role, rec.started, now);
                let target = full.min(left);
                if target > ttl {
                    let done = self.store.expire(&key, target).await?;
                    match (done, cache) {
                        (true, Some(c)) => c.put(&claims.jti, target, t),
                        (false, Some(c)) => c.evict(&claims.jti),
                        _ => {}
                    }
                    if done {
                        renewed = Some(target);
                        // Activity: the session's refresh key and record live another idle
                        // timeout from now.
                        let idle = self.refresh_ttl_for(&rec.role, left);
                        self.store
                            .expire(&self.refresh_key(&rec.refresh_jti), idle)
                            .await?;
                        self.store.expire(&session_key(&claims.sid), idle).await?;
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

    /// The claims of a well-signed refresh token (nothing is looked up or changed).
    pub fn verify_refresh(&self, refresh_token: &str, now: i64) -> Result<Claims, SessionError> {
        Ok(self.jwt.verify(refresh_token, TokenType::Refresh, now)?)
    }

    /// Rotates a refresh token: the old one dies, a new pair is issued for the same session.
    /// A dead refresh token whose session still lives is reuse: the session is revoked. A
    /// session that began before `valid_after_ms` (the user's latest account change) ends
    /// instead.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        now: i64,
        valid_after_ms: i64,
    ) -> Result<TokenPair, SessionError> {
        let claims = self.jwt.verify(refresh_token, TokenType::Refresh, now)?;
        let taken = self.store.take(&self.refresh_key(&claims.jti)).await?;
        let record = self.record(&claims.sid).await?;
        match (taken, record) {
            (Some(_), Some(rec)) if rec.started_ms() < valid_after_ms => {
                self.end_session(&claims.sid).await?;
                Err(SessionError::Revoked)
            }
            (Some(_), Some(rec)) => {
                self.store
                    .delete(&[self.access_key(&rec.access_jti)])
                    .await?;
                self.announce(&rec.access_jti).await;
                let started = (rec.started, rec.started_ms());
                self.issue_pair(&rec.sub, &rec.role, &claims.sid, started, now)
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

    /// Ends one session: its tokens stop working on the next request. `true` when this call
    /// removed the session's record (of callers racing to end it, exactly one gets `true`:
    /// counts of ended sessions add up across instances).
    pub async fn end_session(&self, sid: &str) -> Result<bool, SessionError> {
        let rec = self.record(sid).await?;
        let removed = self.store.delete(&[session_key(sid)]).await? > 0;
        if let Some(rec) = rec {
            self.store
                .delete(&[
                    self.access_key(&rec.access_jti),
                    self.refresh_key(&rec.refresh_jti),
                ])
                .await?;
            self.store.set_remove(&user_key(&rec.sub), sid).await?;
            self.announce(&rec.access_jti).await;
        }
        Ok(removed)
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

    /// Ends the sessions of a user that began before `before_ms` (unix ms: an account
    /// change); later ones (a sign-in after the change) live on. Returns how many ended.
    /// Running it again ends nothing more.
    pub async fn end_all_before(&self, user_id: &str, before_ms: i64) -> Result<u64, SessionError> {
        let mut ended = 0;
        for sid in self.store.set_members(&user_key(user_id)).await? {
            match self.record(&sid).await? {
                Some(rec) if rec.started_ms() >= before_ms => {}
                Some(_) => {
                    if self.end_session(&sid).await? {
                        ended += 1;
                    }
                }
                // Expired: only the index entry is left.
                None => self.store.set_remove(&user_key(user_id), &sid).await?,
            }
        }
        Ok(ended)
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
        sessions_with(access, absolute, absolute, Vec::new())
    }

    /// With an idle timeout and per-role limits.
    fn sessions_with(
        access: u64,
        idle: u64,
        absolute: u64,
        roles: Vec<(String, RolePolicy)>,
    ) -> (Sessions, Arc<Mutex<tokio::time::Instant>>) {
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
                idle_timeout: Duration::from_secs(idle),
                roles,
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
        assert_eq!(renewed, None, "first half: no store write");
        advance(&clock, 40); // 70 s in: 30 s left, under half of 100 s
        let (_, renewed) = s.check(&pair.access_token, t0 + 70).await.expect("live");
        assert_eq!(renewed, Some(Duration::from_secs(100)));
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
        assert_eq!(
            renewed,
            Some(Duration::from_secs(70)),
            "what the cookie must say too"
        );
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

    #[tokio::test]
    async fn activity_keeps_a_session_past_the_access_ttl_and_inactivity_ends_it() {
        // access 100 s, idle 300 s, absolute 1 h.
        let (s, clock) = sessions_with(100, 300, 3600, Vec::new());
        let t0 = 1_800_000_000;
        let pair = s.start("7", "patient", t0).await.expect("start");
        assert_eq!(pair.access_ttl, Duration::from_secs(100));
        assert_eq!(
            pair.refresh_ttl,
            Duration::from_secs(300),
            "idle, not 7 days"
        );
        // A use every 60 s for 20 minutes, with the token re-issued on each renewal as the
        // cookie is: never signed out.
        let mut t = t0;
        let mut token = pair.access_token.clone();
        for _ in 0..20 {
            advance(&clock, 60);
            t += 60;
            let (claims, renewed) = s.check(&token, t).await.expect("kept alive by activity");
            if renewed.is_some() {
                token = s.reissue_access(&claims, t).expect("reissue");
            }
        }
        let refresh_key = format!("refresh_token:{}", pair.refresh.jti);
        let left = s
            .store
            .ttl(&refresh_key)
            .await
            .expect("ttl")
            .expect("refresh key");
        assert!(
            left > Duration::from_secs(200),
            "activity slid the refresh key: {left:?}"
        );
        // Then 301 s without a request: access and refresh are both gone.
        advance(&clock, 301);
        t += 301;
        assert!(s.check(&token, t).await.is_err());
        let access_key = format!("access_token:{}", pair.access.jti);
        assert_eq!(s.store.ttl(&access_key).await.expect("ttl"), None);
        assert_eq!(s.store.ttl(&refresh_key).await.expect("ttl"), None);
        assert!(matches!(
            s.refresh(&pair.refresh_token, t, 0).await,
            Err(SessionError::Revoked)
        ));
    }

    #[tokio::test]
    async fn roles_have_their_own_idle_timeout_and_lifetime_and_refresh_never_outlives_it() {
        let admin = RolePolicy {
            idle_timeout: Some(Duration::from_secs(60)),
            absolute_lifetime: Some(Duration::from_secs(600)),
        };
        let (s, clock) = sessions_with(300, 1800, 43_200, vec![("admin".into(), admin)]);
        let t0 = 1_800_000_000;
        let a = s.start("1", "admin", t0).await.expect("admin");
        let p = s.start("2", "patient", t0).await.expect("patient");
        assert_eq!(
            a.access_ttl,
            Duration::from_secs(60),
            "capped by the admin idle"
        );
        assert_eq!(a.refresh_ttl, Duration::from_secs(60));
        assert_eq!(p.access_ttl, Duration::from_secs(300));
        assert_eq!(p.refresh_ttl, Duration::from_secs(1800));
        // Refreshing every 50 s keeps the admin signed in, but not past 600 s.
        let mut pair = a;
        let mut t = t0;
        while t + 50 < t0 + 600 {
            advance(&clock, 50);
            t += 50;
            pair = s.refresh(&pair.refresh_token, t, 0).await.expect("refresh");
            assert!(
                t + pair.refresh_ttl.as_secs() as i64 <= t0 + 600,
                "refresh outlives the absolute lifetime at {}",
                t - t0
            );
        }
        advance(&clock, t0 as u64 + 600 - t as u64 + 1);
        assert!(s.refresh(&pair.refresh_token, t0 + 601, 0).await.is_err());
        // The patient's session, idle 1800 s, still lives.
        s.check(&p.access_token, t0 + 100)
            .await
            .expect_err("access key ran out at 300 s");
        assert!(s.refresh(&p.refresh_token, t0 + 601, 0).await.is_ok());
    }

    #[tokio::test]
    async fn an_account_change_ends_the_sessions_begun_before_it_and_no_later_one() {
        let (s, clock) = sessions(100, 1000);
        let t0 = 1_800_000_000;
        let old1 = s.start("7", "patient", t0).await.expect("old");
        let old2 = s.start("7", "patient", t0).await.expect("old");
        let other = s.start("8", "patient", t0).await.expect("other user");
        advance(&clock, 1);
        let change_ms = (t0 + 1) * 1000;
        let later = s
            .start("7", "patient", t0 + 2)
            .await
            .expect("after the change");
        assert_eq!(s.end_all_before("7", change_ms).await.expect("end"), 2);
        assert_eq!(s.end_all_before("7", change_ms).await.expect("again"), 0);
        for old in [&old1, &old2] {
            assert!(matches!(
                s.check(&old.access_token, t0 + 3).await,
                Err(SessionError::Revoked)
            ));
        }
        s.check(&later.access_token, t0 + 3)
            .await
            .expect("a later sign-in lives");
        s.check(&other.access_token, t0 + 3)
            .await
            .expect("another user's lives");
        // A refresh of a session older than the user's latest change is refused and ends it.
        let (s, _clock) = sessions(100, 1000);
        let pair = s.start("7", "patient", t0).await.expect("start");
        let r = s
            .refresh(&pair.refresh_token, t0 + 5, (t0 + 1) * 1000)
            .await;
        assert!(matches!(r, Err(SessionError::Revoked)), "{r:?}");
        assert!(s.check(&pair.access_token, t0 + 5).await.is_err());
    }
}
