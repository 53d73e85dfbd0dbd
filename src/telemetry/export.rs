//! Finished spans leave the thread that ended them through a bounded queue; one exporter thread
//! sends them over OTLP in batches. A full queue drops the span and counts it: the processing
//! thread never waits for a collector, however slow or absent it is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

/// Spans sent in one export call at most.
const MAX_BATCH: usize = 512;

/// A span waits at most this long in a partial batch before it is sent.
const EXPORT_INTERVAL: Duration = Duration::from_millis(200);

/// Counts of what happened to finished spans.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans lost because an export failed (collector unreachable or refusing).
    pub failed: AtomicU64,
}

enum Message {
    Span(Box<SpanData>),
    Resource(Resource),
    Flush(SyncSender<OTelSdkResult>),
    Shutdown(SyncSender<OTelSdkResult>),
}

/// A span processor that hands finished spans to an exporter thread through a bounded queue.
#[derive(Debug)]
pub struct QueueingSpanProcessor {
    queue: SyncSender<Message>,
    stats: Arc<ExportStats>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl QueueingSpanProcessor {
    /// Starts the exporter thread with a queue of `capacity` spans. `exporter` is built on that
    /// thread (an HTTP client must not be made inside the async runtime); its error is returned.
    pub fn start<E, F>(
        exporter: F,
        capacity: usize,
        stats: Arc<ExportStats>,
    ) -> Result<QueueingSpanProcessor, String>
    where
        E: SpanExporter + 'static,
        F: FnOnce() -> Result<E, String> + Send + 'static,
    {
        let (queue, receiver) = sync_channel(capacity);
        let (built, started) = sync_channel(1);
        let thread_stats = Arc::clone(&stats);
        let worker = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || match exporter() {
                Ok(exporter) => {
                    let _ = built.send(Ok(()));
                    export_loop(exporter, &receiver, &thread_stats);
                }
                Err(e) => {
                    let _ = built.send(Err(e));
                }
            })
            .map_err(|e| format!("cannot start the span exporter's thread: {e}"))?;
        started
            .recv()
            .map_err(|_| "the span exporter's thread ended at start".to_string())??;
        Ok(QueueingSpanProcessor {
            queue,
            stats,
            worker: Mutex::new(Some(worker)),
        })
    }

    fn ask(
        &self,
        message: impl FnOnce(SyncSender<OTelSdkResult>) -> Message,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (reply, answer) = sync_channel(1);
        self.queue
            .send(message(reply))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        answer
            .recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))?
    }
}

impl SpanProcessor for QueueingSpanProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        match self.queue.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Message::Flush, Duration::from_secs(10))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.ask(Message::Shutdown, timeout);
        if let Some(worker) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if result.is_ok() {
                let _ = worker.join();
            }
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Sent ahead of every span: the provider sets it before any span can end.
        let _ = self.queue.try_send(Message::Resource(resource.clone()));
    }
}

fn export_loop<E: SpanExporter>(
    mut exporter: E,
    receiver: &Receiver<Message>,
    stats: &ExportStats,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH);
    let mut failures = 0u64;
    let mut send = |exporter: &E, batch: &mut Vec<SpanData>| -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let spans = batch.len() as u64;
        let result = futures_executor::block_on(exporter.export(std::mem::take(batch)));
        match &result {
            Ok(()) => {
                stats.exported.fetch_add(spans, Ordering::Relaxed);
            }
            Err(e) => {
                stats.failed.fetch_add(spans, Ordering::Relaxed);
                failures += 1;
                // The first failure, then one in a hundred: a collector that is down must not
                // flood the log.
                if failures % 100 == 1 {
                    tracing::warn!(error = %e, spans, failures, "cannot export spans over OTLP (check OTEL_EXPORTER_OTLP_ENDPOINT and the collector); they are lost, the processor goes on");
                }
            }
        }
        result
    };
    loop {
        match receiver.recv_timeout(EXPORT_INTERVAL) {
            Ok(Message::Span(span)) => {
                batch.push(*span);
                if batch.len() >= MAX_BATCH {
                    let _ = send(&exporter, &mut batch);
                }
            }
            Ok(Message::Resource(resource)) => exporter.set_resource(&resource),
            Ok(Message::Flush(reply)) => {
                let _ = reply.send(send(&exporter, &mut batch));
            }
            Ok(Message::Shutdown(reply)) => {
                let result = send(&exporter, &mut batch);
                let _ = exporter.shutdown();
                let _ = reply.send(result);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = send(&exporter, &mut batch);
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = send(&exporter, &mut batch);
                return;
            }
        }
    }
}
