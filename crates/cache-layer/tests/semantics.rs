//! RFC 9111 rules, each through a real axum Router with tokio's paused clock.
#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use cache_layer::{CacheLayer, CacheMode};
use common::*;
use http::Request;

fn layer() -> CacheLayer {
    CacheLayer::new()
}

// ---- storability ----

#[tokio::test(start_paused = true)]
async fn max_age_response_is_stored_and_hit() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    let a = get(&app, "/a").await;
    assert_eq!(a.text(), "call 1");
    assert_eq!(
        a.cache_status(),
        "tower-cache; fwd=uri-miss; fwd-status=200; stored; ttl=60"
    );
    let b = get(&app, "/a").await;
    assert_eq!(b.text(), "call 1");
    assert!(
        b.cache_status().starts_with("tower-cache; hit; ttl="),
        "{}",
        b.cache_status()
    );
    assert_eq!(b.header("age"), Some("0"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn repeated_hits_update_age_and_ttl() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    get(&app, "/").await;
    for _ in 0..3 {
        let r = get(&app, "/").await;
        assert_eq!(r.header("age"), Some("0"));
        assert_eq!(r.cache_status(), "tower-cache; hit; ttl=60");
    }
    advance(3.0).await;
    let r = get(&app, "/").await;
    assert_eq!(r.header("age"), Some("3"));
    assert_eq!(r.cache_status(), "tower-cache; hit; ttl=57");
    let h = get_with(&app, "/", &[("if-none-match", "*")]).await;
    assert_eq!(
        h.status, 304,
        "a conditional hit does not reuse the plain hit's fields"
    );
    assert!(h.body.is_empty());
    assert!(!h.cache_status().is_empty());
    assert_eq!(get(&app, "/").await.header("content-length"), Some("6"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_store_is_not_stored() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "no-store, max-age=60")])
    });
    let a = get(&app, "/").await;
    assert!(
        a.cache_status().contains("detail=no-store"),
        "{}",
        a.cache_status()
    );
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn private_is_not_stored_by_a_shared_cache_but_is_by_a_private_one() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "private, max-age=60")])
    });
    get(&app, "/").await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);

    let private = CacheLayer::builder()
        .mode(CacheMode::Private)
        .build()
        .unwrap();
    let (app, calls) = origin(private, |n, _| {
        numbered(n, &[("cache-control", "private, max-age=60")])
    });
    get(&app, "/").await;
    assert_eq!(get(&app, "/").await.text(), "call 1");
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn set_cookie_is_never_shared() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(
            n,
            &[
                ("cache-control", "public, max-age=60"),
                ("set-cookie", "session=abc"),
            ],
        )
    });
    let a = get(&app, "/").await;
    assert!(a.cache_status().contains("detail=set-cookie"));
    let b = get(&app, "/").await;
    assert_eq!(b.text(), "call 2");
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn head_responses_update_the_stored_get() {
    let (app, calls) = origin(layer(), |n, req| {
        if req.method() == http::Method::HEAD {
            return reply(
                200,
                &[
                    ("cache-control", "max-age=100"),
                    ("etag", "\"v1\""),
                    ("x-v", "2"),
                ],
                "",
            );
        }
        numbered(
            n,
            &[
                ("cache-control", "max-age=1"),
                ("etag", "\"v1\""),
                ("x-v", "1"),
                ("x-kept", "1"),
            ],
        )
    });
    get(&app, "/").await;
    advance(2.0).await;
    let h = send(
        &app,
        Request::head("/")
            .header("host", "example.com")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("x-v"), Some("2"));
    assert_eq!(h.header("x-kept"), Some("1"), "unchanged fields are kept");
    assert!(h.body.is_empty());
    assert!(
        h.cache_status().contains("fwd-status=200; stored"),
        "{}",
        h.cache_status()
    );
    let g = get(&app, "/").await;
    assert!(g.cache_status().contains("hit"), "{}", g.cache_status());
    assert_eq!(g.text(), "call 1");
    assert_eq!(g.header("x-v"), Some("2"));
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn head_response_for_another_representation_drops_the_stored_get() {
    let (app, calls) = origin(layer(), |n, req| {
        let etag = if req.method() == http::Method::HEAD {
            "\"v2\""
        } else {
            "\"v1\""
        };
        numbered(n, &[("cache-control", "max-age=1"), ("etag", etag)])
    });
    get(&app, "/").await;
    advance(2.0).await;
    let h = send(
        &app,
        Request::head("/")
            .header("host", "example.com")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(h.header("etag"), Some("\"v2\""));
    let g = get(&app, "/").await;
    assert!(
        g.cache_status().contains("fwd=uri-miss"),
        "{}",
        g.cache_status()
    );
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn authorization_needs_public_s_maxage_or_must_revalidate() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    get_with(&app, "/", &[("authorization", "Bearer x")]).await;
    get_with(&app, "/", &[("authorization", "Bearer x")]).await;
    assert_eq!(calls.get(), 2, "max-age alone does not allow storing");

    for cc in [
        "public, max-age=60",
        "s-maxage=60",
        "max-age=60, must-revalidate",
    ] {
        let (app, calls) = origin(layer(), move |n, _| numbered(n, &[("cache-control", cc)]));
        get_with(&app, "/", &[("authorization", "Bearer x")]).await;
        get_with(&app, "/", &[("authorization", "Bearer x")]).await;
        assert_eq!(calls.get(), 1, "{cc}");
    }
}

#[tokio::test(start_paused = true)]
async fn status_codes_need_explicit_freshness_unless_heuristically_cacheable() {
    let (app, calls) = origin(layer(), |_, _| reply(302, &[("location", "/x")], ""));
    get(&app, "/").await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2, "302 without freshness is not stored");

    let (app, calls) = origin(layer(), |_, _| {
        reply(
            302,
            &[("location", "/x"), ("cache-control", "max-age=60")],
            "",
        )
    });
    get(&app, "/").await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 1, "302 with max-age is stored");

    let (app, calls) = origin(layer(), |_, _| {
        reply(404, &[("cache-control", "max-age=60")], "nope")
    });
    get(&app, "/").await;
    let b = get(&app, "/").await;
    assert_eq!(b.status, 404);
    assert_eq!(calls.get(), 1);

    let (app, calls) = origin(layer(), |_, _| {
        reply(206, &[("cache-control", "max-age=60")], "x")
    });
    get(&app, "/").await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2, "206 is never stored");
}

