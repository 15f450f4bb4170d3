//! The process's log filter, changeable while it runs, as Linkerd's proxy has it: the admin
//! `/proxy-log-level` answers the filter on GET and takes a new one on PUT, an `EnvFilter`
//! directive such as `info,meshlens_proxy=debug`. It starts from `RUST_LOG` (default `info`).
//! The filter is the process's: in the demo, every embedded sidecar and the collector share it.

use std::sync::OnceLock;

use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt};

/// The installed filter's handle.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The longest directive taken.
pub const MAX_DIRECTIVE: usize = 1024;

/// Installs the process's `tracing` subscriber: `RUST_LOG`'s filter (default `info`), made
/// changeable, writing to stderr. Does nothing when one is installed already.
pub fn init() {
    let directive = std::env::var("RUST_LOG").ok().filter(|d| EnvFilter::try_new(d).is_ok()).unwrap_or_else(|| "info".to_owned());
    let (filter, handle) = reload::Layer::new(EnvFilter::new(&directive));
    let installed = tracing_subscriber::registry().with(filter).with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init();
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// The filter in effect, as its directives, if [`init`] installed it.
pub fn current() -> Option<String> {
    FILTER.get()?.with_current(ToString::to_string).ok()
}

/// Replaces the filter with `directive`; an error says why it was not.
pub fn set(directive: &str) -> Result<(), String> {
    let directive = directive.trim();
    if directive.is_empty() || directive.len() > MAX_DIRECTIVE {
        return Err(format!("a log filter is 1 to {MAX_DIRECTIVE} bytes, such as info,meshlens_proxy=debug"));
    }
    let filter = EnvFilter::try_new(directive).map_err(|e| format!("not a log filter: {e}"))?;
    let handle = FILTER.get().ok_or("this process's log filter cannot be changed")?;
    handle.reload(filter).map_err(|e| format!("the log filter could not be changed: {e}"))?;
    tracing::info!(filter = directive, "log filter changed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directive_is_checked_before_anything_changes() {
        // No subscriber installed in unit tests: a valid directive is refused for that reason
        // only; an invalid one for its own.
        assert!(set("").is_err_and(|e| e.contains("1 to")));
        assert!(set(&"a".repeat(MAX_DIRECTIVE + 1)).is_err_and(|e| e.contains("1 to")));
        assert!(set("info,[{bad").is_err_and(|e| e.starts_with("not a log filter")));
        assert_eq!(current(), None);
        assert!(set("debug").is_err_and(|e| e.contains("cannot be changed")));
    }
}
