//! Identity: users in a database, JWTs, live sessions in a store, and what the request
//! filter does with them. [`Auth`] holds the long-lived handles; it is built once at start
//! (a database or store URL change needs a restart).
//!
//! Submodules: `jwt` (tokens), `store` (Redis or in-process key-value), `sessions` (live
//! sessions on top of both), `users` (sqlx), `cookies`, `guard` (route protection),
//! `mfa` (the second factor) and `endpoints` (login, validate, refresh, logout, the second
//! step and enrolment).
//!
//! Layer: above `config`, `errors`, `forms`, `metrics` (it counts its decisions) and
//! `telemetry` (its store calls are spans of the request's trace); must not
//! import `state`, `pages`, `edge`, `plan` or `proxy`.

pub mod cookies;
pub mod endpoints;
pub mod guard;
pub mod jwt;
pub mod mfa;
pub mod revocation;
pub mod sessions;
pub mod store;
pub mod users;

use crate::config::{AuthConfig, ConfigError};
use jwt::{Alg, Jwt, JwtSettings, KeyMaterial, KeySource};
use sessions::{SessionSettings, Sessions};
use std::sync::Arc;
use store::{MemoryStore, RedisStore, SessionStore};
use users::UserDb;

/// A tokio runtime for the database pool and the Redis client, alive as long as the
/// gateway. Pingora runs its own runtimes per service; connections made here are driven
/// by this one. Dropped with `shutdown_background`, which is legal inside async contexts.
pub struct AuthRuntime(Option<tokio::runtime::Runtime>);

impl AuthRuntime {
    pub fn new() -> std::io::Result<AuthRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("gatehouse-auth")
            .enable_all()
            .build()?;
        Ok(AuthRuntime(Some(rt)))
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        self.0.as_ref().map(|rt| rt.block_on(f))
    }

    fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(rt) = &self.0 {
            drop(rt.spawn(f));
        }
    }
}

/// How often each gateway reads new account changes (`session_revocations`): a change made
/// anywhere (the CLI, another instance) ends the user's sessions here within about this.
pub const REVOCATION_POLL: std::time::Duration = std::time::Duration::from_millis(250);

impl Drop for AuthRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Everything identity needs at request time.
pub struct Auth {
    /// The Redis client of the session store, shared by distributed rate limits.
    pub redis: Option<fred::clients::Client>,
    pub users: UserDb,
    pub sessions: Sessions,
    pub config: AuthConfig,
    /// The second factor's key and rules (`auth.mfa`).
    pub mfa: mfa::Mfa,
    _runtime: Arc<AuthRuntime>,
}

impl Auth {
    /// The cookies only the gateway reads (session, refresh, CSRF, flash): never forwarded
    /// to an upstream ([`cookies::strip`]).
    pub fn own_cookies(&self) -> [&str; 5] {
        let c = &self.config.cookies;
        [
            &c.name,
            &c.refresh_name,
            cookies::CSRF_COOKIE,
            cookies::FLASH_COOKIE,
            mfa::PENDING_COOKIE,
        ]
    }
}

/// Session lifetimes and key prefixes from `auth.sessions` and `auth.roles`.
fn session_settings(cfg: &AuthConfig) -> SessionSettings {
    let s = &cfg.sessions;
    SessionSettings {
        access_prefix: s.access_prefix.clone(),
        refresh_prefix: s.refresh_prefix.clone(),
        access_ttl: s.access_ttl.0,
        refresh_ttl: s.refresh_ttl.0,
        absolute_lifetime: s.absolute_lifetime.0,
        idle_timeout: s.idle_timeout.0,
        roles: cfg
            .roles
            .iter()
            .map(|(role, r)| {
                let policy = sessions::RolePolicy {
                    idle_timeout: r.sessions.idle_timeout.map(|d| d.0),
                    absolute_lifetime: r.sessions.absolute_lifetime.map(|d| d.0),
                };
                (role.clone(), policy)
            })
            .collect(),
    }
}

