//! The service run in-process through `orderflow::service::Service::run`: the ways it ends by
//! itself — the transactional-call watchdog and the shutdown deadline — each as a typed error
//! with its exit code, never by exiting the process.

use std::time::{Duration, Instant};

use orderflow::processor::Failpoints;
use orderflow::service::ServiceError;

use crate::support::{
    create_topics, definition, processor_settings, produce, read_to_end, request, service, unique,
    RunningProcessor,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints")]
async fn the_watchdog_ends_the_service_with_exit_code_70_when_a_transactional_call_hangs() {
    let mut settings = processor_settings(1, &unique("hang"));
    settings.processor.transaction_timeout_ms = 1000;
    create_topics(&settings).await;
    let running = RunningProcessor::run(
        service(&settings, definition())
            .with_failpoints(Failpoints::parse(Some("hang-in-commit:1:30000"))),
    );
    produce(&settings, &[request(&unique("order"), "create")]).await;
    let started = Instant::now();
    let ended = tokio::task::spawn_blocking(move || running.wait())
        .await
        .unwrap();
    match ended {
        Err(error @ ServiceError::TransactionalCallStuck { .. }) => {
            assert_eq!(error.exit_code(), 70);
            assert!(error.to_string().contains("commit_transaction"), "{error}");
        }
        other => panic!("the watchdog ended the service: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "within a few limits (3 s) of the hang, not after the hang itself (30 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints")]
async fn the_shutdown_deadline_ends_a_service_whose_loop_does_not_finish_its_batch() {
    let mut settings = processor_settings(1, &unique("deadline"));
    settings.processor.shutdown_deadline_ms = 1000;
    create_topics(&settings).await;
    let running = RunningProcessor::run(
        service(&settings, definition())
            .with_failpoints(Failpoints::parse(Some("stall-before-commit:1"))),
    );
    produce(&settings, &[request(&unique("order"), "create")]).await;
    // The batch's records are written (visible to read_uncommitted) before the loop stalls.
    let waited = Instant::now();
    while read_to_end(&settings, &settings.topics.state, "read_uncommitted").is_empty() {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the batch was produced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = Instant::now();
    let ended = tokio::task::spawn_blocking(move || running.stop_and_wait())
        .await
        .unwrap();
    match ended {
        Err(error @ ServiceError::ShutdownDeadline { .. }) => assert_eq!(error.exit_code(), 1),
        other => panic!("the shutdown deadline ended the service: {other:?}"),
    }
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "after the 1 s deadline: {took:?}"
    );
}
