//! Which traces are recorded: the OpenTelemetry SDK samplers named by
//! `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (or `telemetry.sampler` and
//! `telemetry.sampler_arg`). The decision is made once, for the request's server span;
//! every span below it follows (and the `sampled` flag sent upstream says so).

use super::context::{SpanContext, TraceId};

/// A sampler of the OpenTelemetry SDK specification ("Built-in samplers").
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Records a trace when its id falls within the ratio (0.0 ..= 1.0).
    TraceIdRatio(f64),
    /// Follows the parent's `sampled` flag when there is a parent; the inner sampler decides
    /// for new traces.
    ParentBased(Root),
}

/// The root sampler of a parent-based one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

impl Default for Sampler {
    /// `parentbased_always_on`, the specification's default.
    fn default() -> Self {
        Sampler::ParentBased(Root::AlwaysOn)
    }
}

/// The sampler names, as `OTEL_TRACES_SAMPLER` spells them.
pub const NAMES: &[&str] = &[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

impl Sampler {
    /// The sampler named `name` (empty: the default) with `ratio`, the argument of the
    /// `traceidratio` ones (1 when absent; ignored by the others). Errors say what is wrong
    /// without naming where it came from: the caller prefixes the variable or config path.
    pub fn from_name(name: &str, ratio: Option<f64>) -> Result<Sampler, SamplerError> {
        let ratio = || match ratio {
            None => Ok(1.0),
            Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
            Some(r) => Err(SamplerError::Ratio(r.to_string())),
        };
        Ok(match name.trim() {
            "" | "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatio(ratio()?),
            "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
            "parentbased_traceidratio" => Sampler::ParentBased(Root::TraceIdRatio(ratio()?)),
            other => return Err(SamplerError::Unknown(other.to_string())),
        })
    }

    /// `OTEL_TRACES_SAMPLER_ARG` as a ratio (empty: none).
    pub fn parse_ratio(arg: &str) -> Result<Option<f64>, SamplerError> {
        let arg = arg.trim();
        if arg.is_empty() {
            return Ok(None);
        }
        match arg.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(Some(r)),
            _ => Err(SamplerError::Ratio(arg.to_string())),
        }
    }

    /// Whether a new span of trace `trace_id` with `parent` (a caller's span context, if
    /// any) is recorded.
    pub fn should_sample(&self, parent: Option<&SpanContext>, trace_id: &TraceId) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::TraceIdRatio(r) => ratio_decides(*r, trace_id),
            Sampler::ParentBased(root) => match parent {
                Some(p) => p.sampled,
                None => match root {
                    Root::AlwaysOn => true,
                    Root::AlwaysOff => false,
                    Root::TraceIdRatio(r) => ratio_decides(*r, trace_id),
                },
            },
        }
    }
}

/// A sampler name or argument that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    #[error("unknown sampler {0:?} (one of {names})", names = crate::config::telemetry::SAMPLERS.join(", "))]
    Unknown(String),
    #[error("{0:?} is not a ratio from 0 to 1")]
    Ratio(String),
}