#[tokio::test(start_paused = true)]
async fn must_understand_overrides_no_store_for_understood_status() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(
            n,
            &[("cache-control", "must-understand, no-store, max-age=60")],
        )
    });
    get(&app, "/").await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 1);
}

// ---- freshness ----

#[tokio::test(start_paused = true)]
async fn max_age_expires_on_the_clock() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    get(&app, "/").await;
    advance(59.0).await;
    assert_eq!(get(&app, "/").await.text(), "call 1");
    advance(2.0).await;
    let c = get(&app, "/").await;
    assert_eq!(c.text(), "call 2");
    assert!(
        c.cache_status().contains("fwd=stale"),
        "{}",
        c.cache_status()
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn s_maxage_overrides_max_age_in_a_shared_cache() {
    let (app, _calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=1, s-maxage=100")])
    });
    get(&app, "/").await;
    advance(50.0).await;
    assert_eq!(get(&app, "/").await.text(), "call 1");

    let private = CacheLayer::builder()
        .mode(CacheMode::Private)
        .build()
        .unwrap();
    let (app, _calls) = origin(private, |n, _| {
        numbered(n, &[("cache-control", "max-age=1, s-maxage=100")])
    });
    get(&app, "/").await;
    advance(2.0).await;
    assert_eq!(
        get(&app, "/").await.text(),
        "call 2",
        "a private cache ignores s-maxage"
    );
}

