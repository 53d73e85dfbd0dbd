//! The command line: what each `orderflow` subcommand takes. `main.rs` dispatches on it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// orderflow: the order state machine of an online store, exactly once, on Apache Kafka.
///
/// Upstream services produce transition requests ("ship order 42") keyed by order id; orderflow
/// decides each against the order's state and a state machine defined as data, and emits an
/// accepted or rejected outcome, exactly once.
#[derive(Debug, Parser)]
#[command(name = "orderflow", version, propagate_version = true)]
pub struct Cli {
    /// Settings file (TOML); environment variables ORDERFLOW_SECTION__KEY override it.
    #[arg(long, global = true, env = "ORDERFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides kafka.bootstrap_servers.
    #[arg(long, global = true)]
    pub bootstrap_servers: Option<String>,
    /// Overrides instance_id (the stable id behind this instance's transactional.id).
    #[arg(long, global = true)]
    pub instance_id: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the processor: consume requests, decide, produce outcomes, exactly once, until SIGTERM.
    Run,
    /// Create or check the five topics (requests, state, accepted, rejected, dead letters).
    Topics {
        /// create or check.
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Check, draw or compare state-machine definitions (no Kafka needed).
    Machine {
        /// check, draw or diff.
        #[command(subcommand)]
        action: MachineAction,
    },
    /// Show or check the effective settings (no Kafka needed).
    Config {
        /// show or check.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Send a telling set of requests to a running processor and print each one's outcome.
    Demo(DemoArgs),
}

/// `orderflow topics ...`
#[derive(Debug, Subcommand)]
pub enum TopicsAction {
    /// Create missing topics and verify existing ones (idempotent): same partition count for all
    /// five, state topic compacted.
    Create {
        /// Overrides topics.partitions.
        #[arg(long)]
        partitions: Option<i32>,
        /// Overrides topics.replication_factor.
        #[arg(long)]
        replication_factor: Option<i32>,
    },
    /// Verify that all five topics exist, are co-partitioned and the state topic is compacted.
    Check,
}

/// `orderflow machine ...`
#[derive(Debug, Subcommand)]
pub enum MachineAction {
    /// Validate a definition: prints OK, or every problem with its fix (exit code 1).
    Check {
        /// The definition file (TOML).
        file: PathBuf,
    },
    /// Print a definition as a diagram.
    Draw {
        /// The definition file (TOML).
        file: PathBuf,
        /// mermaid (for Markdown) or dot (Graphviz).
        #[arg(long, value_enum, default_value_t = DrawFormat::Mermaid)]
        format: DrawFormat,
    },
    /// Say whether NEW can be rolled out over live orders of OLD, and why (exit code 1 if not).
    Diff {
        /// The definition running now.
        old: PathBuf,
        /// The definition to roll out.
        new: PathBuf,
    },
}

/// Diagram formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DrawFormat {
    /// Mermaid stateDiagram-v2.
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// `orderflow config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the effective settings (file + environment + flags) with secrets masked.
    Show,
    /// Validate the settings and the definition they point to, without connecting.
    Check,
}

/// `orderflow demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many orders to walk through their lifecycle.
    #[arg(long, default_value_t = 2)]
    pub orders: u32,
    /// How long to wait for all outcomes, in seconds.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
}
