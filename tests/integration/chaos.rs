//! The short chaos scenario `make test` runs on every change: a processor SIGKILLed at random
//! moments under load and restarted each time (as Kubernetes would), judged by the load
//! generator's own accounting and by the independent checker (`orderflow check`).

use std::process::Stdio;
use std::time::Duration;

use crate::crash::{binary_command, spawn_binary};
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
        "dead_letters_lost",
        "dead_letters_duplicated",
        "dead_letters_unexpected",
        "orphan_outcomes",
    ] {
        assert_eq!(verdict[count], 0, "{count} in {verdict}");
    }
    assert_eq!(verdict["inputs"], report["sent"], "{verdict}");
    assert_eq!(
        verdict["poison"], report["expected"]["dead_letter"],
        "{verdict}"
    );
}
