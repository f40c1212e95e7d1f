//! Stale rules, tags and purge, the admin router, keys, body limits, tiers and metrics.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use cache_layer::{CacheLayer, admin};
use common::*;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt, service_fn};

// ---- the layer fits axum ----

#[test]
fn layer_and_service_are_clone_send_sync() {
    fn assert_bounds<T: Clone + Send + Sync + 'static>() {}
    assert_bounds::<CacheLayer>();
    assert_bounds::<cache_layer::CacheHandle>();
    assert_bounds::<cache_layer::Cache<axum::routing::Route>>();
    // Router::layer requires Infallible errors to stay Infallible; this compiles only if they do.
    let _app: Router = Router::new()
        .route("/", axum::routing::get(|| async { "x" }))
        .layer(CacheLayer::new());
}

// ---- stale-while-revalidate ----

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/",
            axum::routing::get(move || {
                let c = c.clone();
                async move {
                    let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                    if n > 1 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    (
                        [("cache-control", "max-age=1, stale-while-revalidate=60")],
                        format!("call {n}"),
                    )
                }
            }),
        )
        .layer(CacheLayer::new());
    get(&app, "/").await;
    advance(5.0).await;
    let many = futures_join(&app, 20).await;
    for r in &many {
        assert_eq!(r.text(), "call 1");
        assert!(
            r.cache_status().contains("detail=stale-while-revalidate"),
            "{}",
            r.cache_status()
        );
    }
    // Let the single refresh finish (it sleeps 1 s on the paused clock).
    advance(2.0).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one refresh for twenty stale hits"
    );
    assert_eq!(get(&app, "/").await.text(), "call 2");
}

async fn futures_join(app: &Router, n: usize) -> Vec<Resp> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let app = app.clone();
        set.spawn(async move { get(&app, "/").await });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_window_ends() {
    let (app, calls) = origin(CacheLayer::new(), |n, _| {
        numbered(
            n,
            &[("cache-control", "max-age=1, stale-while-revalidate=10")],
        )
    });
    get(&app, "/").await;
    advance(20.0).await;
    let r = get(&app, "/").await;
    assert_eq!(r.text(), "call 2", "past the window the origin answers");
    assert_eq!(calls.get(), 2);
}

// ---- stale-if-error ----