#[tokio::test(start_paused = true)]
async fn expires_counts_from_date() {
    let clock = VirtualClock::new();
    let (app, calls) = origin(layer(), move |n, _| {
        let date = clock.http_date(0);
        let expires = clock.http_date(30);
        numbered(n, &[("date", &date), ("expires", &expires)])
    });
    get(&app, "/").await;
    advance(25.0).await;
    assert_eq!(get(&app, "/").await.text(), "call 1");
    advance(10.0).await;
    assert_eq!(get(&app, "/").await.text(), "call 2");
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn invalid_expires_means_already_expired() {
    let (app, calls) = origin(layer(), |n, _| numbered(n, &[("expires", "0")]));
    get(&app, "/").await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn heuristic_freshness_is_ten_percent_of_last_modified_age() {
    let clock = VirtualClock::new();
    let (app, calls) = origin(layer(), move |n, _| {
        let date = clock.http_date(0);
        let lm = clock.http_date(-1000);
        numbered(n, &[("date", &date), ("last-modified", &lm)])
    });
    get(&app, "/").await;
    advance(90.0).await;
    assert_eq!(get(&app, "/").await.text(), "call 1", "fresh for ~100 s");
    advance(20.0).await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn heuristic_freshness_needs_a_heuristically_cacheable_status() {
    let clock = VirtualClock::new();
    let (app, calls) = origin(layer(), move |_, _| {
        let lm = clock.http_date(-100_000);
        reply(500, &[("last-modified", &lm)], "err")
    });
    get(&app, "/").await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn age_header_counts_initial_age_and_resident_time() {
    let clock = VirtualClock::new();
    let (app, calls) = origin(layer(), move |n, _| {
        let date = clock.http_date(0);
        numbered(
            n,
            &[
                ("cache-control", "max-age=60"),
                ("age", "10"),
                ("date", &date),
            ],
        )
    });
    get(&app, "/").await;
    advance(20.0).await;
    let b = get(&app, "/").await;
    let age: u64 = b.header("age").unwrap().parse().unwrap();
    assert!((30..=31).contains(&age), "age {age}");
    advance(31.0).await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2, "stale after 60 s of total age");
}

#[tokio::test(start_paused = true)]
async fn apparent_age_from_an_old_date() {
    let clock = VirtualClock::new();
    let (app, calls) = origin(layer(), move |n, _| {
        let date = clock.http_date(-50);
        numbered(n, &[("cache-control", "max-age=60"), ("date", &date)])
    });
    let a = get(&app, "/").await;
    assert!(
        a.cache_status().contains("ttl=10") || a.cache_status().contains("ttl=9"),
        "{}",
        a.cache_status()
    );
    advance(15.0).await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);
}

// ---- request directives ----

#[tokio::test(start_paused = true)]
async fn request_max_age_forces_forwarding() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    get(&app, "/").await;
    advance(10.0).await;
    let b = get_with(&app, "/", &[("cache-control", "max-age=5")]).await;
    assert_eq!(b.text(), "call 2");
    assert!(
        b.cache_status().contains("fwd=request"),
        "{}",
        b.cache_status()
    );
    assert_eq!(
        get_with(&app, "/", &[("cache-control", "max-age=5")])
            .await
            .text(),
        "call 2"
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn request_min_fresh() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    get(&app, "/").await;
    advance(30.0).await;
    assert_eq!(
        get_with(&app, "/", &[("cache-control", "min-fresh=20")])
            .await
            .text(),
        "call 1"
    );
    assert_eq!(
        get_with(&app, "/", &[("cache-control", "min-fresh=40")])
            .await
            .text(),
        "call 2"
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn request_max_stale() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=10")])
    });
    get(&app, "/").await;
    advance(15.0).await;
    let b = get_with(&app, "/", &[("cache-control", "max-stale=10")]).await;
    assert_eq!(b.text(), "call 1");
    assert!(b.cache_status().contains("ttl=-5"), "{}", b.cache_status());
    assert_eq!(
        get_with(&app, "/", &[("cache-control", "max-stale")])
            .await
            .text(),
        "call 1"
    );
    assert_eq!(
        get_with(&app, "/", &[("cache-control", "max-stale=2")])
            .await
            .text(),
        "call 2"
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn request_no_cache_and_pragma_revalidate() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    get(&app, "/").await;
    assert_eq!(
        get_with(&app, "/", &[("cache-control", "no-cache")])
            .await
            .text(),
        "call 2"
    );
    assert_eq!(
        get_with(&app, "/", &[("pragma", "no-cache")]).await.text(),
        "call 3"
    );
    assert_eq!(get(&app, "/").await.text(), "call 3");
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn request_no_store_is_not_stored_but_may_be_served() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    let a = get_with(&app, "/", &[("cache-control", "no-store")]).await;
    assert!(a.cache_status().contains("detail=request-no-store"));
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);
    assert_eq!(
        get_with(&app, "/", &[("cache-control", "no-store")])
            .await
            .text(),
        "call 2"
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn only_if_cached_gives_504_on_a_miss() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    let a = get_with(&app, "/", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(a.status, 504);
    assert_eq!(calls.get(), 0);
    get(&app, "/").await;
    let b = get_with(&app, "/", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(b.status, 200);
    advance(61.0).await;
    let c = get_with(&app, "/", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(c.status, 504, "stale is not usable");
    assert_eq!(calls.get(), 1);
}

// ---- response directives ----

#[tokio::test(start_paused = true)]
async fn must_revalidate_refuses_max_stale() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=10, must-revalidate")])
    });
    get(&app, "/").await;
    advance(15.0).await;
    assert_eq!(
        get_with(&app, "/", &[("cache-control", "max-stale")])
            .await
            .text(),
        "call 2"
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn proxy_revalidate_applies_to_shared_caches() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=10, proxy-revalidate")])
    });
    get(&app, "/").await;
    advance(15.0).await;
    get_with(&app, "/", &[("cache-control", "max-stale")]).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn response_no_cache_revalidates_every_time() {
    let (app, calls) = origin(layer(), |n, req| {
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            return reply(304, &[("etag", "\"v1\"")], "");
        }
        numbered(
            n,
            &[
                ("cache-control", "no-cache, max-age=60"),
                ("etag", "\"v1\""),
            ],
        )
    });
    get(&app, "/").await;
    let b = get(&app, "/").await;
    assert_eq!(b.text(), "call 1");
    assert!(
        b.cache_status().contains("fwd-status=304"),
        "{}",
        b.cache_status()
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn field_qualified_no_cache_is_treated_as_no_cache() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "no-cache=\"x-foo\", max-age=60")])
    });
    get(&app, "/").await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);
}

