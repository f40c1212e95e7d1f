//! The operators' files in `docs/` query only what the stack exports: every metric and label the
//! Grafana dashboard (`docs/grafana/chat-stack.json`) and the alerting rules
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

use chat_service::{ChatService, Config, Telemetry};
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

/// Label names in a Prometheus text exposition.
fn exported_labels(exposition: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for line in exposition.lines().filter(|line| !line.starts_with('#')) {
        let Some((_, mut rest)) = line.split_once('{') else {
            continue;
        };
        // name="value" pairs; values may hold braces, commas and escaped quotes.
        while let Some((name, after)) = rest.split_once("=\"") {
            labels.insert(name.trim_start_matches(',').trim().to_owned());
            let mut escaped = false;
            let end = after.char_indices().find(|&(_, c)| {
                let closing = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closing
            });
            let Some((end, _)) = end else { break };
            rest = &after[end + 1..];
            if rest.starts_with('}') {
                break;
            }
        }
    }
    labels
}

/// Label names a query text uses: in `by (...)` / `without (...)`, in `{name="..."}` matchers
/// and in `{{name}}` legends (annotations' `{{ $labels.x }}` are left out: they name labels of
/// the alert's own result, checked by `promtool test rules`).
fn used_labels(text: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let word = |w: &str| {
        let w = w.trim();
        (!w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .then(|| w.to_owned())
    };
    for keyword in ["by (", "by(", "without (", "without("] {
        for (at, _) in text.match_indices(keyword) {
            let list = &text[at + keyword.len()..];
            let list = &list[..list.find(')').unwrap_or(0)];
            labels.extend(list.split(',').filter_map(word));
        }
    }
    for (at, _) in text.match_indices("{{") {
        let inner = &text[at + 2..];
        let inner = &inner[..inner.find("}}").unwrap_or(0)];
        labels.extend(word(inner));
    }
    let bytes = text.as_bytes();
    for (at, _) in text.match_indices('{') {
        let double = bytes.get(at + 1) == Some(&b'{') || (at > 0 && bytes[at - 1] == b'{');
        if double {
            continue;
        }
        let inner = &text[at + 1..];
        let inner = &inner[..inner.find('}').unwrap_or(0)];
        for matcher in inner.split(',') {
            let name = matcher.split(['=', '!', '~']).next().unwrap_or("");
            if matcher.contains(['=', '~']) {
                labels.extend(word(name));
            }
        }
    }
    labels
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
    let alert_queries: String = alerts
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter(|line| !line.contains("{{ $labels"))
        .collect::<Vec<_>>()
        .join("\n");
    let wanted_labels: BTreeSet<String> = used_labels(&dashboard_text)
        .into_iter()
        .chain(used_labels(&alert_queries))
        // Prometheus adds these at scrape time.
        .filter(|label| label != "instance" && label != "job")
        .collect();
    for label in ["http_route", "tier", "outcome", "breaker", "le"] {
        assert!(
            wanted_labels.contains(label),
            "the docs use {label}: {wanted_labels:?}"
        );
    }
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
        moderation_url: Some(moderation.url.clone()),
        ..common::shared_config(dir.path(), redis.url())
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
        let exposition = std::str::from_utf8(&reply.body).unwrap();
        let have = exported(exposition);
        let have_labels = exported_labels(exposition);
        let missing: Vec<&String> = wanted.difference(&have).collect();
        let missing_labels: Vec<&String> = wanted_labels.difference(&have_labels).collect();
        if missing.is_empty() && missing_labels.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard or the alerts query what /metrics does not have: metrics {missing:?}, \
             labels {missing_labels:?}\nexported: {have:?}, labels {have_labels:?}"
        );
        // Remote purges and resubscriptions happen over Redis a moment later.
        send_to(&app, get("/rooms/after-redis/messages")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn labels_are_read_from_queries_legends_and_the_exposition() {
    let used = used_labels(
        r#"sum by (tier, cause) (rate(x_total{tier="l1",outcome!~"a|b"}[5m])) {{http_route}} {{ $labels.x }}"#,
    );
    let want: BTreeSet<String> = ["cause", "http_route", "outcome", "tier"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(used, want);
    let have = exported_labels(
        "# HELP a_total x{y=\"z\"}\na_total{route=\"/r/{x}/m\",quote=\"q\\\"}\",le=\"+Inf\"} 1\nb 2\n",
    );
    let want: BTreeSet<String> = ["le", "quote", "route"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(have, want);
}
