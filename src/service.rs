//! The whole service as library calls: [`Service::run`] runs the processor (on its own thread),
//! the ops server with its HTTP gateway, the transactional-call watchdog and the shutdown deadline
//! until a shutdown future resolves; [`serve_replica`] runs the read replica the same way. Nothing
//! here exits the process: every way the service ends is a [`ServiceError`] that knows its exit
//! code, and the binary maps it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::client::{Gateway, GatewayError};
use crate::clock::{Clock, SystemClock};
use crate::config::{Settings, StateBackend};
use crate::kafka::{CallWatch, ClientConfigError, TopicError, Topics};
use crate::machine::Definition;
use crate::ops::{Health, Metrics, OpsState, OwnerDirectory};
use crate::processor::{Failpoints, Parts, Processor, ProcessorError};
use crate::replica::ReplicaError;
use crate::state::store::{DiskState, LocalStore, StoreError, StoreIdentity, FORMAT_VERSION};
use crate::state::{HotBudget, SharedCaches};

/// How a service run ended, if not by a clean shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The ops address cannot be listened on.
    #[error("invalid setting ops.listen: cannot listen on {address}: {source} (another process uses the port? set ops.listen / ORDERFLOW_OPS__LISTEN to a free address)")]
    OpsListen {
        /// The configured address.
        address: String,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// Kafka client settings are invalid.
    #[error(transparent)]
    ClientConfig(#[from] ClientConfigError),
    /// The topics are missing, unreachable or not co-partitioned.
    #[error(transparent)]
    Topics(#[from] TopicError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    /// The HTTP request gateway could not start.
    #[error("starting the HTTP request gateway: {0}")]
    Gateway(#[source] GatewayError),
    /// The processor stopped on an error.
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    /// The read replica stopped on an error.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The local store (state.backend = "disk") cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The processor did not finish its batch in hand within the shutdown deadline.
    #[error("the processor did not stop within processor.shutdown_deadline_ms ({deadline:?}); exiting anyway (open transactions are aborted by the broker or by the next start)")]
    ShutdownDeadline {
        /// The deadline.
        deadline: Duration,
    },
    /// A librdkafka transactional call has not returned long after its own timeout.
    #[error("librdkafka's {operation} has not returned for {ran_ms} ms (limit {limit_ms} ms, 3 x processor.transaction_timeout_ms). It can block for good when the group coordinator's broker goes away (librdkafka #5456). Exiting so that the restarted process fences this producer and aborts its open transaction; nothing is lost")]
    TransactionalCallStuck {
        /// The call.
        operation: &'static str,
        /// How long it had run.
        ran_ms: i64,
        /// The limit.
        limit_ms: i64,
    },
    /// The processor or replica thread ended without reporting how.
    #[error("the {0} thread ended without a result")]
    Vanished(&'static str),
}

impl ServiceError {
    /// The process exit code for this error (the table in `cli::EXIT_CODES`): 2 for settings,
    /// 70 for a stuck transactional call, 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServiceError::OpsListen { .. } | ServiceError::ClientConfig(_) => 2,
            ServiceError::Topics(error) if error.is_runtime() => 1,
            ServiceError::Topics(_) => 2,
            ServiceError::Processor(ProcessorError::Config(_)) => 2,
            ServiceError::Store(StoreError::Locked { .. }) => 2,
            ServiceError::TransactionalCallStuck { .. } => 70,
            _ => 1,
        }
    }
}

/// Opens the local store `state.dir/<store_name>/` for the disk backend, with what judging its
/// checkpoints needs from the broker (the cluster's id, the state topic's `delete.retention.ms`).
async fn open_disk_state(
    settings: &Settings,
    store_name: &str,
    definition: &Definition,
    topics: &Topics,
) -> Result<DiskState, ServiceError> {
    let delete_retention_ms = topics.delete_retention_ms(&settings.topics.state).await?;
    // Either may be unknown after a transient failure: the store then keeps what it recorded.
    let cluster_id = topics.cluster_id().unwrap_or_default();
    let topic_id = match topics.topic_id(&settings.topics.state).await {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the state topic's id; the local store's topic-id check is skipped at this start");
            None
        }
    };
    let identity = StoreIdentity {
        format: FORMAT_VERSION,
        cluster_id,
        state_topic: settings.topics.state.clone(),
        topic_id,
        definition_hash: definition.hash().to_string(),
    };
    let opened = LocalStore::open(
        &settings.state.dir,
        store_name,
        &identity,
        settings.state.engine_bytes(),
    )?;
    if let Some(reason) = &opened.discarded {
        tracing::warn!(
            dir = %settings.state.dir.display(),
            reason = %reason,
            "the local store cannot be trusted; discarded, every partition restores from the state topic"
        );
    }
    tracing::info!(
        dir = %settings.state.dir.join(store_name).display(),
        partitions = ?opened.store.stored_partitions(),
        delete_retention_ms,
        "local store open (state.backend = disk)"
    );
    Ok(DiskState {
        store: opened.store,
        delete_retention_ms,
        hot: HotBudget::new(
            usize::try_from(settings.state.hot_orders_bytes()).unwrap_or(usize::MAX),
        ),
    })
}

/// The processing service of one instance, its ops listener bound.
pub struct Service {
    settings: Arc<Settings>,
    definition: Arc<Definition>,
    parts: Parts,
    listener: std::net::TcpListener,
}

impl Service {
    /// Prepares the service: binds the ops address (so a bad or taken address is reported before
    /// anything connects) and creates its metrics, health, caches and call watch. Failpoints come
    /// from `ORDERFLOW_FAILPOINT` (in builds with the `failpoints` feature).
    pub fn new(
        settings: Arc<Settings>,
        definition: Arc<Definition>,
    ) -> Result<Service, ServiceError> {
        let parts = Parts::new(&definition).map_err(|e| match e {
            ProcessorError::Metrics(e) => ServiceError::Metrics(e),
            other => ServiceError::Processor(other),
        })?;
        let listener = bind_ops(&settings)?;
        Ok(Service {
            settings,
            definition,
            parts,
            listener,
        })
    }

    /// The same service deciding on `clock`'s time (tests move time).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Service {
        self.parts.clock = clock;
        self
    }

    /// The same service with these failpoints instead of `ORDERFLOW_FAILPOINT`'s.
    pub fn with_failpoints(mut self, failpoints: Failpoints) -> Service {
        self.parts.failpoints = failpoints;
        self
    }

    /// The address the ops server listens on (the real port when `ops.listen` asked for port 0).
    pub fn ops_address(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.parts.metrics
    }

    /// Its liveness and readiness.
    pub fn health(&self) -> &Arc<Health> {
        &self.parts.health
    }

    /// Its committed state per owned partition.
    pub fn caches(&self) -> &SharedCaches {
        &self.parts.caches
    }

    /// Runs until `shutdown` resolves (then finishes the batch in hand within
    /// `processor.shutdown_deadline_ms`) or the processor stops. Checks the topics first; ends
    /// with [`ServiceError::TransactionalCallStuck`] when the watchdog finds a stuck call.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
        let Service {
            settings,
            definition,
            parts,
            listener,
        } = self;
        let topics = Topics::connect(&settings.kafka)?;
        let partitions = topics.check(&settings.topics).await?;
        tracing::info!(partitions, "topics co-partitioned; state topic compacted");
        let mut parts = parts;
        if settings.state.backend == StateBackend::Disk {
            parts.disk = Some(Arc::new(
                open_disk_state(&settings, &settings.instance_id, &definition, &topics).await?,
            ));
        }
        tracing::info!(
            definition = definition.name(),
            version = definition.version(),
            hash = definition.short_hash(),
            "definition loaded"
        );
        let gateway = {
            let settings = Arc::clone(&settings);
            tokio::task::spawn_blocking(move || {
                Gateway::start(
                    &settings,
                    &format!("orderflow-{}-http", settings.instance_id),
                )
            })
            .await
            .map_err(|_| ServiceError::Vanished("gateway start"))?
            .map_err(ServiceError::Gateway)?
        };
        let ops = OpsState {
            liveness_timeout_ms: settings.ops.liveness_timeout_ms as i64,
            owners: Some(Arc::new(OwnerDirectory::new(&settings)?)),
            gateway: Some(Arc::new(gateway)),
            ..OpsState::new(
                parts.metrics.clone(),
                Arc::clone(&parts.health),
                parts.caches.clone(),
                Arc::clone(&definition),
                partitions,
            )
        };
        let listener = tokio_listener(listener, &settings)?;
        tracing::info!(address = %settings.ops.listen, "ops server: /metrics /healthz /readyz /orders/{{id}}");
        let _ops = OpsServer::spawn(listener, ops);

        let stop = Arc::new(AtomicBool::new(false));
        let limit_ms = settings.processor.transaction_timeout_ms as i64 * 3;
        let mut stuck =
            watch_transactional_calls(Arc::clone(&parts.calls), limit_ms, Arc::clone(&stop))?;
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        {
            let stop = Arc::clone(&stop);
            let settings = Arc::clone(&settings);
            std::thread::Builder::new()
                .name("orderflow-processor".into())
                .spawn(move || {
                    let result =
                        Processor::new(settings, definition, parts).and_then(|p| p.run(&stop));
                    let _ = done_tx.send(result);
                })
                .map_err(ServiceError::Thread)?;
        }
        tokio::pin!(shutdown);
        let result = tokio::select! {
            result = &mut done_rx => result,
            Some(error) = stuck.recv() => {
                stop.store(true, Ordering::Relaxed);
                return Err(error);
            }
            () = &mut shutdown => {
                tracing::info!("stopping: finishing the batch in hand");
                stop.store(true, Ordering::Relaxed);
                let deadline = Duration::from_millis(settings.processor.shutdown_deadline_ms);
                tokio::select! {
                    result = tokio::time::timeout(deadline, &mut done_rx) => match result {
                        Ok(result) => result,
                        Err(_) => return Err(ServiceError::ShutdownDeadline { deadline }),
                    },
                    Some(error) = stuck.recv() => return Err(error),
                }
            }
        };
        stop.store(true, Ordering::Relaxed);
        match result {
            Ok(result) => Ok(result?),
            Err(_) => Err(ServiceError::Vanished("processor")),
        }
    }
}