// ---- Vary ----

#[tokio::test(start_paused = true)]
async fn vary_keeps_several_variants() {
    let (app, calls) = origin(layer(), |n, req| {
        let lang = req
            .headers()
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        let mut r = numbered(
            n,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        );
        r.headers_mut().insert("x-lang", lang.parse().unwrap());
        r
    });
    let en = get_with(&app, "/", &[("accept-language", "en")]).await;
    let fr = get_with(&app, "/", &[("accept-language", "fr")]).await;
    assert!(
        fr.cache_status().contains("fwd=vary-miss"),
        "{}",
        fr.cache_status()
    );
    assert_eq!(en.header("x-lang"), Some("en"));
    assert_eq!(fr.header("x-lang"), Some("fr"));
    assert_eq!(
        get_with(&app, "/", &[("accept-language", "en")])
            .await
            .header("x-lang"),
        Some("en")
    );
    assert_eq!(
        get_with(&app, "/", &[("accept-language", "fr")])
            .await
            .header("x-lang"),
        Some("fr")
    );
    assert_eq!(calls.get(), 2);
    get(&app, "/").await;
    assert_eq!(calls.get(), 3, "absent header is its own variant");
    get(&app, "/").await;
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn vary_values_are_normalised() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(
            n,
            &[("cache-control", "max-age=60"), ("vary", "accept-encoding")],
        )
    });
    get_with(&app, "/", &[("accept-encoding", "gzip,  br")]).await;
    get_with(&app, "/", &[("Accept-Encoding", " gzip, br ")]).await;
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn vary_star_is_never_served_from_cache() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60"), ("vary", "*")])
    });
    get(&app, "/").await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);
}

