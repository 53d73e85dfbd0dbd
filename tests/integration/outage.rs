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

    /// What `kafka.sh tool NAME ARGS` printed.
    fn tool(&self, args: &[&str]) -> String {
        let output = Command::new(Self::script())
            .arg("tool")
            .args(args)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_DATA_DIR", self.dir.path())
            .output()
            .expect("kafka.sh runs");
        assert!(output.status.success(), "kafka.sh tool {args:?} failed");
        String::from_utf8_lossy(&output.stdout).into_owned()
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

    /// Partitions of transactions open longer than a minute: (topic, partition, start offset).
    fn hanging_transactions(&self) -> Vec<(String, String, String)> {
        let bootstrap = format!("127.0.0.1:{}", self.port);
        let listing = self.tool(&[
            "transactions",
            "--bootstrap-server",
            &bootstrap,
            "find-hanging",
            "--broker-id",
            "1",
            "--max-transaction-timeout",
            "1",
        ]);
        listing
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.len() >= 6).then(|| (fields[0].into(), fields[1].into(), fields[5].into()))
            })
            .collect()
    }

    /// Aborts a hanging transaction's records on one partition (the operator's runbook).
    fn abort(&self, (topic, partition, start_offset): &(String, String, String)) {
        let bootstrap = format!("127.0.0.1:{}", self.port);
        self.tool(&[
            "transactions",
            "--bootstrap-server",
            &bootstrap,
            "abort",
            "--topic",
            topic,
            "--partition",
            partition,
            "--start-offset",
            start_offset,
        ]);
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
    let mut processor = RunningProcessor::start(&settings);

    let orders: Vec<String> = (0..400).map(|n| format!("{}-{n}", unique("o"))).collect();
    let creates: Vec<_> = orders.iter().map(|o| request(o, "create")).collect();
    let mut positions = produce(&settings, &creates).await;
    // Crash the broker right after the first wave (the processor may still be deciding it).
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

    let mut outcomes = outcomes_within(&settings, 800, Duration::from_secs(100)).await;
    if outcomes.len() < 800 {
        // Kafka 4.4's restarted coordinator may skip the markers of the commit that was in flight
        // (below): a hanging transaction, which the processor reports and no client can resolve.
        // Then the test is the operator and applies the runbook (docs/operations.md).
        let hanging = broker.hanging_transactions();
        assert!(
            !hanging.is_empty(),
            "{} of 800 outcomes after 100 s and no hanging transaction",
            outcomes.len()
        );
        let skipped = broker.log_lines("Couldn't find leader endpoint");
        assert!(
            !skipped.is_empty(),
            "hanging transactions {hanging:?}, but the broker did not log skipped markers"
        );
        eprintln!("hanging transaction {hanging:?} after the broker skipped markers: {skipped:?}");
        let _ = processor.stop_and_wait();
        let _ = std::fs::remove_dir_all(&settings.state.dir);
        for partition in &hanging {
            broker.abort(partition);
        }
        processor = RunningProcessor::start(&settings);
        outcomes = outcomes_within(&settings, 800, Duration::from_secs(180)).await;
    }
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
