//! invalidation, method, authorization, other, cdn-cache-control and partial.

use super::harness::Kind::{Check, Optimal, Required};
use super::harness::Type::{Cached, NotCached};
use super::harness::templates::fresh;
use super::harness::{Case, ReqSpec, case, r};

const CC: &str = "Cache-Control";
const CDN: &str = "CDN-Cache-Control";

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

pub(crate) fn invalidation() -> Vec<Case> {
    let target = |filename: &str| {
        r().filename(filename)
            .rh(CC, "max-age=100000")
            .rh("Last-Modified", 0)
            .rh("Date", 0)
    };
    let lcl = |method: &'static str| {
        r().method(method)
            .req_body("abc")
            .rh("Location", "location_target")
            .rh("Content-Location", "content_location_target")
            .magic_locations()
            .setup()
    };
    let mut cases = Vec::new();
    for method in ["POST", "PUT", "DELETE", "M-SEARCH"] {
        cases.push(case(
            leak(format!("invalidate-{method}")),
            Required,
            vec![
                fresh(r()),
                r().method(method).req_body("abc").setup(),
                r().expect(NotCached),
            ],
        ));
        cases.push(case(
            leak(format!("invalidate-{method}-failed")),
            Optimal,
            vec![
                fresh(r()),
                r().method(method).req_body("abc").status(500).setup(),
                r().expect(Cached),
            ],
        ));
    }
    for method in ["POST", "PUT", "DELETE", "M-SEARCH"] {
        cases.push(case(
            leak(format!("invalidate-{method}-location")),
            Check,
            vec![
                target("location_target").setup(),
                lcl(method),
                target("location_target").expect(NotCached),
            ],
        ));
    }
    for method in ["POST", "PUT", "DELETE", "M-SEARCH"] {
        cases.push(case(
            leak(format!("invalidate-{method}-cl")),
            Check,
            vec![
                target("content_location_target").setup(),
                lcl(method),
                target("content_location_target").expect(NotCached),
            ],
        ));
    }
    cases
}

pub(crate) fn method() -> Vec<Case> {
    vec![case(
        "method-POST",
        Optimal,
        vec![
            r().method("POST")
                .req_body("12345")
                .qh("Content-Type", "text/plain")
                .rh("Expires", 30 * 24 * 3600)
                .rh("Content-Location", "")
                .rh("Date", 0)
                .magic_locations()
                .pause()
                .setup(),
            r().expect(Cached),
        ],
    )]
}

pub(crate) fn authorization() -> Vec<Case> {
    let auth = |id, kind, cc: Option<&str>| {
        let mut first = r().qh("Authorization", "FOO").ereq("Authorization", "FOO");
        first = match cc {
            None => fresh(first),
            Some(v) => first.rh(CC, v).rh("Date", 0).pause().setup(),
        };
        let then = if cc.is_none() { NotCached } else { Cached };
        case(id, kind, vec![first, r().expect(then)])
    };
    vec![
        auth("other-authorization", Required, None),
        auth(
            "other-authorization-public",
            Optimal,
            Some("max-age=3600, public"),
        ),
        auth(
            "other-authorization-must-revalidate",
            Optimal,
            Some("max-age=3600, must-revalidate"),
        ),
        auth(
            "other-authorization-smaxage",
            Optimal,
            Some("s-maxage=3600"),
        ),
    ]
}

pub(crate) fn other() -> Vec<Case> {
    let expires_30d = || {
        r().rh("Expires", 30 * 24 * 3600)
            .rh("Date", 0)
            .pause()
            .setup()
    };
    vec![
        case(
            "other-age-gen",
            Required,
            vec![fresh(r()), r().expect(Cached).erh_gt("Age", 2)],
        ),
        case(
            "other-age-update-expires",
            Required,
            vec![
                expires_30d().rh("Age", "30"),
                r().expect(Cached).erh_gt("Age", 32),
            ],
        ),
        case(
            "other-age-update-max-age",
            Required,
            vec![
                fresh(r().rh("Age", "30")),
                r().expect(Cached).erh_gt("Age", 32),
            ],
        ),
        case(
            "other-date-update",
            Required,
            vec![fresh(r()), r().expect(Cached).erh("Date", 0)],
        ),
        case(
            "other-date-update-expires",
            Required,
            vec![expires_30d(), r().expect(Cached).erh("Date", 0)],
        ),
        case(
            "other-date-update-expires-update",
            Check,
            vec![
                expires_30d(),
                r().expect(Cached).erh("Expires", 30 * 24 * 3600),
            ],
        ),
        case(
            "query-args-different",
            Required,
            vec![
                fresh(r().query("test=query-args-different-1")),
                r().query("test=query-args-different-2").expect(NotCached),
            ],
        ),
        case(
            "query-args-same",
            Optimal,
            vec![
                fresh(r().query("test=query-args-same")),
                r().query("test=query-args-same").expect(Cached),
            ],
        ),
        case(
            "other-heuristic-content-disposition-attachment",
            Check,
            vec![
                r().rh("Last-Modified", -100_000)
                    .rh("Date", 0)
                    .rh("Content-Disposition", "attachment; filename=example.txt")
                    .setup(),
                r().expect(Cached),
            ],
        ),
        case(
            "other-fresh-content-disposition-attachment",
            Check,
            vec![
                fresh(r().rh("Content-Disposition", "attachment; filename=example.txt")),
                r().expect(Cached),
            ],
        ),
        case(
            "other-set-cookie",
            Optimal,
            vec![fresh(r().rh("Set-Cookie", "a=b")), r().expect(Cached)],
        ),
        case(
            "other-cookie",
            Optimal,
            vec![fresh(r()), r().qh("Cookie", "a=b").expect(Cached)],
        ),
    ]
}