// ---- validation ----

#[tokio::test(start_paused = true)]
async fn revalidation_merges_the_304() {
    let (app, calls) = origin(layer(), |n, req| {
        if n > 1 {
            assert_eq!(req.headers().get("if-none-match").unwrap(), "\"v1\"");
            assert!(req.headers().get("if-modified-since").is_some());
            return reply(
                304,
                &[
                    ("etag", "\"v1\""),
                    ("cache-control", "max-age=100"),
                    ("x-new", "2"),
                    ("content-length", "0"),
                ],
                "",
            );
        }
        numbered(
            n,
            &[
                ("cache-control", "max-age=1"),
                ("etag", "\"v1\""),
                ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("x-old", "1"),
            ],
        )
    });
    get(&app, "/").await;
    advance(2.0).await;
    let b = get(&app, "/").await;
    assert_eq!(b.status, 200);
    assert_eq!(b.text(), "call 1");
    assert_eq!(b.header("x-new"), Some("2"));
    assert_eq!(b.header("x-old"), Some("1"));
    assert_eq!(b.header("content-length"), Some("6"));
    assert!(
        b.cache_status()
            .contains("fwd=stale; fwd-status=304; stored"),
        "{}",
        b.cache_status()
    );
    advance(50.0).await;
    let c = get(&app, "/").await;
    assert!(
        c.cache_status().contains("hit"),
        "fresh for 100 s after the 304"
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_304_for_another_etag_is_not_merged() {
    // After the first call the representation is "other"; a conditional request gets a 304
    // naming it, which must neither update the stored "v1" nor reach the client.
    let (app, calls) = origin(layer(), |n, req| {
        if n > 1 && req.headers().contains_key("if-none-match") {
            return reply(304, &[("etag", "\"other\"")], "");
        }
        let etag = if n > 1 { "\"other\"" } else { "\"v1\"" };
        numbered(n, &[("cache-control", "max-age=1"), ("etag", etag)])
    });
    get(&app, "/").await;
    advance(2.0).await;
    let b = get(&app, "/").await;
    assert_eq!(b.status, 200, "{}", b.cache_status());
    assert_eq!(b.body, "call 3", "asked again without validators");
    assert_eq!(b.header("etag"), Some("\"other\""));
    assert_eq!(calls.get(), 3);
    let c = get(&app, "/").await;
    assert_eq!(c.body, "call 3", "the new response is stored");
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn client_conditional_requests_get_304_from_cache() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(
            n,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "W/\"v1\""),
                ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ],
        )
    });
    get(&app, "/").await;
    let a = get_with(&app, "/", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(a.status, 304);
    assert!(a.body.is_empty());
    assert_eq!(a.header("etag"), Some("W/\"v1\""));
    assert_eq!(
        get_with(&app, "/", &[("if-none-match", "\"v2\"")])
            .await
            .status,
        200
    );
    assert_eq!(
        get_with(
            &app,
            "/",
            &[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]
        )
        .await
        .status,
        304
    );
    assert_eq!(
        get_with(
            &app,
            "/",
            &[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]
        )
        .await
        .status,
        200
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn head_is_served_from_a_stored_get() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    get(&app, "/").await;
    let h = send(
        &app,
        Request::head("/")
            .header("host", "example.com")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(h.header("content-length"), Some("6"));
    assert!(h.cache_status().contains("hit"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn head_miss_is_forwarded_and_not_stored() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    send(
        &app,
        Request::head("/")
            .header("host", "example.com")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);
}

// ---- invalidation ----

#[tokio::test(start_paused = true)]
async fn unsafe_methods_invalidate_target_and_locations() {
    let (app, calls) = origin(layer(), |n, req| {
        if req.method() == http::Method::POST {
            return match req.uri().path() {
                "/fail" => reply(500, &[], ""),
                _ => reply(
                    201,
                    &[
                        ("location", "/b"),
                        ("content-location", "http://example.com/c"),
                    ],
                    "",
                ),
            };
        }
        if req.method() == http::Method::DELETE {
            return reply(204, &[("location", "http://other.example/d")], "");
        }
        numbered(n, &[("cache-control", "max-age=60")])
    });
    for p in ["/a", "/b", "/c", "/d", "/fail"] {
        get(&app, p).await;
    }
    let before = calls.get();
    let post = send(
        &app,
        Request::post("/a")
            .header("host", "example.com")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(
        post.cache_status().contains("fwd=method"),
        "{}",
        post.cache_status()
    );
    let after_post = calls.get();
    assert_eq!(after_post, before + 1);
    for p in ["/a", "/b", "/c"] {
        get(&app, p).await;
    }
    assert_eq!(
        calls.get(),
        after_post + 3,
        "target, Location and Content-Location invalidated"
    );

    send(
        &app,
        Request::post("/fail")
            .header("host", "example.com")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let n = calls.get();
    get(&app, "/fail").await;
    assert_eq!(calls.get(), n, "an error response invalidates nothing");

    send(
        &app,
        Request::delete("/x")
            .header("host", "example.com")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let n = calls.get();
    get(&app, "/d").await;
    assert_eq!(calls.get(), n, "a Location on another origin is ignored");
}

// ---- targeted cache control ----

#[tokio::test(start_paused = true)]
async fn cdn_cache_control_overrides_cache_control() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(
            n,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ],
        )
    });
    let a = get(&app, "/").await;
    assert_eq!(
        a.header("cache-control"),
        Some("no-store"),
        "the client still sees Cache-Control"
    );
    get(&app, "/").await;
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn invalid_targeted_field_falls_back_to_cache_control() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(
            n,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "Max-Age=60, ???"),
            ],
        )
    });
    get(&app, "/").await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn targeted_field_name_is_configurable() {
    let l = CacheLayer::builder()
        .targeted_cache_control(Some("Acme-Cache-Control"))
        .build()
        .unwrap();
    let (app, calls) = origin(l, |n, _| {
        numbered(
            n,
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "max-age=600"),
                ("acme-cache-control", "no-store"),
            ],
        )
    });
    get(&app, "/").await;
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);
}

