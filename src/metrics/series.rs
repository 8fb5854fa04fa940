//! The series a route or a pool keeps for the request path ([`RouteSeries`], [`PoolSeries`]),
//! so that the runtime tables that own them (`state`, `upstream::pool`) do not import the
//! registry, which reads those tables at scrape time.
//!
//! Layer: a leaf (Prometheus types only); must not import `state`, `upstream`, `config` or
//! any other gatehouse module.

use prometheus::IntCounter;

/// Series of one metric vector resolved once per label key and kept by their owner (a route,
/// a pool), so the request path does not resolve them again: `with_label_values` hashes
/// every label and takes the vector's lock, and a proxied request updated four series that
/// way. Keys are the varying labels (the owner's name is fixed); at most [`Series::MAX`]
/// are kept, others are resolved each time. An owner belongs to one gateway, so to one
/// registry.
pub struct Series<K, M> {
    kept: std::sync::Mutex<Vec<(K, M)>>,
}

impl<K: PartialEq + Copy, M: Clone> Series<K, M> {
    /// Keys kept per owner (methods × statuses seen, backends × outcomes).
    pub const MAX: usize = 64;

    pub fn new() -> Self {
        Series {
            kept: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The series for `key`, resolved by `resolve` the first time.
    pub fn get(&self, key: K, resolve: impl FnOnce() -> M) -> M {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, m)) = kept.iter().find(|(k, _)| *k == key) {
            return m.clone();
        }
        let m = resolve();
        if kept.len() < Self::MAX {
            kept.push((key, m.clone()));
        }
        m
    }
}

impl<K: PartialEq + Copy, M: Clone> Default for Series<K, M> {
    fn default() -> Self {
        Self::new()
    }
}

/// A route's series of `gatehouse_requests_total` (by method and status) and
/// `gatehouse_request_duration_seconds`.
#[derive(Default)]
pub struct RouteSeries {
    pub requests: Series<(&'static str, u16), IntCounter>,
    pub duration: std::sync::OnceLock<prometheus::Histogram>,
}

/// A pool's series of `gatehouse_upstream_requests_total` (by backend and outcome) and
/// `gatehouse_upstream_duration_seconds`.
#[derive(Default)]
pub struct PoolSeries {
    pub attempts: Series<(std::net::SocketAddr, &'static str), IntCounter>,
    pub duration: std::sync::OnceLock<prometheus::Histogram>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::counter;
    use prometheus::Registry;
    use std::cell::Cell;

    #[test]
    fn a_series_is_resolved_once_per_key_and_counts_land_in_the_vector() {
        let reg = Registry::new();
        let vec = counter(&reg, "t_total", "t", &["route", "status"]);
        let series: Series<u16, IntCounter> = Series::new();
        let resolved = Cell::new(0);
        let get = |status: u16| {
            series.get(status, || {
                resolved.set(resolved.get() + 1);
                vec.with_label_values(&["r", &status.to_string()])
            })
        };
        get(200).inc();
        get(200).inc();
        get(404).inc();
        assert_eq!(resolved.get(), 2, "one resolution per key");
        assert_eq!(vec.with_label_values(&["r", "200"]).get(), 2);
        assert_eq!(vec.with_label_values(&["r", "404"]).get(), 1);

        // Past the cap, keys are resolved each time and still counted.
        let cap = Series::<u16, IntCounter>::MAX as u16;
        for s in 1000..1000 + cap {
            get(s).inc();
        }
        let before = resolved.get();
        get(5000).inc();
        get(5000).inc();
        assert_eq!(resolved.get(), before + 2);
        assert_eq!(vec.with_label_values(&["r", "5000"]).get(), 2);
        assert_eq!(vec.with_label_values(&["r", "200"]).get(), 2);
    }
}
