//! Logging setup: structured tracing, JSON in production, human-readable locally.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` sets levels (default `info`); `ORDERFLOW_LOG_FORMAT=json`
/// switches to one JSON object per line.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("ORDERFLOW_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