/// Ends, from outside the gateways (the CLI), the sessions of `user_id` begun before
/// `before_ms` in the shared Redis store named by `redis_url`, and tells every instance over
/// pub/sub. `Ok(None)` for the in-process store (only a running gateway can reach it; it
/// applies the change from the database within [`REVOCATION_POLL`]).
pub async fn end_sessions_in_shared_store(
    cfg: &AuthConfig,
    redis_url: &str,
    user_id: i64,
    before_ms: i64,
) -> Result<Option<u64>, String> {
    let url = redis_url.trim();
    if url.is_empty() {
        return Ok(None);
    }
    let store = RedisStore::connect(url, cfg.store_timeout.0)
        .await
        .map_err(|e| e.to_string())?;
    let live = revocation::Revocations::publisher_only(store.client().clone());
    // Ending sessions signs nothing: a throwaway key serves the struct.
    let jwt = Jwt::new(JwtSettings {
        alg: Alg::HS256,
        issuer: "gatehouse".into(),
        audience: "gatehouse".into(),
        access_ttl: cfg.sessions.access_ttl.0,
        refresh_ttl: cfg.sessions.refresh_ttl.0,
        leeway: cfg.jwt.leeway.0,
        signing: KeySource {
            kid: None,
            material: KeyMaterial::Secret(rand::random::<[u8; 32]>().to_vec()),
        },
        verify_only: Vec::new(),
    })
    .map_err(|e| e.to_string())?;
    let sessions = Sessions {
        store: Arc::new(store),
        jwt,
        settings: session_settings(cfg),
        live: Some(Arc::new(live)),
    };
    sessions
        .end_all_before(&user_id.to_string(), before_ms)
        .await
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Reads a key file named in the config, with the config path in the error.
fn read_key(path: &str, at: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::one(format!("{at}: cannot read {path:?}: {e}")))
}

/// Builds the JWT signer/verifier from `auth.jwt`. An empty HS256 secret gets a random
/// per-process one (single-instance development): tokens then die on restart.
pub fn build_jwt(cfg: &AuthConfig) -> Result<Jwt, ConfigError> {
    let j = &cfg.jwt;
    let alg: Alg = j
        .algorithm
        .parse()
        .map_err(|e: String| ConfigError::one(format!("auth.jwt.algorithm: {e}")))?;
    let signing = match alg {
        Alg::HS256 => {
            let secret = if j.secret.is_empty() {
                tracing::warn!("JWT_SECRET_KEY is not set: using a random secret; tokens end when the process does");
                (0..4)
                    .flat_map(|_| rand::random::<u128>().to_le_bytes())
                    .collect()
            } else {
                j.secret.as_bytes().to_vec()
            };
            KeySource {
                kid: j.kid.clone(),
                material: KeyMaterial::Secret(secret),
            }
        }
        _ => {
            let path = j
                .private_key
                .as_deref()
                .ok_or_else(|| ConfigError::one("auth.jwt.private_key: required"))?;
            KeySource {
                kid: j.kid.clone(),
                material: KeyMaterial::PrivatePem(read_key(path, "auth.jwt.private_key")?),
            }
        }
    };
    let mut verify_only = Vec::new();
    if let (Some(path), false) = (&j.public_key, alg == Alg::HS256) {
        verify_only.push(KeySource {
            kid: j.kid.clone(),
            material: KeyMaterial::PublicPem(read_key(path, "auth.jwt.public_key")?),
        });
    }
    for (i, k) in j.verify_keys.iter().enumerate() {
        let at = format!("auth.jwt.verify_keys[{i}]");
        let material = match (alg, &k.secret, &k.public_key) {
            (Alg::HS256, Some(s), _) => KeyMaterial::Secret(s.as_bytes().to_vec()),
            (Alg::HS256, None, _) => {
                return Err(ConfigError::one(format!("{at}.secret: required for HS256")))
            }
            (_, _, Some(p)) => KeyMaterial::PublicPem(read_key(p, &format!("{at}.public_key"))?),
            (_, _, None) => {
                return Err(ConfigError::one(format!(
                    "{at}.public_key: required for {alg:?}"
                )))
            }
        };
        verify_only.push(KeySource {
            kid: Some(k.kid.clone()),
            material,
        });
    }
    Jwt::new(JwtSettings {
        alg,
        issuer: j.issuer.clone(),
        audience: j.audience.clone(),
        access_ttl: cfg.sessions.access_ttl.0,
        refresh_ttl: cfg.sessions.refresh_ttl.0,
        leeway: j.leeway.0,
        signing,
        verify_only,
    })
    .map_err(|e| ConfigError::one(format!("auth.jwt: {e}")))
}