/// Deterministic in the trace id, so every service sampling by ratio keeps the same traces:
/// the id's last 8 bytes (the random part in W3C level 2) against the ratio of 2^63, as the
/// OpenTelemetry SDKs (Go, Java, Rust) compare them.
fn ratio_decides(ratio: f64, trace_id: &TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id.0[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    x < bound
}

#[cfg(test)]
mod tests {

    #[test]
    fn every_sampler_name_the_config_accepts_is_one_this_module_builds() {
        for name in crate::config::telemetry::SAMPLERS {
            assert!(Sampler::from_name(name, Some(0.5)).is_ok(), "{name}");
        }
        let err = Sampler::from_name("parentbased_sometimes", None).unwrap_err();
        for name in crate::config::telemetry::SAMPLERS {
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    use super::*;
    use crate::telemetry::context::SpanId;

    fn parent(sampled: bool) -> SpanContext {
        SpanContext {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([9; 8]),
            sampled,
        }
    }

    #[test]
    fn names_and_arguments_are_read_as_the_specification_spells_them() {
        assert_eq!(Sampler::from_name("", None), Ok(Sampler::default()));
        assert_eq!(
            Sampler::from_name("parentbased_always_on", Some(0.1)),
            Ok(Sampler::ParentBased(Root::AlwaysOn))
        );
        assert_eq!(Sampler::from_name("always_on", None), Ok(Sampler::AlwaysOn));
        assert_eq!(
            Sampler::from_name("always_off", None),
            Ok(Sampler::AlwaysOff)
        );
        assert_eq!(
            Sampler::from_name("traceidratio", Some(0.25)),
            Ok(Sampler::TraceIdRatio(0.25))
        );
        assert_eq!(
            Sampler::from_name("traceidratio", None),
            Ok(Sampler::TraceIdRatio(1.0))
        );
        assert_eq!(
            Sampler::from_name("parentbased_always_off", None),
            Ok(Sampler::ParentBased(Root::AlwaysOff))
        );
        assert_eq!(
            Sampler::from_name("parentbased_traceidratio", Some(0.5)),
            Ok(Sampler::ParentBased(Root::TraceIdRatio(0.5)))
        );
        assert!(matches!(
            Sampler::from_name("sometimes", None),
            Err(SamplerError::Unknown(_))
        ));
        assert!(matches!(
            Sampler::from_name("traceidratio", Some(1.5)),
            Err(SamplerError::Ratio(_))
        ));
        assert_eq!(Sampler::parse_ratio(" 0.5 "), Ok(Some(0.5)));
        assert_eq!(Sampler::parse_ratio(""), Ok(None));
        assert!(matches!(
            Sampler::parse_ratio("half"),
            Err(SamplerError::Ratio(_))
        ));
        assert!(matches!(
            Sampler::parse_ratio("-0.1"),
            Err(SamplerError::Ratio(_))
        ));
        for n in NAMES {
            assert!(Sampler::from_name(n, None).is_ok(), "{n}");
        }
    }

    #[test]
    fn parent_based_samplers_follow_the_parent_and_decide_new_traces_by_their_root() {
        let id = TraceId::random();
        for root in [Root::AlwaysOn, Root::AlwaysOff, Root::TraceIdRatio(0.0)] {
            let s = Sampler::ParentBased(root);
            assert!(s.should_sample(Some(&parent(true)), &id), "{root:?}");
            assert!(!s.should_sample(Some(&parent(false)), &id), "{root:?}");
        }
        assert!(Sampler::ParentBased(Root::AlwaysOn).should_sample(None, &id));
        assert!(!Sampler::ParentBased(Root::AlwaysOff).should_sample(None, &id));
        assert!(!Sampler::ParentBased(Root::TraceIdRatio(0.0)).should_sample(None, &id));
        assert!(Sampler::ParentBased(Root::TraceIdRatio(1.0)).should_sample(None, &id));
    }

    #[test]
    fn non_parent_based_samplers_ignore_the_parent() {
        let id = TraceId::random();
        assert!(Sampler::AlwaysOn.should_sample(Some(&parent(false)), &id));
        assert!(!Sampler::AlwaysOff.should_sample(Some(&parent(true)), &id));
        assert!(!Sampler::TraceIdRatio(0.0).should_sample(Some(&parent(true)), &id));
    }

    #[test]
    fn ratio_sampling_keeps_about_the_ratio_and_is_deterministic_in_the_trace_id() {
        let s = Sampler::TraceIdRatio(0.25);
        let ids: Vec<TraceId> = (0..20_000).map(|_| TraceId::random()).collect();
        let kept = ids.iter().filter(|id| s.should_sample(None, id)).count();
        // 20,000 draws at p = 0.25: the standard deviation is ~61; allow ±6 of it.
        assert!((4_634..=5_366).contains(&kept), "kept {kept} of 20000");
        for id in &ids[..100] {
            assert_eq!(s.should_sample(None, id), s.should_sample(None, id));
        }
        // A lower ratio keeps a subset of what a higher one keeps.
        let low = Sampler::TraceIdRatio(0.1);
        assert!(ids
            .iter()
            .filter(|id| low.should_sample(None, id))
            .all(|id| s.should_sample(None, id)));
        // The extremes.
        let mut max = TraceId([0xff; 16]);
        assert!(!Sampler::TraceIdRatio(0.999).should_sample(None, &max));
        assert!(Sampler::TraceIdRatio(1.0).should_sample(None, &max));
        max.0[8..].copy_from_slice(&[0; 8]);
        assert!(Sampler::TraceIdRatio(0.001).should_sample(None, &max));
        assert!(!Sampler::TraceIdRatio(0.0).should_sample(None, &max));
    }
}
