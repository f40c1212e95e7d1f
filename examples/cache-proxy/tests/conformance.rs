//! The behaviour checks of the public HTTP cache test suite (cache-tests.fyi,
//! github.com/http-tests/cache-tests) that apply to a shared cache, ported to Rust and run
//! against cache-proxy over real TCP on 127.0.0.1 with a local origin.
//!
//! Each test below runs one or more of the suite's files as a table of cases. A case passes,
//! fails, or fails a setup check, by the suite's own rules; a case the cache does not pass
//! carries the reason in its table (`known`), so a change in either direction fails the run.
//! The summary lines printed on stderr (`--nocapture`) give the counts per kind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "conformance/directives.rs"]
mod directives;
#[path = "conformance/freshness.rs"]
mod freshness;
#[path = "conformance/harness.rs"]
mod harness;
#[path = "conformance/known.rs"]
mod known;
#[path = "conformance/other.rs"]
mod other;
#[path = "conformance/status_vary.rs"]
mod status_vary;
#[path = "conformance/validation.rs"]
mod validation;

use harness::run_group;

#[tokio::test(start_paused = true)]
async fn cc_freshness() {
    run_group("cc-freshness", freshness::cc_freshness(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn cc_parse() {
    run_group("cc-parse", freshness::cc_parse(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn age_parse() {
    run_group("age-parse", freshness::age_parse(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn expires_freshness() {
    run_group("expires", freshness::expires(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn expires_parse() {
    run_group("expires-parse", freshness::expires_parse(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn heuristic_freshness() {
    run_group("heuristic", freshness::heuristic(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn cc_response() {
    run_group("cc-response", directives::cc_response(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn cc_request() {
    run_group("cc-request", directives::cc_request(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn pragma() {
    run_group("pragma", directives::pragma(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn cc_stale() {
    run_group("cc-stale", directives::cc_stale(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn stale() {
    run_group("stale", directives::stale(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn status() {
    run_group("status", status_vary::status(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn vary() {
    run_group("vary", status_vary::vary(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn vary_parse() {
    run_group("vary-parse", status_vary::vary_parse(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn conditional() {
    run_group("conditional", validation::conditional(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn headers() {
    run_group("headers", validation::headers(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn update304() {
    run_group("update304", validation::update304(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn update_head() {
    run_group("update-head", validation::update_head(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn invalidation() {
    run_group("invalidation", other::invalidation(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn method() {
    run_group("method", other::method(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn authorization() {
    run_group("auth", other::authorization(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn other() {
    run_group("other", other::other(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn cdn_cache_control() {
    run_group(
        "cdn-cache-control",
        other::cdn_cache_control(),
        known::reason,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn partial() {
    run_group("partial", other::partial(), known::reason).await;
}

#[tokio::test(start_paused = true)]
async fn gateway() {
    run_group("gateway", other::gateway(), known::reason).await;
}
