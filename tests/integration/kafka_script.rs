//! deploy/local/kafka.sh refuses clearly when its port is taken by something else, and its
//! multi-node options are checked.

use std::net::TcpListener;
use std::process::Command;

#[test]
fn a_port_taken_by_another_program_is_refused_with_the_cause_and_the_fix() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/local/kafka.sh"
    ))
    .arg("up")
    .env("KAFKA_PORT", port.to_string())
    .env("KAFKA_DATA_DIR", dir.path())
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("port {port} is taken")),
        "{stderr}"
    );
    assert!(stderr.contains("KAFKA_PORT="), "names the fix: {stderr}");
    assert!(
        !dir.path().join("broker.pid").exists(),
        "nothing was started"
    );
}

#[test]
fn status_of_a_broker_that_is_not_running_says_so_with_its_own_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/local/kafka.sh"
    ))
    .arg("status")
    .env("KAFKA_PORT", "1")
    .env("KAFKA_DATA_DIR", dir.path())
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("stopped"));
}

#[test]
fn up_on_the_running_test_broker_succeeds_and_starts_nothing() {
    // `make test` exports the test broker's port and data dir; without them there is nothing to ask.
    let (Ok(port), Ok(dir)) = (std::env::var("KAFKA_PORT"), std::env::var("KAFKA_DATA_DIR")) else {
        eprintln!("skipped: KAFKA_PORT / KAFKA_DATA_DIR not set (run through `make test`)");
        return;
    };
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/local/kafka.sh"
    ))
    .arg("up")
    .env("KAFKA_PORT", port)
    .env("KAFKA_DATA_DIR", dir)
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("already running"), "{stdout}");
    assert!(!stdout.contains("starting"), "{stdout}");
}

#[test]
fn a_node_outside_the_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/local/kafka.sh"
    ))
    .args(["--nodes", "3", "kill", "--node", "4"])
    .env("KAFKA_PORT", "1")
    .env("KAFKA_DATA_DIR", dir.path())
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nodes 1 to 3"));
}
