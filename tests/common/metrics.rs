//! Reading the Prometheus exposition on a gateway's admin listener.

use super::upstream_and_client::{get, poll_until};
use std::time::Duration;

/// The `/metrics` text of the admin listener on `admin_port`.
pub fn scrape(admin_port: u16) -> String {
    let r = get(admin_port, "/metrics", &[]).unwrap_or_else(|e| panic!("GET admin /metrics: {e}"));
    assert_eq!(r.status, 200, "admin /metrics: {}", r.text());
    r.text()
}

/// Values of every sample of metric `name` carrying all `labels` (other labels may differ).
pub fn samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (label_part, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None, // a longer metric name sharing this prefix
            };
            let all = labels
                .iter()
                .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.split_whitespace().next()?.parse::<f64>().ok())?
        })
        .collect()
}

/// Sum of the samples of `name` with `labels` in `text` (0 when there are none).
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name, labels).iter().sum()
}

/// Sum of the samples of `name` with `labels`, scraped now from `admin_port` (0 if absent).
pub fn metric(admin_port: u16, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(&scrape(admin_port), name, labels)
}

/// Polls the metric until it equals `want` (within 5 s); returns the last value seen.
pub fn wait_metric(admin_port: u16, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let poll = || metric(admin_port, name, labels);
    poll_until(Duration::from_secs(5), poll, |v| *v == want).1
}
