//! Commands for people and scripts that drive orderflow from outside: send a request, read an
//! order, follow outcomes, inspect and replay dead letters, generate load, check the history,
//! plan capacity, rebuild the state topic from the event log, manage topics, settings and
//! definitions, and the demo.
//!
//! Every command has one shape: `run(&Settings, &its clap Args)` returns a [`Report`] that knows
//! its words, its `--json` form and its exit code (`cli::EXIT_CODES`). Commands that print as
//! they go (tail, dlq, demo) return a [`Streamed`] report. These are the command line's edge, so
//! they return `anyhow` errors; [`exit_code_of`] maps an error to its exit code.

pub mod capacity;
pub mod check;
pub mod config;
pub mod demo;
pub mod dlq;
pub mod get;
pub mod loadgen;
pub mod machine;
pub mod rebuild;
pub mod send;
pub mod tail;
pub mod topics;

use anyhow::Context;
use serde_json::Value;

use crate::config::{ConfigError, Settings};
use crate::kafka::{ClientConfigError, TopicError, Topics};
use crate::machine::{Definition, DefinitionError};
use crate::service::ServiceError;

/// What a command tells its caller.
pub trait Report {
    /// The report for people (empty when everything was printed already).
    fn describe(&self) -> String;
    /// The report for scripts (`--json`; `null` when everything was printed already).
    fn to_json(&self) -> Value;
    /// The exit code it stands for.
    fn exit_code(&self) -> u8 {
        0
    }
}

/// Prints `report` for people or, with `json`, for scripts. A reader that closed the pipe early
/// (`| head`) ends the output quietly instead of a panic.
pub fn print(report: &dyn Report, json: bool) {
    use std::io::Write;
    let text = if json {
        let value = report.to_json();
        if value.is_null() {
            return;
        }
        value.to_string()
    } else {
        let text = report.describe();
        if text.is_empty() {
            return;
        }
        text.trim_end_matches('\n').to_string()
    };
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// The report of a command that printed its results as it went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Streamed;

impl Report for Streamed {
    fn describe(&self) -> String {
        String::new()
    }

    fn to_json(&self) -> Value {
        Value::Null
    }
}

/// A report that is text for people and a JSON value for scripts, with an exit code.
#[derive(Debug, Clone)]
pub struct Text {
    /// For people.
    pub text: String,
    /// For scripts.
    pub json: Value,
    /// The exit code.
    pub code: u8,
}

impl Text {
    /// A successful report.
    pub fn ok(text: impl Into<String>, json: Value) -> Text {
        Text {
            text: text.into(),
            json,
            code: 0,
        }
    }
}

impl Report for Text {
    fn describe(&self) -> String {
        self.text.clone()
    }

    fn to_json(&self) -> Value {
        self.json.clone()
    }

    fn exit_code(&self) -> u8 {
        self.code
    }
}

/// Bad usage: a wrong argument or a missing input, named with what to do (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The exit code of a failed command: 2 for bad usage, settings or definitions, a service's own
/// code, 1 for anything else.
pub fn exit_code_of(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<Usage>()
            || cause.is::<ConfigError>()
            || cause.is::<DefinitionError>()
            || cause.is::<ClientConfigError>()
            || cause.is::<crate::telemetry::TelemetryError>()
        {
            return 2;
        }
        if let Some(error) = cause.downcast_ref::<ServiceError>() {
            return error.exit_code();
        }
        if let Some(error) = cause.downcast_ref::<TopicError>() {
            return if error.is_runtime() { 1 } else { 2 };
        }
    }
    1
}

/// The definition the settings point to.
pub fn definition(settings: &Settings) -> Result<Definition, DefinitionError> {
    Definition::load(&settings.definition)
}

/// The settings of a command that talks to Kafka: the topics must exist, and their real
/// partition count (which decides where an order lives) replaces the configured one.
pub async fn connected(settings: &Settings) -> anyhow::Result<Settings> {
    let mut settings = settings.clone();
    let topics = Topics::connect(&settings.kafka)?;
    settings.topics.partitions = topics
        .check(&settings.topics)
        .await
        .context("checking the topics (create them with `orderflow topics create`)")?;
    Ok(settings)
}
