//! Exactly once across a crash: the processor is SIGKILLed between producing a batch and committing
//! it, then restarted with the same instance id.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orderflow::config::Settings;

use crate::support::{
    create_topics, outcomes_within, processor_settings, produce, read_to_end, request, unique,
    Outcomes,
};

/// A spawned `orderflow run`, killed when dropped: a test that panics must not leave a processor
/// running (it would retry forever once the broker is gone and keep the test run's output open).
pub struct RunningBinary(pub Child);

impl std::ops::Deref for RunningBinary {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for RunningBinary {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the `orderflow run` binary for `settings`, with an optional failpoint.
pub fn spawn_binary(settings: &Settings, failpoint: Option<&str>) -> RunningBinary {
    spawn_binary_with(settings, failpoint, &[])
}

/// Like [`spawn_binary`], with further environment variables (set last, so they win).
pub fn spawn_binary_with(
    settings: &Settings,
    failpoint: Option<&str>,
    environment: &[(&str, &str)],
) -> RunningBinary {
    let mut command = binary_command(settings);
    command.arg("run");
    match failpoint {
        Some(f) => command.env("ORDERFLOW_FAILPOINT", f),
        None => command.env_remove("ORDERFLOW_FAILPOINT"),
    };
    command.envs(environment.iter().copied());
    RunningBinary(command.spawn().expect("orderflow binary starts"))
}

/// Sends SIGTERM to a child, as Kubernetes does to stop a pod.
pub fn sigterm(child: &Child) {
    // SAFETY: kill(2) on a child we own.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

/// The orderflow binary, configured by environment variables for `settings` (add the subcommand).
pub fn binary_command(settings: &Settings) -> Command {
    let repo = env!("CARGO_MANIFEST_DIR");
    let t = &settings.topics;
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command
        .current_dir(repo)
        .env(
            "ORDERFLOW_DEFINITION",
            format!("{repo}/machines/order-lifecycle.toml"),
        )
        .env("ORDERFLOW_INSTANCE_ID", &settings.instance_id)
        .env(
            "ORDERFLOW_KAFKA__BOOTSTRAP_SERVERS",
            &settings.kafka.bootstrap_servers,
        )
        .env("ORDERFLOW_KAFKA__GROUP_ID", &settings.kafka.group_id)
        .env("ORDERFLOW_OPS__LISTEN", "127.0.0.1:0")
        .env("ORDERFLOW_TOPICS__REQUESTS", &t.requests)
        .env("ORDERFLOW_TOPICS__STATE", &t.state)
        .env("ORDERFLOW_TOPICS__ACCEPTED", &t.accepted)
        .env("ORDERFLOW_TOPICS__REJECTED", &t.rejected)
        .env("ORDERFLOW_TOPICS__DEAD_LETTERS", &t.dead_letters)
        .env("ORDERFLOW_TOPICS__PARTITIONS", t.partitions.to_string())
        .env(
            "ORDERFLOW_PROCESSOR__BATCH_MAX_RECORDS",
            settings.processor.batch_max_records.to_string(),
        )
        .env(
            "ORDERFLOW_PROCESSOR__SESSION_TIMEOUT_MS",
            settings.processor.session_timeout_ms.to_string(),
        )
        .env(
            "ORDERFLOW_PROCESSOR__PARKING_MAX_WAIT_MS",
            settings.processor.parking_max_wait_ms.to_string(),
        )
        .env(
            "ORDERFLOW_STATE__BACKEND",
            match settings.state.backend {
                orderflow::config::StateBackend::Memory => "memory",
                orderflow::config::StateBackend::Disk => "disk",
            },
        )
        .env("ORDERFLOW_STATE__DIR", &settings.state.dir)
        .env(
            "RUST_LOG",
            std::env::var("ORDERFLOW_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints")]
async fn a_processor_killed_before_commit_leaves_no_trace_and_its_restart_decides_every_input_once()
{
    let backlog = three_steps_of_sixty_orders_produced("crash").await;
    let settings = &backlog.settings;

    let mut doomed = spawn_binary(settings, Some("kill-before-commit:2"));
    let status = tokio::task::spawn_blocking(move || doomed.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the failpoint SIGKILLed the processor: {status}"
    );

    let mut restarted = spawn_binary(settings, None);
    let outcomes =
        outcomes_within(settings, backlog.positions.len(), Duration::from_secs(90)).await;
    let _ = restarted.kill();
    let _ = restarted.wait();

    // The killed batch's records were written and aborted: visible only to read_uncommitted.
    assert_three_steps_each_decided_once_after_an_aborted_batch(&backlog, &outcomes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints")]
async fn an_aborted_transaction_is_redone_from_the_committed_state_and_decides_every_input_once() {
    // A backlog of full batches; the second batch's transaction aborts once after its records
    // were produced, so the consumer must rewind and the batch be decided again.
    let backlog = three_steps_of_sixty_orders_produced("abort").await;
    let settings = &backlog.settings;

    let mut processor = spawn_binary(settings, Some("abort-before-commit:2"));
    let outcomes =
        outcomes_within(settings, backlog.positions.len(), Duration::from_secs(90)).await;
    let _ = processor.kill();
    let _ = processor.wait();

    assert_three_steps_each_decided_once_after_an_aborted_batch(&backlog, &outcomes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_consumer_delivers_again_after_a_commit_are_not_decided_twice() {
    // After the first batch commits, the consumer goes back to the start of its partitions (as
    // librdkafka once did after a rewind): the records of that batch arrive again and must be
    // skipped, not answered a second time.
    let backlog = three_steps_of_sixty_orders_produced("redeliver").await;
    let settings = &backlog.settings;

    let mut processor = spawn_binary(settings, Some("redeliver-after-commit:1"));
    let outcomes =
        outcomes_within(settings, backlog.positions.len(), Duration::from_secs(90)).await;
    // Give a second answer time to show up.
    std::thread::sleep(Duration::from_secs(3));
    let later = outcomes_within(
        settings,
        backlog.positions.len() + 1,
        Duration::from_secs(5),
    )
    .await;
    let _ = processor.kill();
    let _ = processor.wait();

    let per_input = later.per_input();
    for position in &backlog.positions {
        assert_eq!(
            per_input.get(position),
            Some(&1),
            "input {position:?} has exactly one committed outcome"
        );
    }
    assert_eq!(later.len(), outcomes.len());
    assert!(later.rejected.is_empty(), "{:?}", later.rejected);
}

/// A backlog waiting for a processor: sixty new orders' create, confirm and ship requests (all
/// creates first) on fresh topics, for batches of 40.
pub struct Backlog {
    /// The processor's settings (topics, batches of 40).
    pub settings: Settings,
    /// The sixty orders.
    pub orders: Vec<String>,
    /// Where each request landed.
    pub positions: Vec<(i32, i64)>,
}

/// Produces the [`Backlog`] on fresh topics.
pub async fn three_steps_of_sixty_orders_produced(name: &str) -> Backlog {
    three_steps_of_sixty_orders_produced_on(name, 3).await
}

/// The [`Backlog`] on fresh topics of `partitions` partitions.
pub async fn three_steps_of_sixty_orders_produced_on(name: &str, partitions: i32) -> Backlog {
    let mut settings = processor_settings(partitions, &unique(name));
    settings.processor.batch_max_records = 40;
    create_topics(&settings).await;
    let orders: Vec<String> = (0..60).map(|i| format!("{}-{i}", unique("o"))).collect();
    let mut requests = Vec::new();
    for transition in ["create", "confirm", "ship"] {
        for o in &orders {
            requests.push(request(o, transition));
        }
    }
    let positions = produce(&settings, &requests).await;
    Backlog {
        settings,
        orders,
        positions,
    }
}

/// Every input has exactly one committed outcome, every order went create → confirm → ship
/// (versions 1, 2, 3) without a rejection, and the aborted batch's records are in the log,
/// visible only to read_uncommitted.
fn assert_three_steps_each_decided_once_after_an_aborted_batch(
    backlog: &Backlog,
    outcomes: &Outcomes,
) {
    let Backlog {
        settings,
        orders,
        positions,
    } = backlog;
    let per_input = outcomes.per_input();
    for position in positions {
        assert_eq!(
            per_input.get(position),
            Some(&1),
            "input {position:?} has exactly one committed outcome"
        );
    }
    assert_eq!(outcomes.len(), positions.len());
    assert!(outcomes.rejected.is_empty(), "{:?}", outcomes.rejected);
    for o in orders {
        let mut versions: Vec<u64> = outcomes
            .accepted
            .iter()
            .filter(|r| &r.order_id == o)
            .map(|r| r.version)
            .collect();
        versions.sort();
        assert_eq!(versions, vec![1, 2, 3], "order {o}");
    }
    let uncommitted = read_to_end(settings, &settings.topics.accepted, "read_uncommitted").len();
    assert!(
        uncommitted > outcomes.accepted.len(),
        "read_uncommitted sees the aborted batch ({uncommitted} vs {} committed)",
        outcomes.accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_cleanly_and_loses_or_repeats_nothing() {
    let mut settings = processor_settings(3, &unique("term"));
    settings.processor.batch_max_records = 100;
    create_topics(&settings).await;
    let orders: Vec<String> = (0..500).map(|i| format!("{}-{i}", unique("o"))).collect();
    let mut requests = Vec::new();
    for transition in ["create", "confirm"] {
        for o in &orders {
            requests.push(request(o, transition));
        }
    }
    let mut first = spawn_binary(&settings, None);
    let positions = produce(&settings, &requests).await;
    // Stop it while it works through the load.
    let partial = outcomes_within(&settings, 1, Duration::from_secs(60)).await;
    assert!(!partial.accepted.is_empty());
    sigterm(&first);
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || first.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "graceful exit: {status}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "within the shutdown deadline"
    );

    let mut second = spawn_binary(&settings, None);
    let outcomes = outcomes_within(&settings, 1000, Duration::from_secs(90)).await;
    let _ = second.kill();
    let _ = second.wait();
    let per_input = outcomes.per_input();
    for position in &positions {
        assert_eq!(per_input.get(position), Some(&1), "input {position:?}");
    }
    assert_eq!(
        outcomes.accepted.len(),
        1000,
        "{:?}",
        outcomes.rejected.first()
    );
}

/// Runs `orderflow check --json` over the settings' topics and asserts a clean verdict over
/// `inputs` inputs; returns the verdict.
pub async fn assert_check_clean(settings: &Settings, inputs: usize) -> serde_json::Value {
    let checked = tokio::task::spawn_blocking({
        let settings = settings.clone();
        move || {
            binary_command(&settings)
                .args(["check", "--json"])
                .stdout(Stdio::piped())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let verdict: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&checked.stdout).trim()).unwrap();
    assert_eq!(checked.status.code(), Some(0), "{verdict}");
    for count in [
        "lost",
        "duplicated",
        "illegal",
        "version_gaps",
        "state_mismatches",
        "duplicate_mismatches",
        "decided_twice",
        "dead_letters_lost",
        "dead_letters_duplicated",
        "dead_letters_unexpected",
        "orphan_outcomes",
    ] {
        assert_eq!(verdict[count], 0, "{count} in {verdict}");
    }
    assert_eq!(verdict["inputs"], inputs, "{verdict}");
    verdict
}
