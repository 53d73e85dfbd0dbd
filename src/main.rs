//! The `orderflow` binary: parse the command line, load settings, dispatch. Exit codes:
//! `orderflow::cli::EXIT_CODES`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use orderflow::cli::{
    Cli, Command, ConfigAction, DlqAction, DrawFormat, MachineAction, TopicsAction,
};
use orderflow::client::Gateway;
use orderflow::clock::{Clock, SystemClock};
use orderflow::config::Settings;
use orderflow::kafka::{TopicError, Topics};
use orderflow::machine::diagram::{draw, DiagramFormat};
use orderflow::machine::diff::diff;
use orderflow::machine::Definition;
use orderflow::ops::{Health, Metrics, OpsState, OwnerDirectory};
use orderflow::processor::Processor;
use orderflow::state::SharedCaches;
use orderflow::{telemetry, tools};

/// mimalloc rather than glibc's malloc: the processor allocates and frees a few dozen small blocks
/// per request, and glibc's allocator was a third of its CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A failure and the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

/// Bad usage, settings or definition: exit code 2.
fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(Failure { code, error }) => {
            eprintln!("error: {}", render(&error));
            ExitCode::from(code)
        }
    }
}

/// The error and its causes, each cause only if the message so far does not already say it.
fn render(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn load_settings(cli: &Cli) -> Result<Settings, Failure> {
    let mut settings = Settings::load(cli.config.as_deref(), std::env::vars()).map_err(usage)?;
    if let Some(servers) = &cli.bootstrap_servers {
        settings.kafka.bootstrap_servers = servers.clone();
    }
    if let Some(id) = &cli.instance_id {
        settings.instance_id = id.clone();
    }
    settings.validate().map_err(usage)?;
    orderflow::kafka::check_client_settings(&settings).map_err(usage)?;
    Ok(settings)
}

fn load_definition(path: &Path) -> Result<Definition, Failure> {
    Definition::load(path).map_err(usage)
}

async fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    match &cli.command {
        Command::Machine { action } => machine(action),
        Command::Config { action } => {
            let settings = load_settings(&cli)?;
            match action {
                ConfigAction::Show => print!("{}", settings.to_display_toml()),
                ConfigAction::Check => {
                    let definition = load_definition(&settings.definition)?;
                    settings.check_ops_listen_free().map_err(usage)?;
                    println!(
                        "OK: settings valid; definition {} v{} ({}) from {}",
                        definition.name(),
                        definition.version(),
                        definition.short_hash(),
                        settings.definition.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics { action } => {
            let mut settings = load_settings(&cli)?;
            let topics = Topics::connect(&settings.kafka).map_err(usage)?;
            match action {
                TopicsAction::Create {
                    partitions,
                    replication_factor,
                    min_insync_replicas,
                } => {
                    if let Some(p) = partitions {
                        settings.topics.partitions = *p;
                    }
                    if let Some(r) = replication_factor {
                        settings.topics.replication_factor = *r;
                    }
                    if let Some(m) = min_insync_replicas {
                        settings.topics.min_insync_replicas = *m;
                    }
                    settings.validate().map_err(usage)?;
                    for status in topics.ensure(&settings.topics).await? {
                        println!(
                            "{:<13} {:<40} {} partitions  {}",
                            status.role,
                            status.name,
                            status.partitions,
                            if status.created {
                                "created"
                            } else {
                                "exists, verified"
                            }
                        );
                    }
                }
                TopicsAction::Check => {
                    let partitions = topics.check(&settings.topics).await?;
                    println!("OK: all five topics exist with {partitions} partitions; state topic is compacted");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => run(&cli).await,
        Command::Serve => serve_replica(&cli).await,
        Command::Send(args) => {
            let settings = connected_settings(&cli).await?;
            let result = tools::send::run(&settings, args).await?;
            Ok(ExitCode::from(result.exit_code()))
        }
        Command::Get(args) => {
            let settings = if args.via.is_some() {
                load_settings(&cli)?
            } else {
                connected_settings(&cli).await?
            };
            let definition = Arc::new(load_definition(&settings.definition)?);
            let found =
                tools::get::run(&settings, &definition, settings.topics.partitions, args).await?;
            Ok(if found {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Loadgen(args) => {
            let settings = connected_settings(&cli).await?;
            let definition = load_definition(&settings.definition)?;
            let shares = tools::loadgen::plan::Shares {
                invalid: args.invalid_share,
                duplicate: args.duplicate_share,
                out_of_order: args.out_of_order_share,
                poison: args.poison_share,
                cancel: args.cancel_share,
                returned: args.return_share,
            };
            let spec = tools::loadgen::LoadSpec {
                orders: args.orders,
                rate: args.rate,
                seed: args.seed,
                prefix: args.prefix.clone().unwrap_or_else(|| {
                    format!("lg-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
                }),
                concurrency: args.concurrency,
                shares,
                wait: Duration::from_secs(args.wait_secs),
                progress: !args.no_progress,
                warmup: Duration::from_secs(args.warmup_secs),
            };
            let report = tokio::task::spawn_blocking(move || {
                tools::loadgen::run(&settings, &definition, &spec)
            })
            .await
            .context("the load generator thread")??;
            if args.json {
                println!("{}", report.to_json());
            } else {
                println!("{}", report.describe());
            }
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Capacity(args) => {
            let settings = load_settings(&cli)?;
            let definition = load_definition(&settings.definition)?;
            let last_run: Option<serde_json::Value> =
                std::fs::read_to_string("bench/last-run.json")
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok());
            let measured = |key: &str| last_run.as_ref().and_then(|r| r.pointer(key)?.as_f64());
            let (per_pod_rate, rate_source) = match (args.per_pod_rate, measured("/per_pod_rate")) {
                (Some(rate), _) => (rate, "given".to_string()),
                (None, Some(rate)) => (rate, "measured by the last `make bench`, bench/last-run.json".to_string()),
                (None, None) => {
                    return Err(usage(anyhow::anyhow!(
                        "no per-pod rate: run `make bench` first (it writes bench/last-run.json) or pass --per-pod-rate"
                    )))
                }
            };
            let demand = tools::capacity::Demand {
                orders_per_day: args.orders_per_day,
                transitions_per_order: args.transitions_per_order,
                peak_factor: args.peak_factor,
                per_pod_rate,
                cached_days: args.cached_days,
                input_retention_days: args.input_retention_days,
                event_log_retention_days: args.event_log_retention_days,
                replication_factor: args.replication_factor,
                // Most cached orders are delivered orders waiting out their return window:
                // their packed size (five remembered requests) and a deadline entry each.
                bytes_per_cached_order: measured("/restore/delivered_packed_mb_per_million_orders")
                    .or_else(|| measured("/restore/resident_mb_per_million_orders"))
                    .map_or(400.0, |cache| {
                        cache
                            + measured("/restore/deadline_index_mb_per_million_orders")
                                .unwrap_or(0.0)
                    }),
                pod_cache_bytes: args.pod_cache_gb * 1e9,
                partition_cache_bytes: args.partition_cache_gb * 1e9,
                restore_rate: measured("/restore/orders_per_second").unwrap_or(250_000.0),
            };
            let sizes = tools::capacity::record_sizes(&definition)
                .ok_or_else(|| usage(anyhow::anyhow!("the definition has no transitions")))?;
            let plan = tools::capacity::plan(&demand, sizes);
            if args.json {
                println!("{}", tools::capacity::to_json(&demand, sizes, &plan));
            } else {
                println!(
                    "{}",
                    tools::capacity::describe(&demand, sizes, &plan, &rate_source)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { json } => {
            let settings = connected_settings(&cli).await?;
            let definition = load_definition(&settings.definition)?;
            let limits = tools::check::Limits {
                max_attributes: settings.processor.max_attributes,
                max_attribute_bytes: settings.processor.max_attribute_bytes,
                recent_requests: settings.processor.recent_requests,
            };
            let verdict = tokio::task::spawn_blocking(move || {
                let partitions = settings.topics.partitions;
                tools::check::read_history(&settings, &definition, partitions)
                    .map(|history| tools::check::check(&definition, limits, &history))
            })
            .await
            .context("the checker thread")??;
            if *json {
                println!("{}", verdict.to_json());
            } else {
                println!("{}", verdict.describe());
            }
            Ok(if verdict.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Tail(args) => {
            let settings = connected_settings(&cli).await?;
            tools::tail::run(&settings, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::RebuildState {
            into,
            compare,
            allow_running,
            json,
        } => {
            let settings = load_settings(&cli)?;
            let definition = Arc::new(load_definition(&settings.definition)?);
            let report =
                tools::rebuild::run(&settings, definition, into, *compare, *allow_running, {
                    orderflow::clock::wall_clock_ms()
                })
                .await?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string(&report).context("encoding the report")?
                );
            } else {
                println!("{}", report.describe(&settings.topics.state));
            }
            let equal = report.comparison.as_ref().is_none_or(|c| c.is_equal());
            Ok(if equal {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Dlq { action } => {
            let settings = connected_settings(&cli).await?;
            let partitions = settings.topics.partitions;
            match action {
                DlqAction::List { kind, json } => {
                    tools::dlq::list(&settings, partitions, kind.as_deref(), *json).await?
                }
                DlqAction::Replay {
                    records,
                    kind,
                    dry_run,
                } => {
                    tools::dlq::replay(&settings, partitions, records, kind.as_deref(), *dry_run)
                        .await?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let settings = load_settings(&cli)?;
            let topics = Topics::connect(&settings.kafka).map_err(usage)?;
            topics
                .ensure(&settings.topics)
                .await
                .context("provisioning topics for the demo")?;
            tools::demo::run(&settings, args.orders, Duration::from_secs(args.wait_secs)).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Settings for a tool that talks to Kafka: the topics must exist, and their real partition count
/// (which decides where an order lives) replaces the configured one.
async fn connected_settings(cli: &Cli) -> Result<Settings, Failure> {
    with_checked_topics(load_settings(cli)?).await
}

/// The settings with the partition count of their checked topics.
async fn with_checked_topics(mut settings: Settings) -> Result<Settings, Failure> {
    let topics = Topics::connect(&settings.kafka).map_err(usage)?;
    settings.topics.partitions = topics
        .check(&settings.topics)
        .await
        .context("checking the topics (create them with `orderflow topics create`)")?;
    Ok(settings)
}

/// Binds the ops HTTP listener, naming the setting to change when the address is taken (a
/// settings error: exit code 2).
async fn bind_ops(settings: &Settings) -> Result<tokio::net::TcpListener, Failure> {
    tokio::net::TcpListener::bind(&settings.ops.listen)
        .await
        .with_context(|| {
            format!(
                "invalid setting ops.listen: cannot listen on {} (another process uses the port? set ops.listen / ORDERFLOW_OPS__LISTEN to a free address)",
                settings.ops.listen
            )
        })
        .map_err(usage)
}

/// Serves the ops endpoints until the returned sender is used (or dropped).
fn spawn_ops(
    listener: tokio::net::TcpListener,
    state: OpsState,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(orderflow::ops::serve(listener, state, async move {
        let _ = stop_rx.await;
    }));
    stop_tx
}

/// Exits the process when a librdkafka transactional call has not returned long after its own
/// timeout (three transaction timeouts): nothing can interrupt it, and a restart fences the stuck
/// producer and aborts its open transaction, so exiting loses nothing.
fn watch_transactional_calls(transaction_timeout_ms: u64) -> std::io::Result<()> {
    use orderflow::kafka::transactions::TRANSACTIONAL_CALLS;
    let limit_ms = transaction_timeout_ms as i64 * 3;
    std::thread::Builder::new()
        .name("orderflow-txn-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            if let Some((operation, ran_ms)) = TRANSACTIONAL_CALLS.overdue(SystemClock.now_ms(), limit_ms) {
                tracing::error!(operation, ran_ms, limit_ms, "a transactional call is stuck; exiting");
                eprintln!("error: librdkafka's {operation} has not returned for {ran_ms} ms (limit {limit_ms} ms, 3 x processor.transaction_timeout_ms). It can block for good when the group coordinator's broker goes away (librdkafka #5456). Exiting so that the restarted process fences this producer and aborts its open transaction; nothing is lost");
                std::process::exit(70);
            }
        })
        .map(|_| ())
}

/// `orderflow serve`: the read replica and its HTTP server until SIGTERM / Ctrl-C.
async fn serve_replica(cli: &Cli) -> Result<ExitCode, Failure> {
    let settings = load_settings(cli)?;
    let definition = Arc::new(load_definition(&settings.definition)?);
    let listener = bind_ops(&settings).await?;
    let settings = Arc::new(with_checked_topics(settings).await?);
    let partitions = settings.topics.partitions;
    let metrics = Metrics::new(&definition)?;
    let health = Arc::new(Health::default());
    let caches = SharedCaches::default();
    tracing::info!(address = %listener.local_addr()?, "read replica: /orders/{{id}} /states /metrics /healthz /readyz");
    let ops_stop_tx = spawn_ops(
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
    let shutdown = Arc::new(AtomicBool::new(false));
    let reader = {
        let (shutdown, settings, health) = (
            Arc::clone(&shutdown),
            Arc::clone(&settings),
            Arc::clone(&health),
        );
        tokio::task::spawn_blocking(move || {
            let result = orderflow::replica::run(
                &settings,
                &definition,
                partitions,
                &caches,
                &metrics,
                &health,
                &shutdown,
            );
            if result.is_err() {
                health.set_failed();
            }
            result
        })
    };
    tokio::pin!(reader);
    let result = tokio::select! {
        result = &mut reader => result,
        signal = shutdown_signal() => {
            tracing::info!(signal, "stopping the replica");
            shutdown.store(true, Ordering::Relaxed);
            (&mut reader).await
        }
    };
    let _ = ops_stop_tx.send(());
    result.context("the replica thread")??;
    Ok(ExitCode::SUCCESS)
}

async fn run(cli: &Cli) -> Result<ExitCode, Failure> {
    let settings = Arc::new(load_settings(cli)?);
    let definition = Arc::new(load_definition(&settings.definition)?);
    // Every setting is checked before anything connects: the ops address too.
    let listener = bind_ops(&settings).await?;
    let topics = Topics::connect(&settings.kafka).map_err(usage)?;
    let partitions = match topics.check(&settings.topics).await {
        Ok(partitions) => {
            tracing::info!(partitions, "topics co-partitioned; state topic compacted");
            partitions
        }
        Err(e @ (TopicError::Unreachable { .. } | TopicError::Admin(_) | TopicError::Task(_))) => {
            return Err(e.into())
        }
        Err(e) => return Err(usage(e)),
    };
    tracing::info!(
        definition = definition.name(),
        version = definition.version(),
        hash = definition.short_hash(),
        "definition loaded"
    );
    let metrics = Metrics::new(&definition)?;
    let health = Arc::new(Health::default());
    tracing::info!(address = %settings.ops.listen, "ops server: /metrics /healthz /readyz /orders/{{id}}");
    let caches = SharedCaches::default();
    let ops_stop_tx = spawn_ops(
        listener,
        OpsState {
            liveness_timeout_ms: settings.ops.liveness_timeout_ms as i64,
            owners: Some(Arc::new(OwnerDirectory::new(&settings)?)),
            gateway: Some(Arc::new({
                let settings = Arc::clone(&settings);
                tokio::task::spawn_blocking(move || {
                    Gateway::start(
                        &settings,
                        &format!("orderflow-{}-http", settings.instance_id),
                    )
                })
                .await
                .context("starting the HTTP request gateway")??
            })),
            ..OpsState::new(
                metrics.clone(),
                Arc::clone(&health),
                caches.clone(),
                Arc::clone(&definition),
                partitions,
            )
        },
    );
    watch_transactional_calls(settings.processor.transaction_timeout_ms)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    {
        let shutdown = Arc::clone(&shutdown);
        let settings = Arc::clone(&settings);
        std::thread::Builder::new()
            .name("orderflow-processor".into())
            .spawn(move || {
                let result = Processor::with_parts(
                    settings,
                    definition,
                    Arc::new(SystemClock),
                    metrics,
                    health,
                    caches,
                )
                .and_then(|p| p.run(&shutdown));
                let _ = done_tx.send(result);
            })?;
    }
    let mut done_rx = done_rx;
    let result = tokio::select! {
        result = &mut done_rx => result,
        signal = shutdown_signal() => {
            tracing::info!(signal, "stopping: finishing the batch in hand");
            shutdown.store(true, Ordering::Relaxed);
            let deadline = Duration::from_millis(settings.processor.shutdown_deadline_ms);
            match tokio::time::timeout(deadline, &mut done_rx).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(anyhow::anyhow!("the processor did not stop within processor.shutdown_deadline_ms ({deadline:?}); exiting anyway (open transactions are aborted by the broker or by the next start)").into());
                }
            }
        }
    };
    let _ = ops_stop_tx.send(());
    match result {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(anyhow::anyhow!("the processor thread ended without a result").into()),
    }
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C), naming it.
async fn shutdown_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

fn machine(action: &MachineAction) -> Result<ExitCode, Failure> {
    match action {
        MachineAction::Check { file } => match Definition::load(file) {
            Ok(d) => {
                println!(
                    "OK: {} v{} ({}): {} states, {} transitions",
                    d.name(),
                    d.version(),
                    d.short_hash(),
                    d.states().len(),
                    d.transitions().len()
                );
                Ok(ExitCode::SUCCESS)
            }
            // A definition that is not valid is a usage error, as everywhere else: exit code 2.
            Err(e) => Err(usage(e)),
        },
        MachineAction::Draw { file, format } => {
            let definition = Arc::new(load_definition(file)?);
            let format = match format {
                DrawFormat::Mermaid => DiagramFormat::Mermaid,
                DrawFormat::Dot => DiagramFormat::Dot,
            };
            print!("{}", draw(&definition, format));
            Ok(ExitCode::SUCCESS)
        }
        MachineAction::Diff { old, new } => {
            let old_definition = load_definition(old)?;
            let new_definition = load_definition(new)?;
            let report = diff(&old_definition, &new_definition);
            for finding in &report.findings {
                println!("{finding}");
            }
            if report.findings.is_empty() {
                println!("identical rules: safe to roll out");
            }
            if report.is_safe() {
                println!(
                    "SAFE: {} v{} can be rolled out over live orders of v{}",
                    new_definition.name(),
                    new_definition.version(),
                    old_definition.version()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!("UNSAFE: do not roll out {} as it is", new.display());
                Ok(ExitCode::from(1))
            }
        }
    }
}
