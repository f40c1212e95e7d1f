//! Runs N sequential unique GETs through a `Router` (bare, with a no-op layer, or with `DedupLayer`) to count instructions.
//!
//! Wall-clock figures are noisy on a shared machine; instruction counts are not. Build with
//! `cargo bench -p dedup-layer --bench request_cost --no-run`, then run the binary it names under callgrind
//! twice per variant with two request counts, and divide the difference by the difference in requests
//! (this cancels the setup cost):
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null BIN bare 2000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null BIN bare 12000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null BIN noop 2000    (any layer's floor)
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null BIN dedup 2000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null BIN dedup 12000
//! ```
//!
//! A third argument `tcp` sends the requests over one kept-alive loopback connection (server and client on the
//! same thread) instead of calling the `Router` directly; callgrind then counts the user-space cost of the whole
//! HTTP exchange.
//!
//! Without arguments (as under `cargo bench`) it runs both variants once and prints their wall-clock rate.
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use dedup_layer::DedupLayer;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;

/// `bare`: no layer; `noop`: a layer that adds nothing (the floor any `Router::layer` pays); `dedup`.
fn app(variant: &str) -> Router {
    let router = Router::new().route(
        "/r",
        get(|| async { "a small answer of a few dozen bytes...." }),
    );
    match variant {
        "dedup" => router.layer(DedupLayer::new()),
        "noop" => router.layer(tower::layer::layer_fn(|service| service)),
        _ => router,
    }
}

#[inline(never)]
fn run(variant: &str, requests: usize, tcp: bool) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = app(variant);
    rt.block_on(async {
        let mut bytes = 0;
        if tcp {
            // Server and client share the one thread; a single kept-alive connection.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            let client: Client<HttpConnector, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let uris: Vec<Uri> = (0..4096)
                .map(|n| format!("http://{addr}/r?n={n}").parse().unwrap())
                .collect();
            for i in 0..requests {
                let response = client.get(uris[i % uris.len()].clone()).await.unwrap();
                bytes += response
                    .into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .len();
            }
        } else {
            let uris: Vec<Uri> = (0..4096)
                .map(|n| format!("/r?n={n}").parse().unwrap())
                .collect();
            for i in 0..requests {
                let req = Request::get(uris[i % uris.len()].clone())
                    .body(Body::empty())
                    .unwrap();
                let response = app.clone().oneshot(req).await.unwrap();
                bytes += response
                    .into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .len();
            }
        }
        bytes
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(variant @ ("bare" | "noop" | "dedup")) => {
            let requests = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10_000);
            let tcp = args.get(2).is_some_and(|t| t == "tcp");
            let bytes = run(variant, requests, tcp);
            assert_eq!(bytes, requests * 39);
        }
        _ => {
            for name in ["bare", "noop", "dedup"] {
                let requests = 100_000;
                let start = Instant::now();
                run(name, requests, false);
                let rate = requests as f64 / start.elapsed().as_secs_f64();
                println!(
                    "request_cost {name}: {rate:.0} req/s (single run; use callgrind for stable figures)"
                );
            }
        }
    }
}
