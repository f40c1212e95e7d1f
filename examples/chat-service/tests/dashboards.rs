//! The operators' files in `docs/` query only what the stack exports: every metric the Grafana
//! dashboard (`docs/grafana/chat-stack.json`) and the alerting rules
//! (`docs/prometheus/alerts.yml`) name exists in a stacked service's `/metrics`,
//! `promtool check rules` accepts the rules and `promtool test rules` passes their unit tests.
//!
//! This binary installs the global `metrics` recorder, so it holds the tests that need it only.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use chat_service::{ChatService, Config, Database, Telemetry};
use common::{ModerationServer, get, post_message, send_to};
use http::StatusCode;
use test_support::RedisServer;

/// Metric name prefixes of the stack: telemetry-layer, cache-layer, dedup-layer, breaker-layer
/// and the chat service's own counters.
const PREFIXES: [&str; 5] = ["http_server_", "cache_", "dedup_", "breaker_", "chat_db_"];

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

/// Every word of `text` that starts with one of [`PREFIXES`]: the metric names it mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| PREFIXES.iter().any(|p| word.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

/// Every string in a JSON document, concatenated: queries, variables and legends.
fn json_strings(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

/// Sample names in a Prometheus text exposition (`_bucket`, `_sum`, `_count` included).
fn exported(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(docs().join("prometheus"))
        .output()
        .expect(
            "promtool runs (apt-get install -y prometheus, or `cargo xtask test`, installs it)",
        );
    assert!(
        output.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_alerting_rules() {
    promtool(&["check", "rules", "alerts.yml"]);
}

/// Each alert fires on the series it is meant for and stays quiet on the near misses
/// (`docs/prometheus/alerts.test.yml`).
#[test]
fn the_alerts_fire_when_they_should_and_only_then() {
    promtool(&["test", "rules", "alerts.test.yml"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_query_is_exported() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(docs().join("grafana/chat-stack.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut dashboard_text = String::new();
    json_strings(&dashboard, &mut dashboard_text);
    let alerts = std::fs::read_to_string(docs().join("prometheus/alerts.yml")).unwrap();
    let wanted: BTreeSet<String> = metric_names(&dashboard_text)
        .into_iter()
        .chain(metric_names(&alerts))
        .collect();
    for family in [
        "http_server_request_duration_seconds_bucket",
        "cache_requests_total",
        "dedup_requests_total",
        "breaker_state",
        "breaker_transitions_total",
        "cache_tier_errors_total",
    ] {
        assert!(wanted.contains(family), "the docs query {family}");
    }

    // The whole stack, as the binary runs it with REDIS_URL and MODERATION_URL, plus a second
    // instance so purges cross between instances. The recorder is the process's global one.
    let telemetry = Telemetry::builder()
        .service_name("chat-service-dashboards")
        .install_subscriber(false)
        .from_env(false)
        .build()
        .unwrap();
    let mut redis = RedisServer::start().unwrap();
    let moderation = ModerationServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        database: Database::File(dir.path().join("chat.db")),
        redis_url: Some(redis.url()),
        moderation_url: Some(moderation.url.clone()),
        ..Config::default()
    };
    let first = ChatService::open(&config).await.unwrap();
    let second = ChatService::open(&config).await.unwrap();
    let app = first.app_with(&telemetry);
    let other = second.app();

    // Traffic that makes every series exist: reads (hits, misses, coalesced), a post with an
    // Idempotency-Key and its replay, purges crossing to the other instance, a breaker
    // transition, and Redis going away under the cache's shared tier.
    assert_eq!(
        send_to(&other, get("/rooms/lobby/messages")).await.status,
        StatusCode::OK
    );
    let reads = (0..8).map(|_| send_to(&app, get("/rooms/lobby/messages")));
    for reply in futures_util::future::join_all(reads).await {
        assert_eq!(reply.status, StatusCode::OK);
    }
    for _ in 0..2 {
        let reply = send_to(
            &app,
            post_message("lobby", "for the dashboard", Some("dash-1")),
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    }
    send_to(&app, get("/rooms")).await;
    send_to(&app, get("/")).await;
    first.moderation_breaker().unwrap().force_open();
    redis.stop().unwrap();
    send_to(&app, get("/rooms/after-redis/messages")).await;
    // Back again: the instances subscribe anew and flush what they may have missed.
    redis.restart().unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = send_to(&app, get("/metrics")).await;
        let have = exported(std::str::from_utf8(&reply.body).unwrap());
        let missing: Vec<&String> = wanted.difference(&have).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard or the alerts query metrics /metrics does not have: {missing:?}\n\
             exported: {have:?}"
        );
        // Remote purges and resubscriptions happen over Redis a moment later.
        send_to(&app, get("/rooms/after-redis/messages")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