#[tokio::test(start_paused = true)]
async fn stale_if_error_on_5xx() {
    let (app, calls) = origin(CacheLayer::new(), |n, _| {
        if n > 1 {
            return reply(503, &[], "down");
        }
        numbered(n, &[("cache-control", "max-age=1, stale-if-error=60")])
    });
    get(&app, "/").await;
    advance(5.0).await;
    let r = get(&app, "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "call 1");
    assert!(
        r.cache_status().contains("fwd=stale; fwd-status=503"),
        "{}",
        r.cache_status()
    );
    assert!(r.cache_status().contains("detail=stale-if-error"));
    advance(60.0).await;
    assert_eq!(
        get(&app, "/").await.status,
        503,
        "past the window the error goes through"
    );
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_from_the_request() {
    let (app, _calls) = origin(CacheLayer::new(), |n, _| {
        if n > 1 {
            return reply(500, &[], "boom");
        }
        numbered(n, &[("cache-control", "max-age=1")])
    });
    get(&app, "/").await;
    advance(5.0).await;
    assert_eq!(get(&app, "/").await.status, 500);
    let r = get_with(&app, "/", &[("cache-control", "stale-if-error=30")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "call 1");
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_on_inner_error() {
    let n = Arc::new(AtomicUsize::new(0));
    let svc = service_fn(move |_req: Request<Full<Bytes>>| {
        let n = n.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Ok(Response::builder()
                    .header("cache-control", "max-age=1, stale-if-error=60")
                    .body(Full::new(Bytes::from_static(b"first")))
                    .unwrap())
            } else {
                Err(std::io::Error::other("origin unreachable"))
            }
        }
    });
    let svc = CacheLayer::new().layer(svc);
    let req = || {
        Request::get("/")
            .header("host", "h")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    svc.clone().oneshot(req()).await.unwrap();
    advance(5.0).await;
    let r = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("stale-if-error")
    );
    assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "first");
    advance(120.0).await;
    let e = svc.clone().oneshot(req()).await;
    assert!(
        e.is_err(),
        "past the window the inner error is returned unchanged"
    );
}

#[tokio::test(start_paused = true)]
async fn must_revalidate_disables_stale_if_error() {
    let (app, _calls) = origin(CacheLayer::new(), |n, _| {
        if n > 1 {
            return reply(503, &[], "down");
        }
        numbered(
            n,
            &[(
                "cache-control",
                "max-age=1, stale-if-error=60, must-revalidate",
            )],
        )
    });
    get(&app, "/").await;
    advance(5.0).await;
    assert_eq!(get(&app, "/").await.status, 503);
}

// ---- serve_stale_on_error ----

fn stale_on_error(secs: u64) -> CacheLayer {
    CacheLayer::builder()
        .serve_stale_on_error(Duration::from_secs(secs))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn stale_on_error_without_stale_if_error() {
    for status in [500, 502, 503, 504] {
        let (app, calls) = origin(stale_on_error(60), move |n, _| {
            if n > 1 {
                return reply(status, &[], "down");
            }
            numbered(n, &[("cache-control", "max-age=1")])
        });
        get(&app, "/").await;
        advance(5.0).await;
        let r = get(&app, "/").await;
        assert_eq!(r.status, 200, "{status}");
        assert_eq!(r.text(), "call 1");
        let fwd = format!("fwd=stale; fwd-status={status}");
        assert!(r.cache_status().contains(&fwd), "{}", r.cache_status());
        assert!(r.cache_status().contains("detail=stale-on-error"));
        assert!(r.cache_status().contains("ttl=-4"), "{}", r.cache_status());
        advance(60.0).await;
        assert_eq!(
            get(&app, "/").await.status.as_u16(),
            status,
            "past the window the error goes through"
        );
        assert_eq!(calls.get(), 3);
    }
}

#[tokio::test(start_paused = true)]
async fn stale_on_error_keeps_an_entry_without_validator_past_freshness() {
    // Without the option the entry would be dropped once stale: nothing validates it.
    let (app, _calls) = origin(stale_on_error(600), |n, _| {
        if n > 1 {
            return reply(503, &[], "down");
        }
        numbered(n, &[("cache-control", "max-age=1")])
    });
    get(&app, "/").await;
    advance(300.0).await;
    let r = get(&app, "/").await;
    assert_eq!(r.text(), "call 1", "{}", r.cache_status());
}

#[tokio::test(start_paused = true)]
async fn stale_on_error_other_statuses_and_success_go_through() {
    let (app, _calls) = origin(stale_on_error(60), |n, _| match n {
        1 => numbered(n, &[("cache-control", "max-age=1")]),
        2 => reply(501, &[], "not implemented"),
        3 => reply(404, &[], "gone"),
        _ => numbered(n, &[("cache-control", "max-age=1")]),
    });
    get(&app, "/").await;
    advance(5.0).await;
    assert_eq!(get(&app, "/").await.status, 501);
    advance(5.0).await;
    assert_eq!(get(&app, "/").await.status, 404);
    advance(5.0).await;
    assert_eq!(get(&app, "/").await.text(), "call 4");
}

#[tokio::test(start_paused = true)]
async fn stale_on_error_yields_to_directives_that_forbid_stale() {
    for cc in [
        "max-age=1, must-revalidate",
        "max-age=1, proxy-revalidate",
        "max-age=1, s-maxage=1",
        "max-age=1, no-cache",
    ] {
        let (app, _calls) = origin(stale_on_error(600), move |n, _| {
            if n > 1 {
                return reply(503, &[], "down");
            }
            let mut r = numbered(n, &[("cache-control", cc)]);
            r.headers_mut()
                .insert("etag", http::HeaderValue::from_static("\"v\""));
            r
        });
        get(&app, "/").await;
        advance(5.0).await;
        let r = get(&app, "/").await;
        assert_eq!(r.status, 503, "{cc}: {}", r.cache_status());
    }
    // A request that says no-cache wants the origin's answer, whatever it is.
    let (app, _calls) = origin(stale_on_error(600), |n, _| {
        if n > 1 {
            return reply(503, &[], "down");
        }
        numbered(n, &[("cache-control", "max-age=1")])
    });
    get(&app, "/").await;
    advance(5.0).await;
    assert_eq!(
        get_with(&app, "/", &[("cache-control", "no-cache")])
            .await
            .status,
        503
    );
    assert_eq!(get(&app, "/").await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn stale_on_error_private_mode_ignores_s_maxage() {
    let layer = CacheLayer::builder()
        .mode(cache_layer::CacheMode::Private)
        .serve_stale_on_error(Duration::from_secs(60))
        .build()
        .unwrap();
    let (app, _calls) = origin(layer, |n, _| {
        if n > 1 {
            return reply(503, &[], "down");
        }
        numbered(n, &[("cache-control", "max-age=1, s-maxage=1")])
    });
    get(&app, "/").await;
    advance(5.0).await;
    assert_eq!(get(&app, "/").await.text(), "call 1");
}

/// A body that breaks off after its first chunk, as a reset connection does.
struct BreaksOff(bool);

impl http_body::Body for BreaksOff {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.0 {
            return Poll::Ready(Some(Err(std::io::Error::other("reset"))));
        }
        self.0 = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"half")))))
    }
}

