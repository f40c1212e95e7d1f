//! A compressed chaos run against the real binaries (debug build): two stacked instances sharing a real
//! redis-server, reaching it and the moderation service through fault proxies, under 22 s of the chat mix at
//! 600 requests/s while the eight faults of the standard schedule happen one after the other, each for about a
//! second (Redis killed and restarted empty, frozen, 1 s slower, connections reset; moderation slow, answering
//! 500, hanging, refusing connections).
//!
//! It fails when a guarantee breaks (a read fails, a post fails other than by a documented refusal, a refused
//! post is never accepted, an acknowledged post is lost or stored twice, a first page is stale past the
//! freshness bound) and when a fault did not demonstrably reach the service. The moderation breaker waits 1 s
//! instead of 5 s, so it closes between the compressed faults. Nothing here asserts a speed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::time::Duration;

use chat_loadtest::chaos::{Fault, Refusal};
use chat_loadtest::procs::CpuPlan;
use chat_loadtest::runner::{self, Options};
use chat_loadtest::stack::Variant;
use common::bin_dir;

fn options(out_dir: &std::path::Path) -> Options {
    Options {
        bin_dir: bin_dir(),
        out_dir: out_dir.to_path_buf(),
        variants: vec![Variant::Stacked2],
        rate: 600.0,
        duration: Duration::from_secs(22),
        warmup: Duration::from_secs(1),
        max_requests: 1_000_000,
        max_in_flight: 2_000,
        rooms: 20,
        messages_per_room: 50,
        burst: 5,
        zipf_exponent: 1.1,
        retry_share: 0.2,
        outage: Duration::ZERO,
        search: None,
        seed: 42,
        timeout: Duration::from_secs(10),
        cpus: CpuPlan::none(),
        progress: false,
        churn: None,
        chaos: true,
        chat_args: vec!["--moderation-breaker-wait=1s".to_owned()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_every_fault_nothing_is_lost_duplicated_stale_or_failed() {
    let out = tempfile::tempdir().unwrap();
    let options = options(out.path());
    let report = runner::run(&options).await.unwrap();
    report.write(out.path()).unwrap();
    let chaos = report.chaos.as_ref().expect("a chaos section");

    for verdict in &report.verdicts {
        assert_eq!(
            verdict.met,
            Some(true),
            "{}: {}\n{}",
            verdict.target,
            verdict.measured,
            chaos.text()
        );
    }
    assert!(report.broken_guarantees().is_empty());

    // Every fault happened and reached the service.
    let faults: Vec<Fault> = chaos.faults.iter().map(|f| f.fault).collect();
    assert_eq!(faults, Fault::ORDER);
    for fault in &chaos.faults {
        assert!(fault.fired, "{:?}: {}", fault.fault, fault.evidence);
    }
    let killed = &chaos.faults[0];
    assert!(
        killed
            .detail
            .iter()
            .any(|d| d.starts_with("restarted empty")),
        "{:?}",
        killed.detail
    );
    // The moderation breakers opened, on both instances, and closed again.
    for i in 0..2 {
        let opened: f64 = chaos
            .faults
            .iter()
            .filter(|f| !f.fault.is_redis())
            .filter_map(|f| f.instances[i].map(|c| c.moderation_opened))
            .sum();
        assert!(opened >= 1.0, "instance {i}: the breaker never opened");
    }
    for transitions in &chaos.breaker_transitions {
        assert!(
            transitions
                .transitions
                .keys()
                .any(|t| t == "moderation: half_open -> closed"),
            "{transitions:?}"
        );
    }

    // Posts were refused as documented, for both reasons, sent again with their keys, and accepted.
    for refusal in [Refusal::KeyStoreUnavailable, Refusal::ModerationUnavailable] {
        assert!(
            chaos.refusals.0.get(refusal.name()).is_some_and(|n| *n > 0),
            "{refusal:?}: {:?}",
            chaos.refusals
        );
    }
    assert!(chaos.posts.resent > 0 && chaos.posts.never_accepted == 0);
    assert!(chaos.posts.replayed > 0, "{:?}", chaos.posts);
    assert!(chaos.freshness_checks > 0 && chaos.reads_served > 0);

    // The same in the written reports.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["chaos"]["faults"].as_array().unwrap().len(), 8);
    assert_eq!(json["chaos"]["lost"], 0);
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(html.contains("<h2>Guarantees</h2>"));
    assert_eq!(html.matches("class=\"band\"").count(), 3 * 8);
}