pub(crate) fn cdn_cache_control() -> Vec<Case> {
    let cdn = |id, kind, first: ReqSpec, then| {
        case(id, kind, vec![first.setup().pause(), r().expect(then)])
    };
    vec![
        cdn("cdn-max-age", Optimal, r().rhu(CDN, "max-age=3600"), Cached),
        cdn(
            "cdn-max-age-max",
            Optimal,
            r().rhu(CDN, "max-age=2147483648"),
            Cached,
        ),
        cdn(
            "cdn-max-age-max-plus",
            Optimal,
            r().rhu(CDN, "max-age=99999999999"),
            Cached,
        ),
        cdn(
            "cdn-max-age-age",
            Required,
            r().rh("Date", 0).rhu(CDN, "max-age=3600").rh("Age", "7200"),
            NotCached,
        ),
        cdn(
            "cdn-max-age-space-before-equals",
            Check,
            r().rh(CC, "max-age=1").rhu(CDN, "max-age =100"),
            NotCached,
        ),
        cdn(
            "cdn-max-age-space-after-equals",
            Check,
            r().rh(CC, "max-age=1").rhu(CDN, "max-age= 100"),
            NotCached,
        ),
        cdn(
            "cdn-max-age-0",
            Required,
            r().rhu(CDN, "max-age=0"),
            NotCached,
        ),
        cdn(
            "cdn-max-age-extension",
            Optimal,
            r().rhu(CDN, "foobar, max-age=3600"),
            Cached,
        ),
        cdn(
            "cdn-max-age-case-insensitive",
            Check,
            r().rhu(CDN, "MaX-aGe=3600"),
            Cached,
        ),
        cdn(
            "cdn-max-age-expires",
            Optimal,
            r().rhu(CDN, "max-age=3600")
                .rh("Expires", -10000)
                .rh("Date", 0),
            Cached,
        ),
        cdn(
            "cdn-max-age-cc-max-age-invalid-expires",
            Optimal,
            r().rhu(CDN, "max-age=3600")
                .rhu("Expires", "0")
                .rh("Date", 0),
            Cached,
        ),
        cdn(
            "cdn-max-age-0-expires",
            Required,
            r().rhu(CDN, "max-age=0").rh("Expires", 10000).rh("Date", 0),
            NotCached,
        ),
        cdn(
            "cdn-max-age-short-cc-max-age",
            Optimal,
            r().rh(CC, "max-age=1").rhu(CDN, "max-age=3600"),
            Cached,
        ),
        cdn(
            "cdn-max-age-long-cc-max-age",
            Required,
            r().rh(CC, "max-age=3600").rhu(CDN, "max-age=1"),
            NotCached,
        ),
        case(
            "cdn-private",
            Required,
            vec![
                r().rh(CDN, "private")
                    .rh(CC, "max-age=10000")
                    .rh("Expires", 10000)
                    .rh("Date", 0)
                    .setup(),
                r().expect(NotCached),
            ],
        ),
        case(
            "cdn-no-cache",
            Required,
            vec![
                r().rh(CDN, "no-cache")
                    .rh(CC, "max-age=10000")
                    .rh("Expires", 10000)
                    .rh("Date", 0)
                    .setup(),
                r().expect(NotCached),
            ],
        ),
        cdn(
            "cdn-no-store-cc-fresh",
            Required,
            r().rh(CC, "max-age=10000")
                .rhu(CDN, "no-store")
                .rh("Expires", 10000)
                .rh("Date", 0),
            NotCached,
        ),
        cdn(
            "cdn-fresh-cc-nostore",
            Required,
            r().rh(CC, "no-store").rhu(CDN, "max-age=10000"),
            Cached,
        ),
        cdn(
            "cdn-cc-invalid-sh-type-unknown",
            Required,
            r().rhu(CDN, "max-age=10000, &&&&&").rh(CC, "no-store"),
            NotCached,
        ),
        cdn(
            "cdn-cc-invalid-sh-type-wrong",
            Required,
            r().rhu(CDN, "max-age=\"10000\"").rh(CC, "no-store"),
            NotCached,
        ),
        case(
            "cdn-remove-header",
            Check,
            vec![
                r().rh(CC, "max-age=10000")
                    .rhu(CDN, "foo")
                    .rh("Expires", 10000)
                    .rh("Date", 0)
                    .erh(CDN, "foo"),
            ],
        ),
        case(
            "cdn-remove-age-exceed",
            Check,
            vec![
                r().rh(CC, "max-age=1")
                    .rh(CDN, "max-age=10000")
                    .rh("Date", 0)
                    .setup()
                    .pause(),
                r().erh_present("Age"),
            ],
        ),
        case(
            "cdn-date-update-exceed",
            Check,
            vec![
                r().rh(CC, "max-age=1")
                    .rh(CDN, "max-age=10000")
                    .rh("Date", 0)
                    .setup()
                    .pause(),
                r().erh("Date", 0),
            ],
        ),
        case(
            "cdn-expires-update-exceed",
            Check,
            vec![
                r().rh(CC, "max-age=1")
                    .rh("Expires", 1)
                    .rh(CDN, "max-age=10000")
                    .rh("Date", 0)
                    .setup()
                    .pause(),
                r().erh("Expires", 1),
            ],
        ),
    ]
}

