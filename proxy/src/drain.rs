//! What is still open when the sidecar stops, closed together so that its records go out in
//! the telemetry's last export instead of being lost with the process.
//!
//! Once its listeners' grace period is over, the sidecar closes ([`Closing::close_all`])
//! the connections still open (an exchange that outlived the grace period: a long poll, a
//! gRPC stream) and the upgraded ones, and waits until each has ended: an exchange dropped
//! by then has been recorded. Each connection, and each exchange on it, holds a [`Held`]
//! of the sidecar's [`Drain`] while it is open; each watches [`Drain::closing`].

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::watch;

/// What a sidecar's open connections watch and hold; cheap to clone.
#[derive(Debug, Clone)]
pub struct Drain {
    stop: watch::Receiver<bool>,
    open: Arc<watch::Sender<()>>,
}

/// Held while something of a [`Drain`] is open.
#[derive(Debug)]
pub struct Held {
    _open: watch::Receiver<()>,
}

/// Closes what a [`Drain`] holds open.
#[derive(Debug)]
pub struct Closing {
    stop: watch::Sender<bool>,
    open: Arc<watch::Sender<()>>,
}

impl Drain {
    /// A drain, and what closes it.
    pub fn new() -> (Self, Closing) {
        let (stop, stopped) = watch::channel(false);
        let open = Arc::new(watch::Sender::new(()));
        (Self { stop: stopped, open: open.clone() }, Closing { stop, open })
    }

    /// A drain nothing will close.
    pub fn never() -> Self {
        Self::new().0
    }

    /// Counts something open until the returned value is dropped.
    pub fn hold(&self) -> Held {
        Held { _open: self.open.subscribe() }
    }

    /// Ready once what is open is to close; never if nothing can say so any more.
    pub fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.clone();
        async move {
            if stop.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Closing {
    /// Tells everything still open to close and waits, at most `within`, until each has
    /// dropped what it held; false if some had not.
    pub async fn close_all(self, within: Duration) -> bool {
        let _ = self.stop.send(true);
        tokio::time::timeout(within, self.open.closed()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closing_waits_for_what_is_held_and_a_drain_never_closed_never_closes() {
        let (drain, closing) = Drain::new();
        let held = drain.hold();
        let watcher = tokio::spawn({
            let closing = drain.closing();
            async move {
                closing.await;
                drop(held);
            }
        });
        assert!(closing.close_all(Duration::from_secs(5)).await, "the holder let go once told");
        watcher.await.expect("watcher");

        let (drain, closing) = Drain::new();
        let _stuck = drain.hold();
        assert!(!closing.close_all(Duration::from_millis(50)).await, "something still held");

        let never = Drain::never();
        let waited = tokio::time::timeout(Duration::from_millis(50), never.closing()).await;
        assert!(waited.is_err(), "nothing can close it");
    }
}
