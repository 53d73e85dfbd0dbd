//! The short chaos scenario `make test` runs on every change: a processor SIGKILLed at random
//! moments under load and restarted each time (as Kubernetes would), judged by the load
//! generator's own accounting and by the independent checker (`orderflow check`).

use std::process::Stdio;
use std::time::Duration;

use crate::crash::{assert_check_clean, binary_command, spawn_binary};
use crate::support::{create_topics, processor_settings, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_three_times_loses_and_duplicates_nothing() {
    let mut settings = processor_settings(3, &unique("chaos"));
    settings.processor.batch_max_records = 200;
    create_topics(&settings).await;
    let mut processor = spawn_binary(&settings, None);

    let mut loadgen = binary_command(&settings);
    loadgen
        .args([
            "loadgen",
            "--orders",
            "2000",
            "--rate",
            "1500",
            "--seed",
            "3",
            "--concurrency",
            "300",
            "--poison-share",
            "0.01",
            "--out-of-order-share",
            "0.05",
            "--wait-secs",
            "120",
            "--no-progress",
            "--json",
        ])
        .stdout(Stdio::piped());
    let loadgen = loadgen.spawn().unwrap();

    // Kill at moments the seed of this run picks (between 0.7 and 2.2 s apart).
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut rng = orderflow::tools::loadgen::plan::Rng::new(seed);
    for kill in 0..3 {
        tokio::time::sleep(Duration::from_millis(700 + rng.below(1500) as u64)).await;
        processor.kill().unwrap();
        processor.wait().unwrap();
        eprintln!("chaos: SIGKILL {} (seed {seed}); restarting", kill + 1);
        processor = spawn_binary(&settings, None);
    }
    let output = tokio::task::spawn_blocking(move || loadgen.wait_with_output().unwrap())
        .await
        .unwrap();
    processor.kill().unwrap();
    processor.wait().unwrap();
    let report: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(report["missing"], 0, "{report}");
    assert_eq!(report["repeated"], 0, "{report}");
    assert_eq!(report["unexpected"], 0, "{report}");
    assert_eq!(output.status.code(), Some(0), "{report}");

    let sent = report["sent"].as_u64().unwrap() as usize;
    let verdict = assert_check_clean(&settings, sent).await;
    assert_eq!(
        verdict["poison"], report["expected"]["dead_letter"],
        "{verdict}"
    );
}
