//! The `orderflow` binary: parse the command line, set up logging, load the settings, run the
//! subcommand and map how it ended to an exit code (`orderflow::cli::EXIT_CODES`). Everything
//! else is the library: the service (`orderflow::service`) and the tools (`orderflow::tools`).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use orderflow::cli::{Cli, Command};
use orderflow::config::Settings;
use orderflow::service::{self, Service};
use orderflow::tools::{self, Report};
use orderflow::{telemetry, tools::exit_code_of};

/// mimalloc rather than glibc's malloc: the processor allocates and frees a few dozen small blocks
/// per request, and glibc's allocator was a third of its CPU under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match &cli.command {
        // Definitions are checked offline, whatever the settings say.
        Command::Machine { .. } => Ok(Settings::default()),
        _ => load_settings(&cli),
    };
    let telemetry = match telemetry::init(settings.as_ref().ok().map(|s| &s.traces)) {
        Ok(telemetry) => telemetry,
        Err(e) => return fail(&e.into()),
    };
    let settings = match settings {
        Ok(settings) => settings,
        Err(e) => return fail(&e),
    };
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
    let ended = runtime.block_on(dispatch(&cli, settings));
    // Outside the runtime: the exporter's last send blocks.
    drop(runtime);
    telemetry.shutdown();
    match ended {
        Ok(code) => ExitCode::from(code),
        Err(error) => fail(&error),
    }
}

/// Prints the error and gives its exit code.
fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", render(error));
    ExitCode::from(exit_code_of(error))
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

/// The settings: defaults, file, `ORDERFLOW_*` environment, then flags; checked offline.
fn load_settings(cli: &Cli) -> anyhow::Result<Settings> {
    let mut settings = Settings::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(servers) = &cli.bootstrap_servers {
        settings.kafka.bootstrap_servers = servers.clone();
    }
    if let Some(id) = &cli.instance_id {
        settings.instance_id = id.clone();
    }
    settings.validate()?;
    orderflow::kafka::check_client_settings(&settings)?;
    Ok(settings)
}

/// Runs the subcommand; returns its exit code.
async fn dispatch(cli: &Cli, settings: Settings) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Run => serve(settings, false).await,
        Command::Serve => serve(settings, true).await,
        Command::Machine { action } => report(tools::machine::run(&settings, action).await?, false),
        Command::Config { action } => report(tools::config::run(&settings, action).await?, false),
        Command::Topics { action } => report(tools::topics::run(&settings, action).await?, false),
        Command::Demo(args) => report(tools::demo::run(&settings, args).await?, false),
        Command::Send(args) => report(tools::send::run(&settings, args).await?, args.json),
        Command::Get(args) => report(tools::get::run(&settings, args).await?, args.json),
        Command::Tail(args) => report(tools::tail::run(&settings, args).await?, args.json),
        Command::Loadgen(args) => report(tools::loadgen::run(&settings, args).await?, args.json),
        Command::Capacity(args) => report(tools::capacity::run(&settings, args).await?, args.json),
        Command::Check(args) => report(tools::check::run(&settings, args).await?, args.json),
        Command::Dlq { action } => report(tools::dlq::run(&settings, action).await?, false),
        Command::RebuildState(args) => {
            report(tools::rebuild::run(&settings, args).await?, args.json)
        }
    }
}

/// Prints a tool's report and passes on its exit code.
fn report(report: impl Report, json: bool) -> anyhow::Result<u8> {
    tools::print(&report, json);
    Ok(report.exit_code())
}

/// Runs the service (`run`) or the read replica (`serve`) until SIGTERM or Ctrl-C.
async fn serve(settings: Settings, replica: bool) -> anyhow::Result<u8> {
    let settings = Arc::new(settings);
    let definition = Arc::new(tools::definition(&settings)?);
    let shutdown = async {
        let signal = shutdown_signal().await;
        tracing::info!(signal, "signal received");
    };
    if replica {
        service::serve_replica(settings, definition, shutdown).await?;
    } else {
        Service::new(settings, definition)?.run(shutdown).await?;
    }
    Ok(0)
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
