//! A broker restart is retriable: the processor waits, resumes by itself, and every
//! input still gets exactly one outcome.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::{
    create_topics, outcomes_within, processor_settings, produce, request, unique, RunningProcessor,
};

/// A broker of this test's own (the shared test broker must not restart under other tests).
struct OwnBroker {
    port: u16,
    dir: tempfile::TempDir,
}

impl OwnBroker {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka.sh")
    }

    fn run(&self, args: &[&str]) {
        let status = Command::new(Self::script())
            .args(args)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_DATA_DIR", self.dir.path())
            .env("KAFKA_HEAP", "512m")
            .status()
            .expect("kafka.sh runs");
        assert!(status.success(), "kafka.sh {args:?} failed");
    }

    /// The broker log's lines containing `needle`.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("logs/server.log"))
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_string)
            .collect()
    }

    fn start(port: u16) -> OwnBroker {
        let broker = OwnBroker {
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        broker.run(&["up"]);
        broker
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .args(["down", "--purge"])
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_DATA_DIR", self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_rides_out_a_broker_restart_between_two_waves_of_requests() {
    let broker = tokio::task::spawn_blocking(|| OwnBroker::start(19392))
        .await
        .unwrap();
    let mut settings = processor_settings(3, &unique("outage"));
    settings.kafka.bootstrap_servers = format!("127.0.0.1:{}", broker.port);
    create_topics(&settings).await;
    let processor = RunningProcessor::start(&settings);

    let orders: Vec<String> = (0..400).map(|n| format!("{}-{n}", unique("o"))).collect();
    let creates: Vec<_> = orders.iter().map(|o| request(o, "create")).collect();
    let mut positions = produce(&settings, &creates).await;
    // Crash the broker once the first wave is decided and its markers are written, not in the
    // middle of a commit: a single Kafka 4.4 broker restarted then may skip some of the commit's
    // markers, a hanging transaction only an operator can resolve, and not always without
    // duplicates (docs/reliability.md; `make chaos` covers that case with the runbook).
    let first_wave = outcomes_within(&settings, 400, Duration::from_secs(60)).await;
    assert_eq!(first_wave.len(), 400, "the first wave is decided");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let broker = tokio::task::spawn_blocking(move || {
        broker.run(&["kill", "--node", "1"]);
        std::thread::sleep(Duration::from_secs(3));
        broker.run(&["up"]);
        broker
    })
    .await
    .unwrap();
    let confirms: Vec<_> = orders.iter().map(|o| request(o, "confirm")).collect();
    positions.extend(produce(&settings, &confirms).await);

    let outcomes = outcomes_within(&settings, 800, Duration::from_secs(180)).await;
    let skipped = broker.log_lines("Couldn't find leader endpoint");
    assert!(
        outcomes.len() == 800 || skipped.is_empty(),
        "the broker skipped transaction markers (a hanging transaction, Kafka's bug): {skipped:?}"
    );
    processor.stop();
    drop(broker);

    let per_input = outcomes.per_input();
    for position in &positions {
        assert_eq!(
            per_input.get(position),
            Some(&1),
            "input {position:?}: exactly one outcome"
        );
    }
    assert_eq!(outcomes.len(), 800);
    assert_eq!(
        outcomes.accepted.len(),
        800,
        "{:?}",
        outcomes.rejected.first()
    );
}
