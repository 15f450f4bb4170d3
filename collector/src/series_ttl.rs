//! Idle-series expiry: remembers when each label set of a metric family was last updated,
//! so series of edges that have gone quiet can be removed and cardinality does not grow
//! forever. A removed counter that comes back starts again from zero, which Prometheus
//! reads as a counter reset.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Last-update times of one family's label sets.
#[derive(Debug)]
pub struct LastSeen<L> {
    seen: Mutex<HashMap<L, Instant>>,
}

impl<L> Default for LastSeen<L> {
    fn default() -> Self {
        Self { seen: Mutex::new(HashMap::new()) }
    }
}

impl<L: Clone + Eq + Hash> LastSeen<L> {
    /// Marks `labels` as updated now.
    pub fn touch(&self, labels: &L) {
        let now = Instant::now();
        let Ok(mut seen) = self.seen.lock() else { return };
        match seen.get_mut(labels) {
            Some(at) => *at = now,
            None => {
                seen.insert(labels.clone(), now);
            }
        }
    }

    /// Forgets and returns the label sets not updated within `ttl`.
    pub fn expire(&self, ttl: Duration) -> Vec<L> {
        let Ok(mut seen) = self.seen.lock() else { return Vec::new() };
        let now = Instant::now();
        let idle: Vec<L> = seen.iter().filter(|(_, at)| now.duration_since(**at) > ttl).map(|(l, _)| l.clone()).collect();
        for labels in &idle {
            seen.remove(labels);
        }
        idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idle_label_sets_expire() {
        let seen = LastSeen::default();
        seen.touch(&"old");
        std::thread::sleep(Duration::from_millis(30));
        seen.touch(&"fresh");
        assert_eq!(seen.expire(Duration::from_millis(15)), vec!["old"]);
        assert!(seen.expire(Duration::from_millis(15)).is_empty(), "forgotten once expired");
        assert_eq!(seen.expire(Duration::ZERO), vec!["fresh"]);
    }
}
