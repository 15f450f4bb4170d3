//! A mergeable latency sketch with bounded relative error (DDSketch-style).
//!
//! Values land in logarithmic buckets `γ^(i-1) < v ≤ γ^i` with γ = 1.02, so any quantile
//! is returned within about 1% of the true value, and two sketches merge by adding
//! their bucket counts — which is how per-second rollups combine into any time window.

const GAMMA: f64 = 1.02;

/// Latency sketch over non-negative values (nanoseconds). Its buckets are one sorted array:
/// a second of one edge fills a handful, and finding one is a search in a cache line or two
/// where a tree of nodes took a load per level (the rollups add one value per request).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sketch {
    /// `(i, count)` by `i`, counts above zero.
    buckets: Vec<(i32, u64)>,
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
        self.count_in((value.ln() / GAMMA.ln()).ceil() as i32, 1);
    }

    /// Adds every value of `other`. A window's total takes one second's few buckets at a
    /// time, each found in place (rebuilding the total per merge cost three times a tree's).
    pub fn merge(&mut self, other: &Self) {
        self.count += other.count;
        self.zeros += other.zeros;
        for &(index, n) in &other.buckets {
            self.count_in(index, n);
        }
    }

    /// Adds `n` to bucket `index`.
    fn count_in(&mut self, index: i32, n: u64) {
        match self.buckets.binary_search_by_key(&index, |b| b.0) {
            Ok(at) => self.buckets[at].1 += n,
            Err(at) => self.buckets.insert(at, (index, n)),
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
        for &(i, n) in &self.buckets {
            seen += n;
            if seen > rank {
                // The bucket's midpoint in relative terms: 2γ^i / (γ + 1).
                return Some(2.0 * GAMMA.powi(i) / (GAMMA + 1.0));
            }
        }
        self.buckets.last().map(|&(i, _)| GAMMA.powi(i))
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

        // Disjoint ranges, either side empty, zeros.
        let (mut low, mut high, mut both) = (Sketch::default(), Sketch::default(), Sketch::default());
        for x in [0.5, 10.0, 20.0, 1e9, 2e9] {
            if x < 100.0 { low.add(x) } else { high.add(x) }
            both.add(x);
        }
        let mut merged = high.clone();
        merged.merge(&low);
        merged.merge(&Sketch::default());
        assert_eq!(merged, both);
        let mut empty = Sketch::default();
        empty.merge(&both);
        assert_eq!(empty, both);
        assert!(both.buckets.windows(2).all(|w| w[0].0 < w[1].0), "buckets stay sorted");

        // A long window: many one-second sketches of a few values each merged into a total
        // that grows to hundreds of buckets, against all the values added to one.
        let (mut total, mut all) = (Sketch::default(), Sketch::default());
        for second in 0..3_600u32 {
            let mut one = Sketch::default();
            for k in 0..4 {
                let x = f64::from((second * 7919 + k * 104_729) % 20_000_000 + 20_000);
                one.add(x);
                all.add(x);
            }
            total.merge(&one);
        }
        assert_eq!(total, all);
        assert!(total.buckets.len() > 300, "{} buckets", total.buckets.len());
    }
}