fn gateway() -> CacheLayer {
    CacheLayer::builder()
        .targeted_cache_controls(["Surrogate-Control", "CDN-Cache-Control"])
        .surrogate_device(Some("edge"))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn surrogate_control_overrides_cache_control_and_is_removed() {
    let (app, calls) = origin(gateway(), |n, _| {
        numbered(
            n,
            &[
                ("cache-control", "no-store"),
                ("surrogate-control", "max-age=60"),
            ],
        )
    });
    let a = get(&app, "/").await;
    assert!(
        a.cache_status().contains("stored; ttl=60"),
        "{}",
        a.cache_status()
    );
    assert_eq!(a.header("surrogate-control"), None, "removed on a miss");
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let b = get(&app, "/").await;
    assert_eq!(b.text(), "call 1");
    assert_eq!(b.header("surrogate-control"), None, "removed on a hit");
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn surrogate_control_device_targeting() {
    let (app, calls) = origin(gateway(), |n, req| {
        let sc = match req.uri().path() {
            "/mine" => "max-age=1, max-age=60;edge",
            "/other" => "max-age=60;browser-cache",
            "/no-store-here" => "max-age=60, no-store;edge",
            _ => "max-age=60+600",
        };
        numbered(
            n,
            &[("cache-control", "no-store"), ("surrogate-control", sc)],
        )
    });
    get(&app, "/mine").await;
    advance(30.0).await;
    assert_eq!(
        get(&app, "/mine").await.text(),
        "call 1",
        "the device's max-age"
    );
    get(&app, "/other").await;
    get(&app, "/other").await;
    assert_eq!(
        calls.get(),
        3,
        "another device's directive: Cache-Control no-store applies"
    );
    let r = get(&app, "/no-store-here").await;
    assert!(
        r.cache_status().contains("detail=no-store"),
        "{}",
        r.cache_status()
    );
    let r = get(&app, "/grace").await;
    assert!(r.cache_status().contains("ttl=60"), "{}", r.cache_status());
}

#[tokio::test(start_paused = true)]
async fn surrogate_control_max_age_plus_serves_stale_on_error() {
    let (app, _calls) = origin(gateway(), |n, _| {
        if n > 1 {
            return reply(503, &[], "down");
        }
        numbered(n, &[("surrogate-control", "max-age=1+600")])
    });
    get(&app, "/").await;
    advance(300.0).await;
    let r = get(&app, "/").await;
    assert_eq!(r.text(), "call 1");
    assert!(
        r.cache_status().contains("detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
    advance(600.0).await;
    assert_eq!(get(&app, "/").await.status, 503);
}

#[tokio::test(start_paused = true)]
async fn targeted_fields_in_priority_order() {
    let (app, calls) = origin(gateway(), |n, req| {
        let mut h = vec![("cache-control", "max-age=5")];
        match req.uri().path() {
            // Both present and valid: the first listed wins.
            "/both" => h.extend([
                ("surrogate-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ]),
            // The first is invalid: the second applies.
            "/second" => h.extend([
                ("surrogate-control", "max-age=x"),
                ("cdn-cache-control", "max-age=60"),
            ]),
            // Neither valid: Cache-Control.
            _ => h.extend([
                ("surrogate-control", "max-age=x"),
                ("cdn-cache-control", "Max-Age=60"),
            ]),
        }
        numbered(n, &h)
    });
    let r = get(&app, "/both").await;
    assert!(
        r.cache_status().contains("detail=no-store"),
        "{}",
        r.cache_status()
    );
    let r = get(&app, "/second").await;
    assert!(r.cache_status().contains("ttl=60"), "{}", r.cache_status());
    let r = get(&app, "/neither").await;
    assert!(r.cache_status().contains("ttl=5"), "{}", r.cache_status());
    assert_eq!(calls.get(), 3);
    assert!(
        CacheLayer::builder()
            .targeted_cache_controls(["CDN-Cache-Control", "cdn-cache-control"])
            .build()
            .is_err(),
        "listed twice"
    );
    assert!(
        CacheLayer::builder()
            .targeted_cache_controls(["Cache-Control"])
            .build()
            .is_err()
    );
    assert!(
        CacheLayer::builder()
            .targeted_cache_controls(["bad name"])
            .build()
            .is_err()
    );
    assert!(
        CacheLayer::builder()
            .surrogate_device(Some("a;b"))
            .build()
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn surrogate_control_kept_when_not_obeyed_or_asked() {
    let (app, _calls) = origin(layer(), |n, _| {
        numbered(
            n,
            &[
                ("cache-control", "max-age=60"),
                ("surrogate-control", "max-age=5"),
            ],
        )
    });
    let r = get(&app, "/").await;
    assert!(
        r.cache_status().contains("ttl=60"),
        "not a targeted field by default"
    );
    assert_eq!(r.header("surrogate-control"), Some("max-age=5"));
    let l = CacheLayer::builder()
        .targeted_cache_controls(["Surrogate-Control"])
        .strip_surrogate_control(false)
        .build()
        .unwrap();
    let (app, _calls) = origin(l, |n, _| numbered(n, &[("surrogate-control", "max-age=5")]));
    get(&app, "/").await;
    assert_eq!(
        get(&app, "/").await.header("surrogate-control"),
        Some("max-age=5")
    );
}

// ---- Cache-Status ----

#[tokio::test(start_paused = true)]
async fn cache_status_name_is_configurable() {
    let l = CacheLayer::builder().cache_name("edge-1").build().unwrap();
    let (app, _calls) = origin(l, |n, _| numbered(n, &[("cache-control", "max-age=60")]));
    get(&app, "/").await;
    assert_eq!(get(&app, "/").await.cache_status(), "edge-1; hit; ttl=60");
    assert!(
        CacheLayer::builder()
            .cache_name("bad name")
            .build()
            .is_err()
    );
}

// ---- malformed input ----

#[tokio::test(start_paused = true)]
async fn malformed_headers_never_panic() {
    let garbage: &[(&str, &str)] = &[
        (
            "cache-control",
            "max-age=\"\", ,,=,s-maxage=-5, \"unterminated",
        ),
        ("expires", "yesterday-ish"),
        ("date", "not a date"),
        ("age", "-3"),
        ("last-modified", "Mon, 99 Foo 10000 99:99:99 GMT"),
        ("vary", ", , ,"),
        ("etag", "unquoted"),
        ("cdn-cache-control", "=;=;"),
    ];
    let (app, _calls) = origin(layer(), move |n, _| numbered(n, garbage));
    for _ in 0..3 {
        let r = get_with(
            &app,
            "/",
            &[
                (
                    "cache-control",
                    "max-stale=abc, min-fresh=,only-if-cached=1",
                ),
                ("if-none-match", "W/"),
                ("if-modified-since", "31 Foo 99 garbage"),
            ],
        )
        .await;
        assert!(r.status == 200 || r.status == 304 || r.status == 504);
    }
    let huge_vary = (0..500)
        .map(|i| format!("x-h{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (app, calls) = origin(layer(), move |n, _| {
        let mut r = numbered(n, &[("cache-control", "max-age=60")]);
        r.headers_mut().insert("vary", huge_vary.parse().unwrap());
        r
    });
    let a = get(&app, "/").await;
    assert!(a.cache_status().contains("vary-unusable"));
    get(&app, "/").await;
    assert_eq!(calls.get(), 2);
    let big = "a".repeat(60_000);
    let (app, _calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    let r = get_with(&app, "/", &[("cache-control", &big), ("accept", &big)]).await;
    assert_eq!(r.status, 200);
}

// ---- keys and bodies that must not be trusted ----

#[tokio::test(start_paused = true)]
async fn host_with_path_characters_cannot_spell_another_key() {
    let (app, calls) = origin(layer(), |n, _| {
        numbered(n, &[("cache-control", "max-age=60")])
    });
    // Without validation, `Host: example.com/admin` + `/secret` has the key of
    // `Host: example.com` + `/admin/secret`.
    let poison = send(
        &app,
        Request::get("/secret")
            .header("host", "example.com/admin")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(
        poison.cache_status().contains("detail=key"),
        "{}",
        poison.cache_status()
    );
    let victim = get(&app, "/admin/secret").await;
    assert_eq!(victim.text(), "call 2", "{}", victim.cache_status());
    assert_eq!(calls.get(), 2);
    for host in ["example.com?x", "example.com#x", "exa mple.com"] {
        let r = send(
            &app,
            Request::get("/")
                .header("host", host)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert!(r.cache_status().contains("detail=key"), "{host}");
    }
}

#[tokio::test(start_paused = true)]
async fn content_length_that_lies_is_not_stored() {
    for declared in ["3", "100"] {
        let (app, calls) = origin(layer(), move |_, _| {
            reply(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("content-length", declared),
                ],
                "hello",
            )
        });
        let a = get(&app, "/").await;
        assert!(
            a.cache_status().contains("detail=length-mismatch"),
            "{declared}: {}",
            a.cache_status()
        );
        get(&app, "/").await;
        assert_eq!(calls.get(), 2, "{declared}: never a hit");
    }
    // The truth is stored and served with it.
    let (app, calls) = origin(layer(), |_, _| {
        reply(
            200,
            &[("cache-control", "max-age=60"), ("content-length", "5")],
            "hello",
        )
    });
    get(&app, "/").await;
    let b = get(&app, "/").await;
    assert_eq!((b.text(), b.header("content-length")), ("hello", Some("5")));
    assert_eq!(calls.get(), 1);
}
