//! Bounded ingest: an export request is admitted only while the bytes of the requests
//! being processed stay under a budget. Beyond it the sender is told to retry later
//! (gRPC RESOURCE_EXHAUSTED with RetryInfo, HTTP 429 with `Retry-After`), as OTLP
//! specifies, instead of the collector queueing without bound.

use std::{sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget granularity: one permit per KiB.
const UNIT: usize = 1024;

/// How long a refused sender is asked to wait.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The in-flight budget.
#[derive(Debug, Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    capacity: u32,
}

/// A refused request.
#[derive(Debug, thiserror::Error)]
#[error("the collector is busy ({inflight_bytes} bytes of export requests in progress); retry after {retry_after:?}")]
pub struct Refused {
    /// Bytes in progress when refused.
    pub inflight_bytes: usize,
    /// Suggested wait.
    pub retry_after: Duration,
}

impl Admission {
    /// A budget of `bytes` in flight (at least one KiB).
    pub fn new(bytes: usize) -> Self {
        let capacity = u32::try_from((bytes / UNIT).max(1)).unwrap_or(u32::MAX >> 4);
        Self { permits: Arc::new(Semaphore::new(capacity as usize)), capacity }
    }

    /// Admits a request of `bytes`, or refuses it. A request larger than the whole budget
    /// is admitted when nothing else is in flight.
    pub fn admit(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Refused> {
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX).min(self.capacity);
        self.permits
            .clone()
            .try_acquire_many_owned(units)
            .map_err(|_| Refused { inflight_bytes: self.inflight_bytes(), retry_after: RETRY_AFTER })
    }

    /// Bytes of admitted requests still in progress (KiB granularity).
    pub fn inflight_bytes(&self) -> usize {
        (self.capacity as usize - self.permits.available_permits()) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_within_the_budget_and_refuses_beyond() {
        let a = Admission::new(10 * UNIT);
        let first = a.admit(6 * UNIT).expect("fits");
        assert!(a.admit(6 * UNIT).is_err(), "would exceed");
        let small = a.admit(100).expect("one KiB still fits");
        assert_eq!(a.inflight_bytes(), 7 * UNIT);
        drop((first, small));
        assert!(a.admit(100 * UNIT).is_ok(), "an oversized request passes when idle");
    }
}