impl Auth {
    /// Connects the database (migrating it when configured) and the session store.
    /// A database that cannot be reached is an error; a Redis that is down is not (the
    /// gateway starts, public routes work, protected ones fail closed until it returns).
    pub fn build(
        cfg: &AuthConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Auth, ConfigError> {
        let jwt = build_jwt(cfg)?;
        let mfa = mfa::Mfa::from_config(cfg)?;
        let runtime = Arc::new(
            AuthRuntime::new().map_err(|e| ConfigError::one(format!("auth: runtime: {e}")))?,
        );
        let url = cfg.database_url.trim();
        let (users, store, redis, live) = runtime
            .block_on(async {
                let users = UserDb::connect((!url.is_empty()).then_some(url))
                    .await
                    .map_err(|e| ConfigError::one(format!("auth.database_url: {e}")))?;
                if cfg.migrate_on_start {
                    users
                        .migrate()
                        .await
                        .map_err(|e| ConfigError::one(format!("auth: migrations failed: {e}")))?;
                }
                let mut redis = None;
                let store: Arc<dyn SessionStore> = if cfg.redis_url.trim().is_empty() {
                    Arc::new(MemoryStore::new())
                } else {
                    let r = RedisStore::connect(cfg.redis_url.trim(), cfg.store_timeout.0)
                        .await
                        .map_err(|e| ConfigError::one(format!("auth.redis_url: {e}")))?;
                    redis = Some(r.client().clone());
                    Arc::new(r)
                };
                let store: Arc<dyn SessionStore> = Arc::new(Instrumented {
                    inner: store,
                    metrics,
                });
                let live = match &redis {
                    Some(client) => {
                        let url = cfg.redis_url.trim();
                        match revocation::Revocations::start(url, client.clone(), std::time::Duration::from_secs(60)).await {
                            Ok(r) => Some(Arc::new(r)),
                            Err(e) => {
                                tracing::warn!(error = %e, "no session revocation channel; every check goes to Redis");
                                None
                            }
                        }
                    }
                    None => None,
                };
                Ok::<_, ConfigError>((users, store, redis, live))
            })
            .ok_or_else(|| ConfigError::one("auth: runtime unavailable"))??;
        tracing::info!(
            database = users.backend(),
            store = store.kind(),
            "identity ready"
        );
        let sessions = Sessions {
            store,
            jwt,
            settings: session_settings(cfg),
            live,
        };
        Ok(Auth {
            redis,
            users,
            sessions,
            config: cfg.clone(),
            mfa,
            _runtime: runtime,
        })
    }

    /// Runs `f` on the auth runtime and waits for it (CLI commands).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        self._runtime.block_on(f)
    }

