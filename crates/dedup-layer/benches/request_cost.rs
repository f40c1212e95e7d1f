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
//! A third argument `http` sends raw HTTP/1.1 requests to hyper's server over an in-memory pipe instead of
//! calling the `Router` directly; callgrind then counts the whole server-side exchange, deterministically
//! (no sockets, no client library). A third argument `concurrent` calls the `Router` with 64 requests in
//! flight at a time.
//!
//! Without arguments (as under `cargo bench`) it runs each variant once and prints its wall-clock rate.
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
use dedup_layer::DedupLayer;
use http::{Request, Uri};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
fn run(variant: &str, requests: usize, http: bool, concurrent: bool) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = app(variant);
    rt.block_on(async {
        let mut bytes = 0;
        if http {
            // hyper's HTTP/1.1 server over an in-memory pipe, fed raw requests: the whole server-side
            // exchange (parsing, axum, the layer, encoding) without sockets or a client library.
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let service = hyper_util::service::TowerToHyperService::new(app);
            tokio::spawn(async move {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(server), service)
                    .await
                    .unwrap();
            });
            let requests_bytes: Vec<Vec<u8>> = (0..4096)
                .map(|n| format!("GET /r?n={n} HTTP/1.1\r\nhost: bench\r\n\r\n").into_bytes())
                .collect();
            let mut buf = vec![0u8; 4096];
            for i in 0..requests {
                client
                    .write_all(&requests_bytes[i % requests_bytes.len()])
                    .await
                    .unwrap();
                // The answer is small and arrives whole; read until its body's end.
                let mut len = 0;
                while !buf[..len].ends_with(b"few dozen bytes....") {
                    let n = client.read(&mut buf[len..]).await.unwrap();
                    assert!(n > 0, "connection closed");
                    len += n;
                }
                bytes += 39;
            }
        } else {
            let uris: Vec<Uri> = (0..4096)
                .map(|n| format!("/r?n={n}").parse().unwrap())
                .collect();
            let one = |i: usize| {
                let req = Request::get(uris[i % uris.len()].clone())
                    .body(Body::empty())
                    .unwrap();
                let app = app.clone();
                async move {
                    let response = app.oneshot(req).await.unwrap();
                    response
                        .into_body()
                        .collect()
                        .await
                        .unwrap()
                        .to_bytes()
                        .len()
                }
            };
            if concurrent {
                // 64 requests in flight at a time, interleaved on the one thread.
                for batch in (0..requests).collect::<Vec<_>>().chunks(64) {
                    let answers =
                        futures_util::future::join_all(batch.iter().map(|&i| one(i))).await;
                    bytes += answers.iter().sum::<usize>();
                }
            } else {
                for i in 0..requests {
                    bytes += one(i).await;
                }
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
            let http = args.get(2).is_some_and(|t| t == "http");
            let concurrent = args.get(2).is_some_and(|t| t == "concurrent");
            let bytes = run(variant, requests, http, concurrent);
            assert_eq!(bytes, requests * 39);
        }
        _ => {
            for name in ["bare", "noop", "dedup"] {
                let requests = 100_000;
                let start = Instant::now();
                run(name, requests, false, false);
                let rate = requests as f64 / start.elapsed().as_secs_f64();
                println!(
                    "request_cost {name}: {rate:.0} req/s (single run; use callgrind for stable figures)"
                );
            }
        }
    }
}
