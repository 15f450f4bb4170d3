//! How late an edge's requests reach the rollups: the seconds between the second a request
//! started (the second it is counted in) and the second it arrived, over the last one to two
//! minutes. A chart stops short of now by as much, so that seconds whose requests are still
//! on their way are not drawn as a dip. A sidecar's requests arrive within a second or two;
//! an SDK's come in batches (every 5 s by default) and wait for the other side of their hop,
//! and a span whose other side never comes waits for the whole match window.

/// Lags counted one by one: 0 to 30 seconds, and the last for anything later.
pub const SLOTS: usize = 32;

/// One edge's arrivals by lag, this minute and the one before.
#[derive(Debug, Clone, Default)]
pub struct Lateness {
    minute: u64,
    this_minute: [u32; SLOTS],
    minute_before: [u32; SLOTS],
}

impl Lateness {
    /// Counts a request that started in `start_secs` and arrived in `arrived_secs`.
    pub fn record(&mut self, arrived_secs: u64, start_secs: u64) {
        let minute = arrived_secs / 60;
        if minute > self.minute {
            self.minute_before = if minute == self.minute + 1 { self.this_minute } else { [0; SLOTS] };
            self.this_minute = [0; SLOTS];
            self.minute = minute;
        }
        let lag = arrived_secs.saturating_sub(start_secs).min(SLOTS as u64 - 1) as usize;
        self.this_minute[lag] = self.this_minute[lag].saturating_add(1);
    }

    /// Adds the arrivals of the minute of `now_secs` and of the one before to `counts`.
    pub fn add_to(&self, now_secs: u64, counts: &mut [u64; SLOTS]) {
        let minute = now_secs / 60;
        let recent: &[&[u32; SLOTS]] = if self.minute == minute {
            &[&self.this_minute, &self.minute_before]
        } else if self.minute + 1 == minute {
            &[&self.this_minute]
        } else {
            &[]
        };
        for slots in recent {
            for (total, n) in counts.iter_mut().zip(slots.iter()) {
                *total += u64::from(*n);
            }
        }
    }

    /// [`settling_lag`] of this edge's arrivals at `now_secs`.
    pub fn lag(&self, now_secs: u64) -> Option<u64> {
        let mut counts = [0; SLOTS];
        self.add_to(now_secs, &mut counts);
        settling_lag(&counts)
    }
}

/// The last second settled at `now_secs` when requests arrive within `lag` seconds of the
/// second they started in: seconds up to `now - 1 - lag` have them all. The lag is taken as
/// at least a second (and as one when nothing came): a sidecar exports a flush interval
/// after a request ends, and the current second is never over.
pub fn settled_end(now_secs: u64, lag: Option<u64>) -> u64 {
    now_secs.saturating_sub(1 + lag.unwrap_or(1).max(1))
}

/// The share of arrivals a settled second waits for.
const SHARE: f64 = 0.99;

/// The lag, in seconds, within which 99 % of the arrivals `counts` holds came; `None` when
/// it holds none.
pub fn settling_lag(counts: &[u64; SLOTS]) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let wanted = (total as f64 * SHARE).ceil() as u64;
    let mut seen = 0;
    for (lag, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= wanted {
            return Some(lag as u64);
        }
    }
    Some(SLOTS as u64 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(l: &Lateness, now_secs: u64) -> [u64; SLOTS] {
        let mut c = [0; SLOTS];
        l.add_to(now_secs, &mut c);
        c
    }

    #[test]
    fn the_lag_is_the_one_within_which_nearly_every_request_arrived() {
        let mut l = Lateness::default();
        for i in 0..990 {
            l.record(6_000 + i % 50, 6_000 + i % 50 - (i % 2));
        }
        for i in 0..10 {
            l.record(6_010 + i, 6_004 + i);
        }
        assert_eq!(settling_lag(&counts(&l, 6_050)), Some(1), "1 % arrived 6 s late: not waited for");
        for i in 0..20 {
            l.record(6_040 + i, 6_035 + i);
        }
        assert_eq!(settling_lag(&counts(&l, 6_059)), Some(5), "3 % arrived 5 s or more late");
        assert_eq!(settling_lag(&[0; SLOTS]), None);
    }

    #[test]
    fn arrivals_older_than_the_minute_before_are_forgotten() {
        let mut l = Lateness::default();
        l.record(6_030, 6_020);
        assert_eq!(settling_lag(&counts(&l, 6_059)), Some(10));
        assert_eq!(settling_lag(&counts(&l, 6_119)), Some(10), "the minute before still counts");
        assert_eq!(settling_lag(&counts(&l, 6_120)), None, "two minutes on: forgotten");
        l.record(6_125, 6_125);
        assert_eq!(settling_lag(&counts(&l, 6_125)), Some(0), "a new minute after a gap starts afresh");
        l.record(6_100, 6_000);
        assert_eq!(settling_lag(&counts(&l, 6_125)), Some(31), "a clock going back counts in the newest minute; 100 s is 31");
    }
}
