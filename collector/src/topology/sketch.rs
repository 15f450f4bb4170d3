//! A mergeable latency sketch with bounded relative error (DDSketch-style).
//!
//! Values land in logarithmic buckets `γ^(i-1) < v ≤ γ^i` with γ = 1.02, so any quantile
//! is returned within about 1% of the true value, and two sketches merge by adding
//! their bucket counts — which is how per-second rollups combine into any time window.

use std::collections::BTreeMap;

const GAMMA: f64 = 1.02;

/// Latency sketch over non-negative values (nanoseconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sketch {
    buckets: BTreeMap<i32, u64>,
    zeros: u64,
    count: u64,
}

impl Sketch {
    /// Adds one value.
    pub fn add(&mut self, value: f64) {
        self.count += 1;
        if value <= 1.0 {
            self.zeros += 1;
            return;
        }
        let index = (value.ln() / GAMMA.ln()).ceil() as i32;
        *self.buckets.entry(index).or_default() += 1;
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Self) {
        self.count += other.count;
        self.zeros += other.zeros;
        for (i, n) in &other.buckets {
            *self.buckets.entry(*i).or_default() += n;
        }
    }

    /// Values added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0..=1), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).round() as u64;
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        for (i, n) in &self.buckets {
            seen += n;
            if seen > rank {
                // The bucket's midpoint in relative terms: 2γ^i / (γ + 1).
                return Some(2.0 * GAMMA.powi(*i) / (GAMMA + 1.0));
            }
        }
        self.buckets.keys().next_back().map(|i| GAMMA.powi(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_relative_error() {
        let mut s = Sketch::default();
        for v in 1..=10_000 {
            s.add(f64::from(v) * 1000.0);
        }
        for (q, expected) in [(0.5, 5_000_000.0), (0.9, 9_000_000.0), (0.99, 9_900_000.0)] {
            let got = s.quantile(q).expect("non-empty");
            assert!((got - expected).abs() / expected < 0.02, "q{q}: {got} vs {expected}");
        }
    }

    #[test]
    fn merging_equals_adding_everything_to_one() {
        let (mut a, mut b, mut all) = (Sketch::default(), Sketch::default(), Sketch::default());
        for v in 0..500 {
            let x = f64::from(v * 37 % 1000) * 1e4;
            if v % 2 == 0 { a.add(x) } else { b.add(x) }
            all.add(x);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(Sketch::default().quantile(0.5), None);
    }
}
