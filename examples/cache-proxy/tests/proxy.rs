//! cache-proxy against a real local origin over real TCP on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method};
use axum::routing::{get, post};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

async fn spawn_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/cached",
            get(move || {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                async move { ([("cache-control", "max-age=60")], format!("cached {n}")) }
            }),
        )
        .route(
            "/plain",
            get(|| async {
                let body: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
                Response::builder()
                    .status(203)
                    .header("cache-control", "no-store")
                    .header("content-type", "application/x-odd; charset=\"x\"")
                    .header("set-cookie", "a=1; Path=/")
                    .header("set-cookie", "b=2")
                    .header("x-custom", "  spaced  value ")
                    .header("etag", "\"abc\"")
                    .body(axum::body::Body::from(body))
                    .unwrap()
            }),
        )
        .route(
            "/echo",
            post(
                |method: Method, headers: HeaderMap, uri: http::Uri, body: Bytes| async move {
                    let mut seen: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
                    seen.sort_unstable();
                    let host = headers
                        .get("host")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let text = format!(
                        "{method} {} {}",
                        uri.query().unwrap_or(""),
                        String::from_utf8_lossy(&body)
                    );
                    ([("x-seen", seen.join(",")), ("x-host", host)], text)
                },
            ),
        )
        .route(
            "/teapot",
            get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, calls)
}

async fn spawn_proxy(upstream: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = cache_proxy::Config::from_args([
        "--upstream".to_owned(),
        format!("http://{upstream}"),
        "--listen".to_owned(),
        addr.to_string(),
    ])
    .unwrap();
    tokio::spawn(async move { cache_proxy::serve(listener, &config).await });
    addr
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn fetch(addr: SocketAddr, req: Request<Full<Bytes>>) -> Got {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    parts.uri = format!("http://{addr}{pq}").parse().unwrap();
    let resp = client
        .request(Request::from_parts(parts, body))
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn get_req(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn uncached_responses_pass_through_byte_for_byte() {
    let (origin, _) = spawn_origin().await;
    let proxy = spawn_proxy(origin).await;
    for path in ["/plain", "/teapot", "/missing"] {
        let direct = fetch(origin, get_req(path)).await;
        let proxied = fetch(proxy, get_req(path)).await;
        assert_eq!(direct.status, proxied.status, "{path}");
        assert_eq!(direct.body, proxied.body, "{path}");
        let strip = |h: &HeaderMap| {
            let mut v: Vec<(String, Vec<u8>)> = h
                .iter()
                .filter(|(k, _)| *k != "date" && *k != "cache-status")
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(strip(&direct.headers), strip(&proxied.headers), "{path}");
        assert!(proxied.headers.contains_key("cache-status"));
    }
}

#[tokio::test]
async fn cacheable_responses_are_served_from_cache() {
    let (origin, calls) = spawn_origin().await;
    let proxy = spawn_proxy(origin).await;
    let a = fetch(proxy, get_req("/cached")).await;
    let b = fetch(proxy, get_req("/cached")).await;
    assert_eq!(a.body, "cached 1");
    assert_eq!(b.body, "cached 1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let status = b.headers["cache-status"].to_str().unwrap();
    assert!(status.starts_with("tower-cache; hit"), "{status}");
    assert!(b.headers.contains_key("age"));
}

#[tokio::test]
async fn method_query_body_and_headers_are_forwarded_without_hop_by_hop() {
    let (origin, _) = spawn_origin().await;
    let proxy = spawn_proxy(origin).await;
    let req = Request::post("/echo?x=1&y=2")
        .header("connection", "x-secret")
        .header("x-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9v")
        .header("x-kept", "yes")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let r = fetch(proxy, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "POST x=1&y=2 payload");
    let seen = r.headers["x-seen"].to_str().unwrap();
    assert!(seen.contains("x-kept"), "{seen}");
    assert!(seen.split(',').any(|h| h == "via"), "Via added: {seen}");
    for gone in ["x-secret", "keep-alive", "proxy-authorization"] {
        assert!(
            !seen.split(',').any(|h| h == gone),
            "{gone} forwarded: {seen}"
        );
    }
    assert_eq!(
        r.headers["x-host"].to_str().unwrap(),
        origin.to_string(),
        "Host is rewritten to the upstream"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_problem() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = spawn_proxy(closed).await;
    let r = fetch(proxy, get_req("/anything")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let body = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(body.contains("\"status\":502"), "{body}");
}

#[test]
fn flags_and_their_defaults() {
    let c = cache_proxy::Config::from_args([
        "--upstream",
        "http://127.0.0.1:9",
        "--listen=127.0.0.1:0",
        "--private",
        "--max-bytes",
        "1024",
        "--origin-timeout",
        "0.5",
        "--stale-on-error",
        "600",
        "--surrogate-device",
        "edge",
    ])
    .unwrap();
    assert!(c.private);
    assert_eq!(c.max_bytes, 1024);
    assert_eq!(c.origin_timeout(), std::time::Duration::from_millis(500));
    assert_eq!(c.stale_on_error, 600);
    assert_eq!(c.surrogate_device.as_deref(), Some("edge"));
    assert_eq!(c.upstream.authority().unwrap().as_str(), "127.0.0.1:9");
    c.cache_layer().unwrap();
    let d = cache_proxy::Config::from_args(["--upstream", "http://x", "--listen", "127.0.0.1:1"])
        .unwrap();
    assert!(!d.private && !d.no_collapse);
    assert_eq!(d.max_bytes, 64 * 1024 * 1024);
    assert_eq!(d.origin_timeout(), std::time::Duration::from_secs(30));
    assert_eq!(d.stale_on_error, 0);
    assert_eq!(d.hit_for_miss, 30);
    let bad: &[&[&str]] = &[
        &["--listen", "127.0.0.1:0"],
        &["--upstream", "ftp://x", "--listen", "127.0.0.1:0"],
        &["--upstream", "http://x", "--listen", "nope"],
        &[
            "--upstream",
            "http://x",
            "--listen",
            "127.0.0.1:1",
            "--bogus",
        ],
        &[
            "--upstream",
            "http://x",
            "--listen",
            "127.0.0.1:1",
            "--max-bytes",
            "0",
        ],
        &[
            "--upstream",
            "http://x",
            "--listen",
            "127.0.0.1:1",
            "--origin-timeout",
            "0",
        ],
        &[
            "--upstream",
            "http://x",
            "--listen",
            "127.0.0.1:1",
            "--origin-timeout",
            "nan",
        ],
        &[
            "--upstream",
            "http://x",
            "--listen",
            "127.0.0.1:1",
            "--stale-on-error",
            "-1",
        ],
        &[
            "--upstream",
            "http://x",
            "--listen",
            "127.0.0.1:1",
            "--surrogate-device",
            "a b",
        ],
    ];
    for args in bad {
        let parsed = cache_proxy::Config::from_args(args.iter().copied());
        let valid = parsed.is_ok_and(|c| c.cache_layer().is_ok());
        assert!(!valid, "{args:?}");
    }
    let help = cache_proxy::Config::from_args(["--help"]).unwrap_err();
    for flag in [
        "--upstream",
        "--listen",
        "--private",
        "--max-bytes",
        "--origin-timeout",
        "--stale-on-error",
        "--collapse-wait",
        "--no-collapse",
        "--hit-for-miss",
        "--surrogate-device",
    ] {
        assert!(help.contains(flag), "{flag} in --help");
    }
    assert_eq!(help.matches("[default:").count(), 6, "{help}");
}
