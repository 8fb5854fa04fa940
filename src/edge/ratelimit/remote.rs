//! The Redis backend: GCRA in one Lua script per check, so every gateway instance shares the
//! limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::prelude::Options;
use fred::types::{ClusterHash, CustomCommand};

use super::{Decision, Params, GUARD_MARGIN, REDIS_TIMEOUT};

/// GCRA in microseconds on Redis' clock. ARGV: interval, capacity. Returns
/// `{allowed, remaining, reset, retry_after}` (µs). Numbers are formatted with `%.0f`: Lua's
/// own number-to-string keeps only 14 digits, and a TAT in µs has 16.
const GCRA_SCRIPT: &str = "\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local backlog = 0
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat then backlog = math.min(math.max(tat - now, 0), cap) end
local nxt = backlog + interval
if nxt > cap then return {0, 0, backlog, nxt - cap} end
redis.call('SET', KEYS[1], string.format('%.0f', now + nxt),
  'PX', string.format('%.0f', math.ceil(nxt / 1000)))
return {1, math.floor((cap - nxt) / interval), nxt, 0}";

pub(super) struct Remote {
    pub(super) client: Client,
    pub(super) options: Options,
    /// `ratelimit:<name>:`
    pub(super) prefix: String,
    pub(super) interval_us: String,
    pub(super) capacity_us: String,
    pub(super) failing: AtomicBool,
}

impl Remote {
    pub(super) async fn check(&self, name: &str, key: &str, p: &Params) -> Decision {
        let key = format!("{}{key}", self.prefix);
        // Sent as a custom EVAL: fred 10.1's `eval` on `WithOptions` drops the per-command
        // options, and with them fail-fast and the timeout (see auth/store.rs).
        let slot = ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes()));
        let cmd = CustomCommand::new_static("EVAL", slot, false);
        let argv = vec![GCRA_SCRIPT, "1", &key, &self.interval_us, &self.capacity_us];
        let c = self.client.with_options(&self.options);
        let fut = c.custom::<Vec<i64>, &str>(cmd, argv);
        let error = match tokio::time::timeout(REDIS_TIMEOUT + GUARD_MARGIN, fut).await {
            Ok(Ok(v)) => match decode(&v, p) {
                Some(d) => {
                    if self.failing.load(Ordering::Relaxed)
                        && self.failing.swap(false, Ordering::Relaxed)
                    {
                        tracing::info!(limiter = %name, "rate limit: redis answers again");
                    }
                    return d;
                }
                None => format!("unexpected reply {v:?}"),
            },
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".into(),
        };
        if self.failing.swap(true, Ordering::Relaxed) {
            tracing::debug!(limiter = %name, %error, "rate limit: redis check failed");
        } else {
            tracing::warn!(limiter = %name, %error, "rate limit: redis check failed");
        }
        Decision::StoreError
    }
}

pub(super) fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// The script's reply as a decision.
pub(super) fn decode(v: &[i64], p: &Params) -> Option<Decision> {
    match *v {
        [1, remaining, reset, _] => Some(Decision::Allow {
            limit: p.rate,
            remaining: u32::try_from(remaining).ok()?,
            reset: micros(reset),
        }),
        [0, _, reset, retry] => Some(Decision::Deny {
            limit: p.rate,
            retry_after: micros(retry),
            reset: micros(reset),
        }),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Limiter
// ---------------------------------------------------------------------------------------------
