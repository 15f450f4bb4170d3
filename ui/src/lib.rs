//! The meshlens web dashboard, compiled into the binary as static assets.
//!
//! Plain HTML, CSS and JavaScript with no build step and no CDN: the page works offline
//! and is served by the collector's web port. Every value that comes from telemetry is
//! inserted as text (`textContent`, SVG text nodes), never as markup.
#![forbid(unsafe_code)]

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// The `Content-Type` to serve it with.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

/// The policy the page is served with: only its own scripts, styles and API calls.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

const ASSETS: &[(&str, Asset)] = &[
    ("index.html", Asset { content_type: "text/html; charset=utf-8", bytes: include_bytes!("../static/index.html") }),
    ("app.js", Asset { content_type: "text/javascript; charset=utf-8", bytes: include_bytes!("../static/app.js") }),
    ("traces.js", Asset { content_type: "text/javascript; charset=utf-8", bytes: include_bytes!("../static/traces.js") }),
    ("sql.js", Asset { content_type: "text/javascript; charset=utf-8", bytes: include_bytes!("../static/sql.js") }),
    ("app.css", Asset { content_type: "text/css; charset=utf-8", bytes: include_bytes!("../static/app.css") }),
];

/// The asset named `name` (`index.html`, `app.js`, `traces.js`, `sql.js`, `app.css`).
pub fn asset(name: &str) -> Option<Asset> {
    ASSETS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_present_and_unknown_names_are_not() {
        for name in ["index.html", "app.js", "traces.js", "sql.js", "app.css"] {
            assert!(asset(name).is_some_and(|a| !a.bytes.is_empty()), "{name}");
        }
        assert!(asset("../Cargo.toml").is_none());
    }

    #[test]
    fn the_scripts_never_write_markup() {
        for name in ["app.js", "traces.js", "sql.js"] {
            let js = std::str::from_utf8(asset(name).map_or(&[][..], |a| a.bytes)).unwrap_or("");
            for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
                assert!(!js.contains(sink), "{name} uses {sink}");
            }
        }
    }
}
