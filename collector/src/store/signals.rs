//! Bounded buffers of log records and metric points, oldest evicted first.

use std::{collections::VecDeque, sync::Arc};

use crate::model::{LogRecord, MetricPoint, TraceId};

/// Log records and metric points, each bounded.
#[derive(Debug)]
pub struct SignalStore {
    logs: VecDeque<Arc<LogRecord>>,
    points: VecDeque<Arc<MetricPoint>>,
    max_logs: usize,
    max_points: usize,
    evicted_logs: u64,
    evicted_points: u64,
}

impl SignalStore {
    /// Empty buffers of the given sizes.
    pub fn new(max_logs: usize, max_points: usize) -> Self {
        Self {
            logs: VecDeque::new(),
            points: VecDeque::new(),
            max_logs: max_logs.max(1),
            max_points: max_points.max(1),
            evicted_logs: 0,
            evicted_points: 0,
        }
    }

    /// Adds log records.
    pub fn insert_logs(&mut self, logs: Vec<LogRecord>) {
        self.logs.extend(logs.into_iter().map(Arc::new));
        while self.logs.len() > self.max_logs {
            self.logs.pop_front();
            self.evicted_logs += 1;
        }
    }

    /// Adds metric points.
    pub fn insert_points(&mut self, points: Vec<MetricPoint>) {
        self.points.extend(points.into_iter().map(Arc::new));
        while self.points.len() > self.max_points {
            self.points.pop_front();
            self.evicted_points += 1;
        }
    }

    /// The newest log records matching the filters, newest first.
    pub fn logs(&self, service: Option<&str>, trace: Option<TraceId>, limit: usize) -> Vec<Arc<LogRecord>> {
        self.logs
            .iter()
            .rev()
            .filter(|l| service.is_none_or(|s| &*l.resource.service == s))
            .filter(|l| trace.is_none_or(|t| l.trace_id == Some(t)))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The newest metric points with this name (all names when `None`), newest first.
    pub fn points(&self, name: Option<&str>, limit: usize) -> Vec<Arc<MetricPoint>> {
        self.points
            .iter()
            .rev()
            .filter(|p| name.is_none_or(|n| p.name == n))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Sizes: (logs held, points held, logs evicted, points evicted).
    pub fn sizes(&self) -> (usize, usize, u64, u64) {
        (self.logs.len(), self.points.len(), self.evicted_logs, self.evicted_points)
    }
}