/// Runs the read replica (`orderflow serve`) and its HTTP server until `shutdown` resolves.
pub async fn serve_replica(
    settings: Arc<Settings>,
    definition: Arc<Definition>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let listener = bind_ops(&settings)?;
    let topics = Topics::connect(&settings.kafka)?;
    let partitions = topics.check(&settings.topics).await?;
    let metrics = Metrics::new(&definition).map_err(ServiceError::Metrics)?;
    let health = Arc::new(Health::default());
    let caches = SharedCaches::default();
    let disk = match settings.state.backend {
        StateBackend::Memory => None,
        StateBackend::Disk => {
            // Its own directory: a processor of the same instance id may share state.dir.
            let store_name = format!("replica-{}", settings.instance_id);
            Some(Arc::new(
                open_disk_state(&settings, &store_name, &definition, &topics).await?,
            ))
        }
    };
    let listener = tokio_listener(listener, &settings)?;
    tracing::info!(address = %settings.ops.listen, "read replica: /orders/{{id}} /states /metrics /healthz /readyz");
    let _ops = OpsServer::spawn(
        listener,
        OpsState {
            liveness_timeout_ms: settings.ops.liveness_timeout_ms as i64,
            ..OpsState::new(
                metrics.clone(),
                Arc::clone(&health),
                caches.clone(),
                Arc::clone(&definition),
                partitions,
            )
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, health) = (Arc::clone(&stop), Arc::clone(&health));
        tokio::task::spawn_blocking(move || {
            let result = crate::replica::run(
                &settings,
                &definition,
                partitions,
                crate::replica::ReplicaParts {
                    caches: &caches,
                    metrics: &metrics,
                    health: &health,
                    disk,
                },
                &stop,
            );
            if result.is_err() {
                health.set_failed();
            }
            result
        })
    };
    tokio::pin!(reader);
    tokio::pin!(shutdown);
    let result = tokio::select! {
        result = &mut reader => result,
        () = &mut shutdown => {
            tracing::info!("stopping the replica");
            stop.store(true, Ordering::Relaxed);
            (&mut reader).await
        }
    };
    match result {
        Ok(result) => Ok(result?),
        Err(_) => Err(ServiceError::Vanished("replica")),
    }
}

