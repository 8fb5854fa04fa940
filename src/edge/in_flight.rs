//! Requests in flight per client ip on one route (`routes[i].max_in_flight_per_client`): a
//! client over its share gets 429 while other clients keep being served. The route-wide
//! limit (`max_in_flight`, 503) is a plain counter on the route.
//!
//! A slot is taken in `request_filter` and given back in `logging`, which Pingora calls for
//! every request that got that far, so a slot is never leaked by an early answer or an error.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Per-client counters of one route.
pub struct ClientSlots {
    max: u32,
    counts: Mutex<HashMap<IpAddr, u32>>,
}

impl ClientSlots {
    pub fn new(max: u32) -> ClientSlots {
        ClientSlots {
            max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot for `ip`; false when it already has `max` requests in flight.
    pub fn try_take(&self, ip: IpAddr) -> bool {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back a slot taken by [`ClientSlots::try_take`]; idle clients leave the map.
    pub fn release(&self, ip: IpAddr) {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }

    /// Clients with at least one request in flight.
    pub fn clients(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_own_share() {
        let s = ClientSlots::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(s.try_take(a));
        assert!(s.try_take(a));
        assert!(!s.try_take(a), "third request of a is over its share");
        assert!(s.try_take(b), "b is not affected by a");
        s.release(a);
        assert!(s.try_take(a), "a released one slot");
    }

    #[test]
    fn released_clients_leave_no_entry_behind() {
        let s = ClientSlots::new(1);
        let a: IpAddr = "::1".parse().unwrap();
        assert!(s.try_take(a));
        s.release(a);
        s.release(a); // an extra release never underflows
        assert_eq!(s.clients(), 0);
    }
}
