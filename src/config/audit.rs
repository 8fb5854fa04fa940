//! `audit:` — the access audit's retention, queue and batching; and the per-route and
//! per-page `audit` mode (`false`, `true` or `"required"`).

use serde::Deserialize;

use super::Dur;

/// `routes[i].audit`, `web.pages[i].audit`: whether requests there are recorded in the
/// access audit (`access_audit` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditMode {
    /// Not recorded (`false`, the default).
    #[default]
    Off,
    /// Recorded; when the audit cannot take the row (queue full, database down) the request
    /// is still served and the loss counted (`true`).
    On,
    /// Recorded; while the audit cannot take rows the request is refused with 503 instead of
    /// being served unaudited (`"required"`).
    Required,
}

impl AuditMode {
    /// Requests here are recorded.
    pub fn is_on(self) -> bool {
        self != AuditMode::Off
    }
}

impl<'de> Deserialize<'de> for AuditMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = AuditMode;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("false, true or \"required\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<AuditMode, E> {
                Ok(if v { AuditMode::On } else { AuditMode::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AuditMode, E> {
                match v {
                    "required" => Ok(AuditMode::Required),
                    "true" => Ok(AuditMode::On),
                    "false" => Ok(AuditMode::Off),
                    other => Err(E::custom(format!(
                        "unknown audit mode {other:?}: use false, true or \"required\""
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `audit:` — how access audit rows are queued, written and kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Rows older than this are purged (hourly, and by `gatehouse audit purge`). Default 6y
    /// (HIPAA's six years).
    pub retention: Dur,
    /// Rows waiting to be written; more are dropped and counted. Default 10000.
    pub queue_capacity: usize,
    /// Rows written per transaction, at most. Default 500.
    pub batch_size: usize,
    /// Longest a row waits in the queue before its batch is written. Default 1s.
    pub flush_interval: Dur,
    /// How often the writer purges rows past `retention`. Default 1h.
    pub purge_interval: Dur,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: Dur::secs(6 * 365 * 86_400),
            queue_capacity: 10_000,
            batch_size: 500,
            flush_interval: Dur::secs(1),
            purge_interval: Dur::secs(3600),
        }
    }
}

impl AuditConfig {
    /// Problems of this block, each prefixed with `at`.
    pub fn validate(&self, at: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.retention.0.as_secs() < 86_400 {
            p.push(format!("{at}.retention: must be at least 1d"));
        }
        if !(1..=1_000_000).contains(&self.queue_capacity) {
            p.push(format!(
                "{at}.queue_capacity: must be between 1 and 1000000"
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            p.push(format!("{at}.batch_size: must be between 1 and 10000"));
        }
        if self.flush_interval.0.is_zero() {
            p.push(format!("{at}.flush_interval: must be greater than 0"));
        }
        if self.purge_interval.0.as_secs() < 1 {
            p.push(format!("{at}.purge_interval: must be at least 1s"));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct R {
        #[serde(default)]
        audit: AuditMode,
    }

    fn mode(yaml: &str) -> Result<AuditMode, String> {
        serde_yaml::from_str::<R>(yaml)
            .map(|r| r.audit)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_mode_is_a_bool_or_required() {
        assert_eq!(mode("{}"), Ok(AuditMode::Off));
        assert_eq!(mode("audit: false"), Ok(AuditMode::Off));
        assert_eq!(mode("audit: true"), Ok(AuditMode::On));
        assert_eq!(mode("audit: required"), Ok(AuditMode::Required));
        assert!(mode("audit: always")
            .unwrap_err()
            .contains("unknown audit mode"));
    }

    #[test]
    fn defaults_keep_six_years_and_bad_values_name_their_key() {
        let d = AuditConfig::default();
        assert_eq!(d.retention.0.as_secs(), 6 * 365 * 86_400);
        assert!(d.validate("audit").is_empty());
        let bad = AuditConfig {
            retention: Dur::secs(60),
            queue_capacity: 0,
            batch_size: 0,
            flush_interval: Dur::secs(0),
            purge_interval: Dur::secs(0),
        };
        let p = bad.validate("audit");
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p[0].starts_with("audit.retention"));
    }
}