#[tokio::test(start_paused = true)]
async fn stale_on_error_on_inner_error_and_broken_body() {
    let n = Arc::new(AtomicUsize::new(0));
    let svc = service_fn(move |_req: Request<Full<Bytes>>| {
        let n = n.fetch_add(1, Ordering::SeqCst);
        async move {
            match n {
                0 => Ok(Response::builder()
                    .header("cache-control", "max-age=1")
                    .body(Body::from("first"))
                    .unwrap()),
                1 => Err(std::io::Error::other("origin unreachable")),
                _ => Ok(Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(Body::new(BreaksOff(false)))
                    .unwrap()),
            }
        }
    });
    let svc = stale_on_error(60).layer(svc);
    let req = || {
        Request::get("/")
            .header("host", "h")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    svc.clone().oneshot(req()).await.unwrap();
    advance(5.0).await;
    for expect in [
        "stale-on-error",
        "fwd-status=200; ttl=-4; detail=stale-on-error",
    ] {
        let r = svc.clone().oneshot(req()).await.unwrap();
        assert_eq!(r.status(), 200);
        let status = r.headers()["cache-status"].to_str().unwrap().to_owned();
        assert!(status.contains(expect), "{status}");
        assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "first");
    }
}

// ---- early refresh ----

#[tokio::test(start_paused = true)]
async fn early_refresh_starts_one_background_fetch() {
    let l = CacheLayer::builder()
        .early_refresh(Some(1e9))
        .build()
        .unwrap();
    let handle = l.handle();
    let (app, calls) = origin(l, |n, _| numbered(n, &[("cache-control", "max-age=60")]));
    get(&app, "/").await;
    let r = get(&app, "/").await;
    assert_eq!(r.text(), "call 1", "the hit is served at once");
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.get(), 2);
    assert_eq!(handle.refreshes_in_flight(), 0);
    assert_eq!(get(&app, "/").await.text(), "call 2");
}

