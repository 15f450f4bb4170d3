//! Where accepted telemetry is kept: traces by ID with per-service indexes, and bounded
//! buffers of log records and metric points. Each store evicts its oldest data first
//! when it reaches its configured size, and counts what it evicted.

pub mod signals;
pub mod traces;

pub use signals::SignalStore;
pub use traces::{TraceQuery, TraceStore};
