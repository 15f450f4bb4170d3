//! Where accepted logs and metric points are kept for the APIs: bounded buffers that
//! evict their oldest data first when they reach their configured size, and count what
//! they evicted. (Spans are kept in the `spans` table, see [`crate::tables::traces`].)

pub mod signals;

pub use signals::SignalStore;