/// Binds the ops address now, naming the setting when it cannot be had.
fn bind_ops(settings: &Settings) -> Result<std::net::TcpListener, ServiceError> {
    let listen_error = |source| ServiceError::OpsListen {
        address: settings.ops.listen.clone(),
        source,
    };
    let listener = std::net::TcpListener::bind(&settings.ops.listen).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    Ok(listener)
}

fn tokio_listener(
    listener: std::net::TcpListener,
    settings: &Settings,
) -> Result<tokio::net::TcpListener, ServiceError> {
    tokio::net::TcpListener::from_std(listener).map_err(|source| ServiceError::OpsListen {
        address: settings.ops.listen.clone(),
        source,
    })
}

/// The ops HTTP server, stopped when dropped.
struct OpsServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl OpsServer {
    fn spawn(listener: tokio::net::TcpListener, state: OpsState) -> OpsServer {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::ops::serve(listener, state, async move {
            let _ = stop_rx.await;
        }));
        OpsServer {
            stop: Some(stop_tx),
        }
    }
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Watches the producer's blocking calls: a librdkafka transactional call that has not returned
/// long after its own timeout (`limit_ms`) can never be interrupted, and a restart fences the stuck
/// producer and aborts its open transaction, so the service ends with
/// [`ServiceError::TransactionalCallStuck`] and the binary exits. Stops when `stop` is set.
fn watch_transactional_calls(
    calls: Arc<CallWatch>,
    limit_ms: i64,
    stop: Arc<AtomicBool>,
) -> Result<tokio::sync::mpsc::Receiver<ServiceError>, ServiceError> {
    let (stuck_tx, stuck_rx) = tokio::sync::mpsc::channel(1);
    std::thread::Builder::new()
        .name("orderflow-txn-watchdog".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                if let Some((operation, ran_ms)) = calls.overdue(SystemClock.now_ms(), limit_ms) {
                    tracing::error!(
                        operation,
                        ran_ms,
                        limit_ms,
                        "a transactional call is stuck; stopping"
                    );
                    let _ = stuck_tx.blocking_send(ServiceError::TransactionalCallStuck {
                        operation,
                        ran_ms,
                        limit_ms,
                    });
                    return;
                }
            }
        })
        .map_err(ServiceError::Thread)?;
    Ok(stuck_rx)
}
