//! Logging and traces. Logs: structured `tracing` events, JSON in production, human-readable
//! locally. Traces: `tracing` spans of the [`SPANS`] target become OpenTelemetry spans exported
//! over OTLP/HTTP ([`export`]); which requests get them is decided per request ([`context`]).

pub mod context;
pub mod export;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::TraceSettings;
use export::{ExportStats, QueueingSpanProcessor};

/// The `tracing` target of the spans exported as OpenTelemetry spans (and only those: the
/// processor's other spans and every log event stay in the log).
pub const SPANS: &str = "orderflow::spans";

/// The service name when `OTEL_SERVICE_NAME` does not give one.
const DEFAULT_SERVICE_NAME: &str = "orderflow";

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (a malformed endpoint or header variable).
    #[error("cannot set up the OTLP trace exporter: {0} (check OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and OTEL_EXPORTER_OTLP_HEADERS, or set traces.enabled = false)")]
    Exporter(String),
}

static EXPORT_STATS: OnceLock<Arc<ExportStats>> = OnceLock::new();

/// Spans dropped so far because the export queue was full (0 while traces are off).
pub fn spans_dropped() -> u64 {
    EXPORT_STATS
        .get()
        .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
}

/// Spans exported so far (0 while traces are off).
pub fn spans_exported() -> u64 {
    EXPORT_STATS
        .get()
        .map_or(0, |s| s.exported.load(Ordering::Relaxed))
}

/// The installed logging and, with traces on, the tracer provider (flushed and shut down on
/// [`Telemetry::shutdown`]).
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "cannot flush the last spans at shutdown");
            }
        }
    }
}

/// Installs the global subscriber: the log (`RUST_LOG` sets levels, default `info`;
/// `ORDERFLOW_LOG_FORMAT=json` writes one JSON object per line) and, when `traces` says so, the
/// OpenTelemetry layer for the [`SPANS`] target.
pub fn init(traces: Option<&TraceSettings>) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let Some(settings) = traces.filter(|t| t.enabled) else {
        // No per-layer filters without traces: the log's filter is the subscriber's (a log
        // layer filtered on its own beside an absent one lost warnings).
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(log_layer())
            .try_init();
        return Ok(Telemetry { provider: None });
    };
    let provider = tracer_provider(settings)?;
    // Each layer its own filter: the log as `RUST_LOG` says without the spans' target, the
    // OpenTelemetry layer that target only, whatever `RUST_LOG` says.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("orderflow"))
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(|meta| meta.target() == SPANS));
    let log = log_layer().with_filter(
        filter.add_directive(format!("{SPANS}=off").parse().expect("a valid directive")),
    );
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(spans)
        .try_init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The log: one line per event on stderr, JSON with `ORDERFLOW_LOG_FORMAT=json`.
fn log_layer<S>() -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if std::env::var("ORDERFLOW_LOG_FORMAT").is_ok_and(|v| v == "json") {
        layer.json().boxed()
    } else {
        layer.boxed()
    }
}

/// The OTLP protocol the standard variables ask for, if they ask for one this build does not
/// speak: only `http/protobuf` is built in.
fn unsupported_protocol() -> Option<String> {
    ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .iter()
        .find_map(|name| std::env::var(name).ok().map(|value| (name, value)))
        .filter(|(_, value)| value.trim() != "http/protobuf")
        .map(|(name, value)| format!("{name}={value}: orderflow exports OTLP over http/protobuf only; unset it or set it to http/protobuf, and point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318)"))
}

/// The provider: every span it is given is recorded (the sampling decision was taken before
/// the span was made, see [`context::Sampling`]), batched and sent over OTLP/HTTP.
fn tracer_provider(settings: &TraceSettings) -> Result<SdkTracerProvider, TelemetryError> {
    if let Some(problem) = unsupported_protocol() {
        return Err(TelemetryError::Exporter(problem));
    }
    let stats = Arc::clone(EXPORT_STATS.get_or_init(Default::default));
    let processor = QueueingSpanProcessor::start(
        || {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| e.to_string())
        },
        settings.queue_spans,
        stats,
    )
    .map_err(TelemetryError::Exporter)?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
        .with_resource(resource.build())
        .build())
}