#[tokio::test(start_paused = true)]
async fn early_refresh_is_off_by_default() {
    let (app, calls) = origin(CacheLayer::new(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    for _ in 0..5 {
        get(&app, "/").await;
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.get(), 1);
}

// ---- tags and purge ----

#[tokio::test(start_paused = true)]
async fn tags_purge_and_are_stripped() {
    let l = CacheLayer::new();
    let handle = l.handle();
    let (app, calls) = origin(l, |n, req| {
        let tag = if req.uri().path().starts_with("/rooms/1") {
            "room:1 all"
        } else {
            "room:2, all"
        };
        numbered(n, &[("cache-control", "max-age=60"), ("cache-tag", tag)])
    });
    let a = get(&app, "/rooms/1").await;
    assert_eq!(a.header("cache-tag"), None, "stripped by default");
    get(&app, "/rooms/1/messages").await;
    get(&app, "/rooms/2").await;
    assert_eq!(handle.purge_tag("room:1"), 2);
    assert_eq!(calls.get(), 3);
    get(&app, "/rooms/1").await;
    get(&app, "/rooms/2").await;
    assert_eq!(calls.get(), 4, "only room:1 entries went");
    assert_eq!(handle.purge_tag("all"), 2);
    assert_eq!(handle.purge_tag("all"), 0);
}

#[tokio::test(start_paused = true)]
async fn tag_header_kept_when_configured_and_tags_fn() {
    let l = CacheLayer::builder()
        .tag_header(Some("Surrogate-Key"))
        .strip_tag_header(false)
        .tags_fn(|req, _res| vec![format!("path:{}", req.uri.path())])
        .build()
        .unwrap();
    let handle = l.handle();
    let (app, calls) = origin(l, |n, _| {
        numbered(
            n,
            &[("cache-control", "max-age=60"), ("surrogate-key", "k1")],
        )
    });
    let a = get(&app, "/p").await;
    assert_eq!(a.header("surrogate-key"), Some("k1"));
    assert_eq!(get(&app, "/p").await.header("surrogate-key"), Some("k1"));
    assert_eq!(handle.purge_tag("path:/p"), 1);
    get(&app, "/p").await;
    assert_eq!(handle.purge_tag("k1"), 1);
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn purge_by_url_and_prefix() {
    let l = CacheLayer::new();
    let handle = l.handle();
    let (app, calls) = origin(l, |n, _| numbered(n, &[("cache-control", "max-age=60")]));
    for p in ["/a", "/api/1", "/api/2", "/b"] {
        get(&app, p).await;
    }
    assert_eq!(handle.purge_url("http://example.com/a"), 1);
    assert_eq!(handle.purge_url("not a url"), 0);
    assert_eq!(handle.purge_prefix("http://example.com/api/"), 2);
    for p in ["/a", "/api/1", "/api/2", "/b"] {
        get(&app, p).await;
    }
    assert_eq!(calls.get(), 7, "only /b was still stored");
}

#[tokio::test(start_paused = true)]
async fn soft_purge_keeps_stale_rules() {
    let l = CacheLayer::new();
    let handle = l.handle();
    let (app, calls) = origin(l, |n, _| {
        numbered(
            n,
            &[
                ("cache-control", "max-age=600, stale-while-revalidate=60"),
                ("cache-tag", "t"),
            ],
        )
    });
    get(&app, "/").await;
    assert_eq!(handle.soft_purge_tag("t"), 1);
    let r = get(&app, "/").await;
    assert_eq!(r.text(), "call 1", "served stale while revalidating");
    assert!(
        r.cache_status().contains("stale-while-revalidate"),
        "{}",
        r.cache_status()
    );
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(calls.get(), 2);
    assert_eq!(get(&app, "/").await.text(), "call 2");
}

#[tokio::test(start_paused = true)]
async fn soft_purge_without_stale_window_revalidates() {
    let l = CacheLayer::new();
    let handle = l.handle();
    let (app, calls) = origin(l, |n, req| {
        if req.headers().contains_key("if-none-match") {
            return reply(304, &[("etag", "\"e\"")], "");
        }
        numbered(n, &[("cache-control", "max-age=600"), ("etag", "\"e\"")])
    });
    get(&app, "/").await;
    assert_eq!(handle.soft_purge_url("http://example.com/"), 1);
    let r = get(&app, "/").await;
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.text(), "call 1");
    assert_eq!(calls.get(), 2);
}

// ---- admin router ----

#[tokio::test]
async fn admin_requires_the_bearer_token() {
    let l = CacheLayer::new();
    let handle = l.handle();
    let (app, calls) = origin(l, |n, _| {
        numbered(n, &[("cache-control", "max-age=60"), ("cache-tag", "t")])
    });
    let admin = admin::router(handle.clone(), "s3cret");
    get(&app, "/x").await;
    let purge = |auth: Option<&str>, body: &str| {
        let mut b = Request::post("/purge").header("content-type", "application/json");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Body::from(body.to_owned())).unwrap()
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cre"),
        Some("Basic s3cret"),
    ] {
        let r = send(&admin, purge(auth, r#"{"tags":["t"]}"#)).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    assert_eq!(
        handle.entry_count(),
        1,
        "unauthenticated calls change nothing"
    );
    get(&app, "/x").await;
    assert_eq!(calls.get(), 1);

    let bad = send(&admin, purge(Some("Bearer s3cret"), "{nope")).await;
    assert_eq!(bad.status, 400);
    let ok = send(&admin, purge(Some("Bearer s3cret"), r#"{"tags":["t"]}"#)).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.text(), r#"{"purged":1}"#);
    get(&app, "/x").await;
    assert_eq!(calls.get(), 2);
    let soft = send(
        &admin,
        purge(
            Some("Bearer s3cret"),
            r#"{"urls":["http://example.com/x"],"soft":true}"#,
        ),
    )
    .await;
    assert_eq!(soft.text(), r#"{"purged":1}"#);
}

// ---- keys ----

#[tokio::test(start_paused = true)]
async fn ignored_query_parameters_share_an_entry() {
    let l = CacheLayer::builder()
        .ignore_query_params(["utm_source", "fbclid"])
        .build()
        .unwrap();
    let (app, calls) = origin(l, |n, _| numbered(n, &[("cache-control", "max-age=60")]));
    get(&app, "/p?id=1&utm_source=a").await;
    get(&app, "/p?utm_source=b&id=1&fbclid=z").await;
    assert_eq!(calls.get(), 1);
    get(&app, "/p?id=2&utm_source=a").await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn host_is_part_of_the_default_key() {
    let (app, calls) = origin(CacheLayer::new(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    send(
        &app,
        Request::get("/")
            .header("host", "a.example")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    send(
        &app,
        Request::get("/")
            .header("host", "A.EXAMPLE")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    send(
        &app,
        Request::get("/")
            .header("host", "b.example")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn key_fn_replaces_the_key_and_can_bypass() {
    let l = CacheLayer::builder()
        .key_fn(|parts| {
            if parts.uri.path().starts_with("/nocache") {
                None
            } else {
                Some(parts.uri.path().to_owned())
            }
        })
        .build()
        .unwrap();
    let (app, calls) = origin(l, |n, _| numbered(n, &[("cache-control", "max-age=60")]));
    get(&app, "/p?x=1").await;
    get(&app, "/p?x=2").await;
    assert_eq!(calls.get(), 1, "the query is not in this key");
    let b = get(&app, "/nocache").await;
    assert!(
        b.cache_status().contains("fwd=bypass"),
        "{}",
        b.cache_status()
    );
    get(&app, "/nocache").await;
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn single_ranges_are_cut_from_stored_responses() {
    let (app, calls) = origin(CacheLayer::new(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    get(&app, "/").await;
    let r = get_with(&app, "/", &[("range", "bytes=0-1")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "ca");
    assert_eq!(r.header("content-range"), Some("bytes 0-1/6"));
    assert_eq!(r.header("content-length"), Some("2"));
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    let r = get_with(&app, "/", &[("range", "bytes=-2")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), " 1");
    assert_eq!(calls.get(), 1);
    // Several ranges, unsatisfiable ones and HEAD go to the origin.
    get_with(&app, "/", &[("range", "bytes=0-1,3-4")]).await;
    get_with(&app, "/", &[("range", "bytes=6-")]).await;
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn ranges_without_a_stored_response_go_to_the_origin_unstored() {
    let (app, calls) = origin(CacheLayer::new(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    let r = get_with(&app, "/", &[("range", "bytes=0-1")]).await;
    assert!(
        r.cache_status().contains("fwd=bypass"),
        "{}",
        r.cache_status()
    );
    get(&app, "/").await;
    assert_eq!(calls.get(), 2, "the ranged request stored nothing");
}

// ---- body limits ----

struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test(start_paused = true)]
async fn oversized_bodies_stream_through_uncached() {
    let l = CacheLayer::builder().max_body_bytes(1500).build().unwrap();
    let (app, calls) = origin(l, |_, req| {
        let chunks: VecDeque<Bytes> = (0..4u8)
            .map(|i| Bytes::from(vec![b'a' + i; 1000]))
            .collect();
        let mut r = Response::builder().header("cache-control", "max-age=60");
        if req.uri().path() == "/declared" {
            r = r.header("content-length", "4000");
        }
        r.body(Body::new(Chunks(chunks))).unwrap()
    });
    for path in ["/streamed", "/declared"] {
        let a = get(&app, path).await;
        assert_eq!(a.body.len(), 4000, "{path}");
        assert_eq!(&a.body[..1000], &[b'a'; 1000][..]);
        assert_eq!(&a.body[3000..], &[b'd'; 1000][..]);
        assert!(
            a.cache_status().contains("detail=too-large"),
            "{}",
            a.cache_status()
        );
        let b = get(&app, path).await;
        assert_eq!(b.body.len(), 4000);
    }
    assert_eq!(calls.get(), 4);
}

#[tokio::test(start_paused = true)]
async fn multi_chunk_bodies_under_the_limit_are_stored_whole() {
    let (app, calls) = origin(CacheLayer::new(), |_, _| {
        let chunks: VecDeque<Bytes> = (0..3u8).map(|i| Bytes::from(vec![b'x' + i; 10])).collect();
        Response::builder()
            .header("cache-control", "max-age=60")
            .body(Body::new(Chunks(chunks)))
            .unwrap()
    });
    let a = get(&app, "/").await;
    let b = get(&app, "/").await;
    assert_eq!(a.body, b.body);
    assert_eq!(b.body.len(), 30);
    assert_eq!(b.header("content-length"), Some("30"));
    assert_eq!(calls.get(), 1);
}

// ---- tier bounds ----

#[tokio::test(start_paused = true)]
async fn ttl_cap_bounds_residence() {
    let l = CacheLayer::builder()
        .ttl_cap(Duration::from_millis(100))
        .build()
        .unwrap();
    let (app, calls) = origin(l, |n, _| numbered(n, &[("cache-control", "max-age=60")]));
    get(&app, "/").await;
    advance(0.05).await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 1);
    advance(0.1).await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn memory_is_bounded_by_bytes_and_the_tag_index_follows_evictions() {
    let l = CacheLayer::builder()
        .max_capacity_bytes(64 * 1024)
        .build()
        .unwrap();
    let handle = l.handle();
    let (app, _calls) = origin(l, |_, _| {
        Response::builder()
            .header("cache-control", "max-age=600")
            .header("cache-tag", "bulk")
            .body(Body::from(vec![b'z'; 4096]))
            .unwrap()
    });
    for i in 0..200 {
        get(&app, &format!("/item/{i}")).await;
    }
    handle.run_pending_tasks();
    assert!(
        handle.weighted_size() <= 64 * 1024,
        "{} bytes",
        handle.weighted_size()
    );
    assert!(
        handle.entry_count() <= 16,
        "{} entries",
        handle.entry_count()
    );
    assert_eq!(
        handle.tag_index_len(),
        handle.entry_count(),
        "evicted keys leave the tag index"
    );
    assert!(handle.purge_tag("bulk") as u64 <= 16);
}

#[test]
fn builder_rejects_bad_values() {
    let e = CacheLayer::builder()
        .max_capacity_bytes(0)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "max_capacity_bytes");
    assert!(e.to_string().contains("max_capacity_bytes"));
    assert_eq!(
        CacheLayer::builder()
            .tag_header(Some("bad header"))
            .build()
            .unwrap_err()
            .field(),
        "tag_header"
    );
    assert_eq!(
        CacheLayer::builder()
            .early_refresh(Some(-1.0))
            .build()
            .unwrap_err()
            .field(),
        "early_refresh"
    );
    assert_eq!(
        CacheLayer::builder()
            .heuristic(2.0, Duration::from_secs(1))
            .build()
            .unwrap_err()
            .field(),
        "heuristic"
    );
}

// ---- metrics ----

#[test]
fn metrics_count_outcomes_and_sizes() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (app, _calls) = origin(CacheLayer::new(), |n, req| {
                if req.uri().path() == "/nostore" {
                    return numbered(n, &[("cache-control", "no-store")]);
                }
                numbered(n, &[("cache-control", "max-age=60")])
            });
            get(&app, "/a").await;
            get(&app, "/a").await;
            get(&app, "/a").await;
            get(&app, "/nostore").await;
            send(
                &app,
                Request::post("/a")
                    .header("host", "example.com")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |outcome: &str| {
        snapshot
            .iter()
            .find(|(k, _, _, _)| {
                k.key().name() == cache_layer::metrics::CACHE_REQUESTS_TOTAL
                    && k.key()
                        .labels()
                        .any(|l| l.key() == "outcome" && l.value() == outcome)
                    && k.key()
                        .labels()
                        .any(|l| l.key() == "tier" && l.value() == "l1")
            })
            .map(|(_, _, _, v)| match v {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .unwrap_or(0)
    };
    assert_eq!(counter("miss"), 1);
    assert_eq!(counter("hit"), 2);
    assert_eq!(counter("uncacheable"), 1);
    assert_eq!(counter("bypass"), 1);
    let gauge = |name: &str| {
        snapshot
            .iter()
            .find(|(k, _, _, _)| k.key().name() == name)
            .map(|(_, _, _, v)| match v {
                DebugValue::Gauge(g) => g.into_inner(),
                _ => -1.0,
            })
    };
    assert_eq!(
        gauge(cache_layer::metrics::CACHE_ENTRIES),
        Some(0.0),
        "the POST invalidated /a"
    );
    assert!(gauge(cache_layer::metrics::CACHE_BYTES).is_some());
    let evictions = snapshot
        .iter()
        .any(|(k, _, _, _)| k.key().name() == cache_layer::metrics::CACHE_EVICTIONS_TOTAL);
    assert!(evictions, "the invalidation is counted");
}

#[tokio::test(start_paused = true)]
async fn other_preconditions_go_to_the_origin() {
    let (app, calls) = origin(CacheLayer::new(), |n, req| {
        if req.headers().contains_key("if-match") {
            return reply(412, &[], "");
        }
        numbered(n, &[("cache-control", "max-age=60"), ("etag", "\"a\"")])
    });
    get(&app, "/").await;
    let r = get_with(&app, "/", &[("if-match", "\"b\"")]).await;
    assert_eq!(r.status, 412);
    assert!(
        r.cache_status().contains("detail=precondition"),
        "{}",
        r.cache_status()
    );
    get_with(
        &app,
        "/",
        &[("if-unmodified-since", "Sun, 06 Nov 1994 08:49:37 GMT")],
    )
    .await;
    assert_eq!(calls.get(), 3);
    assert_eq!(
        get(&app, "/").await.text(),
        "call 1",
        "the stored response is untouched"
    );
}

#[tokio::test(start_paused = true)]
async fn long_keys_count_against_the_byte_bound() {
    let layer = CacheLayer::builder()
        .max_capacity_bytes(64 * 1024)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (app, _calls) = origin(layer, |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    let filler = "q".repeat(8 * 1024);
    for i in 0..40 {
        get(&app, &format!("/{i}?{filler}")).await;
        handle.run_pending_tasks();
    }
    handle.run_pending_tasks();
    // Each key alone is 8 KiB, so at most 8 of them fit in 64 KiB.
    assert!(
        handle.entry_count() <= 8,
        "{} entries with 8 KiB keys in 64 KiB",
        handle.entry_count()
    );
    assert!(handle.weighted_size() <= 64 * 1024);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_the_origin_never_answers_frees_its_slot() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let layer = CacheLayer::builder()
        .refresh_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = Router::new()
        .route(
            "/",
            axum::routing::get(move || {
                let c = c.clone();
                async move {
                    let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == 2 {
                        std::future::pending::<()>().await;
                    }
                    (
                        [("cache-control", "max-age=1, stale-while-revalidate=600")],
                        format!("call {n}"),
                    )
                }
            }),
        )
        .layer(layer);
    get(&app, "/").await;
    advance(2.0).await;
    assert_eq!(get(&app, "/").await.text(), "call 1");
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        (calls.load(Ordering::SeqCst), handle.refreshes_in_flight()),
        (2, 1)
    );
    advance(11.0).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        handle.refreshes_in_flight(),
        0,
        "the hung refresh gave its slot back"
    );
    assert_eq!(get(&app, "/").await.text(), "call 1");
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the key is refreshed again"
    );
    assert_eq!(get(&app, "/").await.text(), "call 3");
}

#[test]
fn config_errors_name_the_field() {
    let long = "c".repeat(65);
    let e = CacheLayer::builder().cache_name(long).build().unwrap_err();
    assert!(e.to_string().contains("cache_name"), "{e}");
    let e = CacheLayer::builder()
        .refresh_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("refresh_timeout"), "{e}");
}

// ---- absurd responses never panic the hit path ----

#[tokio::test(start_paused = true)]
async fn a_stored_response_with_as_many_fields_as_a_header_map_holds_is_served_from_cache() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/",
            axum::routing::get(move || {
                c.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut response = Response::new(Body::from("many fields"));
                    let headers = response.headers_mut();
                    headers.insert(
                        "cache-control",
                        http::HeaderValue::from_static("max-age=60"),
                    );
                    // More values than a header map can reserve room for at once.
                    for _ in 0..30_000 {
                        headers.append("x-many", http::HeaderValue::from_static("v"));
                    }
                    response
                }
            }),
        )
        .layer(CacheLayer::new());
    get(&app, "/").await;
    let hit = get(&app, "/").await;
    assert_eq!(hit.text(), "many fields");
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// ---- collapsed misses ----

fn collapsing() -> CacheLayer {
    CacheLayer::builder()
        .collapse_misses(Some(Duration::from_secs(5)))
        .build()
        .unwrap()
}

/// An origin that takes 300 ms and answers with `headers`, counting calls.
fn slow_origin(
    layer: CacheLayer,
    headers: &'static [(&'static str, &'static str)],
) -> (Router, Counter) {
    let counter = Counter::default();
    let c = counter.clone();
    let app = Router::new()
        .fallback(move || {
            let c = c.clone();
            async move {
                let n = c.hit();
                tokio::time::sleep(Duration::from_millis(300)).await;
                numbered(n, headers)
            }
        })
        .layer(layer);
    (app, counter)
}

async fn burst(
    app: &Router,
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<Resp> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let app = app.clone();
        tasks.push(tokio::spawn(
            async move { get_with(&app, "/", headers).await },
        ));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn collapsed_misses_reach_the_origin_once() {
    let layer = collapsing();
    let handle = layer.handle();
    let (app, calls) = slow_origin(layer, &[("cache-control", "max-age=60")]);
    let started = tokio::time::Instant::now();
    let all = burst(&app, 50, &[]).await;
    assert_eq!(calls.get(), 1);
    assert!(started.elapsed() < Duration::from_millis(400));
    assert!(all.iter().all(|r| r.text() == "call 1"));
    let hits = all
        .iter()
        .filter(|r| r.cache_status().contains("; hit"))
        .count();
    assert_eq!(hits, 49, "waiters are answered from the store");
    assert_eq!(handle.collapsed_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn uncacheable_leader_releases_waiters_and_later_misses_do_not_wait() {
    for cc in ["no-store", "private"] {
        let headers: &'static [(&'static str, &'static str)] = if cc == "private" {
            &[("cache-control", "private")]
        } else {
            &[("cache-control", "no-store")]
        };
        let (app, calls) = slow_origin(collapsing(), headers);
        let started = tokio::time::Instant::now();
        let all = burst(&app, 20, &[]).await;
        assert_eq!(calls.get(), 20, "{cc}: every request gets its own answer");
        // One round for the leader, one for the released waiters: never one per caller.
        assert!(started.elapsed() < Duration::from_millis(700), "{cc}");
        assert!(all.iter().all(|r| r.status == 200));
        // Hit-for-miss: the next burst does not wait at all.
        let started = tokio::time::Instant::now();
        burst(&app, 20, &[]).await;
        assert_eq!(calls.get(), 40);
        assert!(started.elapsed() < Duration::from_millis(400), "{cc}");
    }
}

#[tokio::test(start_paused = true)]
async fn collapsed_waiters_respect_vary() {
    let (app, calls) = slow_origin(
        collapsing(),
        &[("cache-control", "max-age=60"), ("vary", "x-variant")],
    );
    let a = tokio::spawn({
        let app = app.clone();
        async move { burst(&app, 5, &[("x-variant", "a")]).await }
    });
    tokio::task::yield_now().await;
    let b = burst(&app, 5, &[("x-variant", "b")]).await;
    let a = a.await.unwrap();
    // The leader's variant answers the requests that select it; the others never receive it
    // and go to the origin on their own once the leader is done.
    assert!(a.iter().all(|r| r.text() == "call 1"));
    assert!(b.iter().all(|r| r.text() != "call 1"));
    assert_eq!(calls.get(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_past_its_wait_gets_504() {
    let layer = CacheLayer::builder()
        .collapse_misses(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    let (app, calls) = slow_origin(layer, &[("cache-control", "max-age=60")]);
    let all = burst(&app, 3, &[]).await;
    assert_eq!(calls.get(), 1);
    let timeouts: Vec<&Resp> = all.iter().filter(|r| r.status == 504).collect();
    assert_eq!(timeouts.len(), 2);
    assert!(
        timeouts[0]
            .cache_status()
            .contains("detail=collapse-timeout")
    );
    assert_eq!(timeouts[0].header("cache-control"), Some("no-store"));
    assert!(
        CacheLayer::builder()
            .collapse_misses(Some(Duration::ZERO))
            .build()
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn a_broken_body_is_a_bad_gateway_when_asked() {
    for gateway in [false, true] {
        let layer = CacheLayer::builder()
            .incomplete_as_bad_gateway(gateway)
            .build()
            .unwrap();
        let (app, calls) = origin(layer, |_, _| {
            Response::builder()
                .header("cache-control", "max-age=60")
                .body(Body::new(BreaksOff(false)))
                .unwrap()
        });
        let resp = app
            .clone()
            .oneshot(
                Request::get("/")
                    .header("host", "h")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let cache_status = resp.headers()["cache-status"].to_str().unwrap().to_owned();
        assert!(cache_status.contains("detail=body-error"), "{cache_status}");
        let body = resp.into_body().collect().await;
        if gateway {
            assert_eq!(status, 502);
            assert!(body.unwrap().to_bytes().is_empty());
        } else {
            assert_eq!(status, 200);
            assert!(body.is_err(), "the break reaches the client");
        }
        let again = app
            .clone()
            .oneshot(
                Request::get("/")
                    .header("host", "h")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        drop(again);
        assert_eq!(calls.get(), 2, "nothing stored");
    }
}

#[tokio::test(start_paused = true)]
async fn a_responses_own_stale_if_error_replaces_the_configured_window() {
    let (app, _calls) = origin(stale_on_error(3600), |n, _| {
        if n > 1 {
            return reply(503, &[], "down");
        }
        numbered(n, &[("cache-control", "max-age=1, stale-if-error=10")])
    });
    get(&app, "/").await;
    advance(5.0).await;
    let r = get(&app, "/").await;
    assert!(
        r.cache_status().contains("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
    advance(30.0).await;
    assert_eq!(
        get(&app, "/").await.status,
        503,
        "the origin said ten seconds"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_never_waits_for_a_collapsed_miss() {
    let (app, calls) = slow_origin(collapsing(), &[("cache-control", "max-age=60")]);
    let leader = tokio::spawn({
        let app = app.clone();
        async move { get(&app, "/").await }
    });
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    let reload = get_with(&app, "/", &[("cache-control", "no-cache")]).await;
    assert_eq!(reload.text(), "call 2", "straight to the origin");
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(leader.await.unwrap().text(), "call 1");
    assert_eq!(calls.get(), 2);
}
