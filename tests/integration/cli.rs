//! Exit codes and messages of the binary for bad settings and definitions: code 2, naming what is
//! wrong, before anything connects (the bootstrap servers point nowhere, so a command that tried
//! to connect would fail differently and later).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The orderflow binary with no `ORDERFLOW_*` variables of the test run, pointed at a port where
/// no broker listens.
fn orderflow(args: &[&str], environment: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    for (name, _) in std::env::vars() {
        if name.starts_with("ORDERFLOW_") {
            command.env_remove(name);
        }
    }
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ORDERFLOW_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("ORDERFLOW_OPS__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .envs(environment.iter().copied())
        .args(args);
    command.output().expect("orderflow runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts exit code 2 within a few seconds, with a message containing every one of `named`.
fn assert_usage_error(args: &[&str], environment: &[(&str, &str)], named: &[&str]) {
    let started = Instant::now();
    let output = orderflow(args, environment);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{args:?} answered before trying to connect"
    );
    for name in named {
        assert!(message.contains(name), "{args:?} names {name}: {message}");
    }
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[test]
fn an_ops_listen_that_is_not_an_address_is_refused_by_config_check_and_run() {
    for command in [&["config", "check"][..], &["run"]] {
        assert_usage_error(
            command,
            &[("ORDERFLOW_OPS__LISTEN", "ninety-four-hundred")],
            &["ops.listen", "host:port"],
        );
    }
}

#[test]
fn an_ops_listen_in_use_is_refused_by_config_check_and_by_run_before_it_connects() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    for command in [&["config", "check"][..], &["run"]] {
        assert_usage_error(
            command,
            &[("ORDERFLOW_OPS__LISTEN", &address)],
            &["ops.listen", &address],
        );
    }
    drop(taken);
    let output = orderflow(&["config", "check"], &[("ORDERFLOW_OPS__LISTEN", &address)]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn an_unknown_librdkafka_property_is_a_settings_error_not_an_unreachable_broker() {
    let file = config_file("[kafka.extra]\n\"fetch.wiat.max.ms\" = \"5\"\n");
    let path = file.path().to_str().unwrap();
    for command in [
        &["config", "check", "--config", path][..],
        &["run", "--config", path],
    ] {
        assert_usage_error(command, &[], &["kafka.extra.fetch.wiat.max.ms"]);
        let message = stderr(&orderflow(command, &[]));
        assert!(!message.contains("is the broker up"), "{message}");
    }
}

#[test]
fn a_settings_file_that_is_not_toml_is_reported_with_its_line_and_column() {
    let file = config_file("[processor]\nbatch_max_records = 10\nbatch_max_wait_ms = = 3\n");
    let path = file.path().to_str().unwrap();
    assert_usage_error(
        &["config", "check", "--config", path],
        &[],
        &[path, "line 3, column 21"],
    );
}

#[test]
fn machine_check_exits_2_for_an_invalid_definition_as_the_exit_code_table_says() {
    let file = config_file(
        "name = \"broken\"\nversion = 1\ninitial = \"Nowhere\"\n\n[[states]]\nname = \"Pending\"\n",
    );
    let output = orderflow(&["machine", "check", file.path().to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let output = orderflow(&["machine", "check", "machines/order-lifecycle.toml"], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn the_exit_code_table_is_in_the_help() {
    let output = orderflow(&["--help"], &[]);
    let help = String::from_utf8_lossy(&output.stdout);
    for line in ["Exit codes:", "  2   bad usage", "  70  `run`"] {
        assert!(help.contains(line), "{line}: {help}");
    }
}

#[test]
fn capacity_finds_the_last_bench_run_from_any_directory_or_names_the_file_it_wanted() {
    let elsewhere = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command
        .current_dir(elsewhere.path())
        .env_remove("ORDERFLOW_CONFIG")
        .env(
            "ORDERFLOW_DEFINITION",
            format!(
                "{}/machines/order-lifecycle.toml",
                env!("CARGO_MANIFEST_DIR")
            ),
        )
        .args(["capacity", "--orders-per-day", "1M", "--json"]);
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        plan["pods_at_peak"]
            .as_f64()
            .is_some_and(|pods| pods >= 1.0),
        "{plan}"
    );

    let missing = elsewhere.path().join("nowhere.json");
    let missing = missing.to_str().unwrap();
    assert_usage_error(
        &["capacity", "--orders-per-day", "1M", "--last-run", missing],
        &[],
        &[missing, "--per-pod-rate"],
    );
}

#[test]
fn traces_with_a_protocol_orderflow_does_not_speak_or_a_bad_ratio_are_refused() {
    assert_usage_error(
        &["run"],
        &[
            ("ORDERFLOW_TRACES__ENABLED", "true"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
        &["OTEL_EXPORTER_OTLP_PROTOCOL=grpc", "http/protobuf"],
    );
    assert_usage_error(
        &["config", "check"],
        &[("ORDERFLOW_TRACES__ROOT_SAMPLE_RATIO", "1.5")],
        &["traces.root_sample_ratio", "between 0 and 1"],
    );
}