    /// Ends, in this instance's session store, the sessions of users whose account changed
    /// (disabled, new password or role, deleted, sessions revoked: `session_revocations`,
    /// written by the CLI or by any instance), every [`REVOCATION_POLL`]. At start it goes
    /// back one absolute lifetime, so a change made while this instance (or Redis) was down
    /// is still applied. A store or database failure leaves the cursor where it was: the
    /// same rows are tried again on the next tick. The task holds the gateway weakly and
    /// stops with it.
    pub fn watch_revocations(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self._runtime.spawn(async move {
            let mut cursor = None;
            let mut failing = false;
            let mut tick = tokio::time::interval(REVOCATION_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(auth) = weak.upgrade() else {
                    return;
                };
                match auth.apply_revocations(&mut cursor).await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("account changes are applied to sessions again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "account changes cannot be applied to sessions now; retrying");
                    }
                    Err(_) => {}
                }
            }
        });
    }

    async fn apply_revocations(&self, cursor: &mut Option<i64>) -> Result<(), String> {
        let after = match *cursor {
            Some(c) => c,
            None => {
                let s = &self.sessions.settings;
                let longest = s
                    .roles
                    .iter()
                    .filter_map(|(_, p)| p.absolute_lifetime)
                    .fold(s.absolute_lifetime, std::cmp::max);
                let since = users::unix_now_ms()
                    .saturating_sub(i64::try_from(longest.as_millis()).unwrap_or(i64::MAX));
                let c = self
                    .users
                    .revocation_cursor(since)
                    .await
                    .map_err(|e| e.to_string())?;
                *cursor = Some(c);
                c
            }
        };
        let rows = self
            .users
            .revocations_after(after, 500)
            .await
            .map_err(|e| e.to_string())?;
        for r in rows {
            let ended = self
                .sessions
                .end_all_before(&r.user_id.to_string(), r.at_ms)
                .await
                .map_err(|e| e.to_string())?;
            if ended > 0 {
                tracing::info!(
                    user_id = r.user_id,
                    ended,
                    "account changed: sessions ended"
                );
                if let Some(event) = r.event_id {
                    if let Err(e) = self.users.add_sessions_ended(event, ended).await {
                        tracing::warn!(error = %e, "sessions ended but not counted in auth_events");
                    }
                }
            }
            *cursor = Some(r.id);
        }
        Ok(())
    }
}

/// A session store that times every call and counts failures.
struct Instrumented {
    inner: Arc<dyn SessionStore>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Instrumented {
    async fn timed<T>(
        &self,
        op: &str,
        f: impl std::future::Future<Output = Result<T, store::StoreError>>,
    ) -> Result<T, store::StoreError> {
        let start = std::time::Instant::now();
        let r = f.await;
        self.metrics
            .session_store_duration_seconds
            .with_label_values(&[op])
            .observe(start.elapsed().as_secs_f64());
        if r.is_err() {
            self.metrics.session_store_errors_total.inc();
        }
        r
    }
}

#[async_trait::async_trait]
impl SessionStore for Instrumented {
    async fn set(
        &self,
        key: &str,
        value: &str,
        ttl: std::time::Duration,
    ) -> Result<(), store::StoreError> {
        self.timed("set", self.inner.set(key, value, ttl)).await
    }
    async fn get(&self, key: &str) -> Result<Option<String>, store::StoreError> {
        self.timed("get", self.inner.get(key)).await
    }
    async fn ttl(&self, key: &str) -> Result<Option<std::time::Duration>, store::StoreError> {
        self.timed("ttl", self.inner.ttl(key)).await
    }
    async fn expire(&self, key: &str, ttl: std::time::Duration) -> Result<bool, store::StoreError> {
        self.timed("expire", self.inner.expire(key, ttl)).await
    }
    async fn delete(&self, keys: &[String]) -> Result<u64, store::StoreError> {
        self.timed("delete", self.inner.delete(keys)).await
    }
    async fn take(&self, key: &str) -> Result<Option<String>, store::StoreError> {
        self.timed("take", self.inner.take(key)).await
    }
    async fn set_add(
        &self,
        key: &str,
        member: &str,
        ttl: std::time::Duration,
    ) -> Result<(), store::StoreError> {
        self.timed("set_add", self.inner.set_add(key, member, ttl))
            .await
    }
    async fn set_remove(&self, key: &str, member: &str) -> Result<(), store::StoreError> {
        self.timed("set_remove", self.inner.set_remove(key, member))
            .await
    }
    async fn set_members(&self, key: &str) -> Result<Vec<String>, store::StoreError> {
        self.timed("set_members", self.inner.set_members(key)).await
    }
    async fn incr(&self, key: &str, ttl: std::time::Duration) -> Result<u64, store::StoreError> {
        self.timed("incr", self.inner.incr(key, ttl)).await
    }
    async fn ping(&self) -> Result<(), store::StoreError> {
        self.timed("ping", self.inner.ping()).await
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