/// Not in the suite: what a gateway owes the messages it forwards.
pub(crate) fn gateway() -> Vec<Case> {
    vec![
        case(
            "gateway-via-on-forwarded-requests",
            Required,
            vec![r().ereq("Via", "1.1 cache-proxy")],
        ),
        case(
            "gateway-304-other-etag-not-handed-to-unconditional-client",
            Required,
            vec![
                r().rh(CC, "max-age=2")
                    .rh("ETag", "\"abc\"")
                    .setup()
                    .pause(),
                r().not_modified_when_conditional()
                    .allow_repeat()
                    .rhu(CC, "max-age=2")
                    .rhu("ETag", "\"def\"")
                    .expect_status(200)
                    .erh("ETag", "\"def\""),
                // Stored from the repeated request 2, which the origin counted twice.
                r().allow_repeat()
                    .erh("client-request-count", "2")
                    .erh("ETag", "\"def\""),
            ],
        ),
    ]
}

pub(crate) fn partial() -> Vec<Case> {
    let stored_partial = || {
        r().qh("Range", "bytes=-5")
            .status(206)
            .rh(CC, "max-age=3600")
            .rh("Content-Range", "bytes 4-9/10")
            .body("01234")
            .setup()
    };
    let stored_complete = |body: &str| r().rh(CC, "max-age=3600").body(body).setup();
    let ranged = |range: &str, text: &str| {
        r().qh("Range", range)
            .expect(Cached)
            .expect_status(206)
            .text(Some(text))
    };
    vec![
        case(
            "partial-store-partial-reuse-partial",
            Optimal,
            vec![
                stored_partial().ereq("Range", "bytes=-5"),
                ranged("bytes=-5", "01234"),
            ],
        ),
        case(
            "partial-store-complete-reuse-partial",
            Optimal,
            vec![stored_complete("01234567890"), ranged("bytes=0-1", "01")],
        ),
        case(
            "partial-store-complete-reuse-partial-no-last",
            Optimal,
            vec![
                stored_complete("01234567890"),
                ranged("bytes=1-", "1234567890"),
            ],
        ),
        case(
            "partial-store-complete-reuse-partial-suffix",
            Optimal,
            vec![stored_complete("0123456789A"), ranged("bytes=-1", "A")],
        ),
        case(
            "partial-store-partial-reuse-partial-byterange",
            Optimal,
            vec![stored_partial(), ranged("bytes=6-8", "234")],
        ),
        case(
            "partial-store-partial-reuse-partial-absent",
            Optimal,
            vec![stored_partial(), ranged("bytes=6-", "234")],
        ),
        case(
            "partial-store-partial-reuse-partial-suffix",
            Optimal,
            vec![stored_partial(), ranged("bytes=-1", "4")],
        ),
        case(
            "partial-store-partial-complete",
            Optimal,
            vec![
                r().qh("Range", "bytes=-5")
                    .status(206)
                    .rh(CC, "max-age=3600")
                    .rh("Content-Range", "bytes 0-4/10")
                    .body("01234")
                    .setup(),
                r().ereq("range", "bytes=5-"),
            ],
        ),
        case(
            "partial-use-headers",
            Required,
            vec![
                stored_complete("01234567890").rh("A", "1"),
                ranged("bytes=0-1", "01")
                    .setup_tests(&["expected_type", "expected_status", "expected_response_text"])
                    .rh("A", "2"),
            ],
        ),
        case(
            "partial-use-stored-headers",
            Required,
            vec![
                stored_complete("01234567890").rh("A", "1"),
                ranged("bytes=0-1", "01")
                    .setup_tests(&["expected_type", "expected_status", "expected_response_text"])
                    .erh("A", "1"),
            ],
        ),
    ]
}
