//! Runs N sequential GETs in process through a `Router` (bare, with the telemetry layer recording metrics,
//! or with metrics and spans exported over OTLP by the batch processor) to count instructions.
//!
//! Wall-clock figures are noisy on a shared machine; instruction counts are not. Build with
//! `cargo bench -p telemetry-layer --bench request_cost --no-run`, then run the binary it names under
//! callgrind twice per variant with two request counts, and divide the difference by the difference in
//! requests (this cancels the setup cost):
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null BIN bare 2000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null BIN bare 12000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null BIN metrics 2000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null BIN spans 2000
//! ...
//! ```
//!
//! For `spans`, set `OTEL_BSP_MAX_QUEUE_SIZE=65536` (or more): valgrind runs one thread at a time, the batch
//! processor's thread falls behind, and with the default queue of 2048 spans would be dropped, which the run
//! reports as a failure.
//!
//! `spans` sets everything up as an application does (`Telemetry::builder()` with the global recorder and
//! subscriber) with the OTLP endpoint pointing at a receiver running as a child process, which callgrind
//! does not follow. So the count covers the request thread, the batch processor and the protobuf encoding
//! and HTTP export of every span, but not the collector. At the end the receiver is asked how many spans it
//! decoded, and the run fails unless every request's span arrived.
//!
//! Without arguments (as under `cargo bench`) it runs each variant in a child process and prints its
//! wall-clock cost per request.
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use telemetry_layer::Telemetry;
use tower::ServiceExt;

const BODY: &str = "a small answer of a few dozen bytes....";

fn routes() -> Router {
    Router::new().route("/users/{id}", get(|| async { BODY }))
}

/// The OTLP receiver: decodes every export, counts its spans, answers `GET /count`.
fn receive() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let spans = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&spans);
        let app = Router::new()
            .route(
                "/v1/traces",
                post(move |body: Bytes| {
                    let counted = Arc::clone(&counted);
                    async move {
                        let request = ExportTraceServiceRequest::decode(body).unwrap();
                        let n: usize = request
                            .resource_spans
                            .iter()
                            .flat_map(|r| &r.scope_spans)
                            .map(|s| s.spans.len())
                            .sum();
                        counted.fetch_add(n, Ordering::Relaxed);
                        (
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }
                }),
            )
            .route(
                "/count",
                get(move || async move { spans.load(Ordering::Relaxed).to_string() }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        axum::serve(listener, app).await.unwrap();
    });
}

struct Receiver {
    child: Child,
    port: u16,
}

impl Receiver {
    fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("receive")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap();
        Self { child, port }
    }

    async fn count(&self) -> usize {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri: Uri = format!("http://127.0.0.1:{}/count", self.port)
            .parse()
            .unwrap();
        let body = client
            .get(uri)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        std::str::from_utf8(&body).unwrap().parse().unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[inline(never)]
fn run(variant: &str, requests: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let receiver = (variant == "spans").then(Receiver::start);
    let telemetry = match variant {
        "bare" => None,
        "metrics" => Some(Telemetry::builder().from_env(false).build().unwrap()),
        "spans" => {
            let port = receiver.as_ref().unwrap().port;
            // `OTEL_BSP_*` from the environment size the span queue (see above).
            let telemetry = Telemetry::builder()
                .otlp_endpoint(format!("http://127.0.0.1:{port}"))
                .build()
                .unwrap();
            assert!(telemetry.tracing_enabled());
            Some(telemetry)
        }
        other => panic!("unknown variant {other}"),
    };
    let app = match &telemetry {
        Some(telemetry) => routes().layer(telemetry.layer()),
        None => routes(),
    };
    let uris: Vec<Uri> = (0..64)
        .map(|n| format!("/users/{n}").parse().unwrap())
        .collect();
    let cpu_start = process_cpu();
    let start = Instant::now();
    runtime.block_on(async {
        for i in 0..requests {
            let req = Request::get(uris[i % uris.len()].clone())
                .body(Body::empty())
                .unwrap();
            let response = app.clone().oneshot(req).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), BODY.len());
        }
    });
    let elapsed = start.elapsed();
    if let Some(telemetry) = telemetry {
        // Exports what is still queued, so the CPU time below covers every span.
        telemetry.shutdown().unwrap();
    }
    let cpu = process_cpu().saturating_sub(cpu_start);
    if let Some(receiver) = &receiver {
        let exported = runtime.block_on(receiver.count());
        assert_eq!(
            exported, requests,
            "every span reaches the receiver (spans are dropped when the batch queue overflows; \
             raise OTEL_BSP_MAX_QUEUE_SIZE)"
        );
    }
    println!(
        "request_cost {variant}: {:.0} ns/request on the request thread, {:.0} ns/request of CPU in all \
         threads, over {requests} requests (single run; use callgrind for stable figures)",
        elapsed.as_nanos() as f64 / requests as f64,
        cpu.as_nanos() as f64 / requests as f64,
    );
}

/// User and system CPU time of this process, all threads, from `/proc/self/stat` (10 ms resolution);
/// zero where that file does not exist. The receiver is another process and is not included.
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th, in ticks of
    // 1/100 s (USER_HZ).
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("receive") => receive(),
        Some(variant @ ("bare" | "metrics" | "spans")) => {
            let requests = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10_000);
            run(variant, requests);
        }
        _ => {
            // Each variant in its own process: the recorder and subscriber are global.
            for variant in ["bare", "metrics", "spans"] {
                // A queue that holds the whole run: a single thread sending requests back to back
                // outpaces the export on a busy machine, and dropped spans would flatter the figure.
                let status = Command::new(std::env::current_exe().unwrap())
                    .args([variant, "100000"])
                    .env("OTEL_BSP_MAX_QUEUE_SIZE", "262144")
                    .status()
                    .unwrap();
                assert!(status.success(), "{variant} failed");
            }
        }
    }
}
