//! cc-response, cc-request, pragma, cc-stale and stale.

use super::harness::Kind::{Check, Optimal, Required};
use super::harness::Type::{Cached, EtagValidated, LmValidated, NotCached};
use super::harness::templates::{become_stale, fresh};
use super::harness::{Case, case, r};

const CC: &str = "Cache-Control";

pub(crate) fn cc_response() -> Vec<Case> {
    let stored_then = |id, kind, first: super::harness::ReqSpec, then| {
        case(id, kind, vec![first.setup(), r().expect(then)])
    };
    vec![
        stored_then(
            "cc-resp-private-shared",
            Required,
            r().rh(CC, "private, max-age=3600"),
            NotCached,
        ),
        stored_then(
            "cc-resp-no-store",
            Required,
            r().rh(CC, "no-store"),
            NotCached,
        ),
        stored_then(
            "cc-resp-no-store-case-insensitive",
            Required,
            r().rh(CC, "No-StOrE"),
            NotCached,
        ),
        stored_then(
            "cc-resp-no-store-fresh",
            Required,
            r().rh(CC, "max-age=10000, no-store")
                .rh("Expires", 10000)
                .rh("Date", 0),
            NotCached,
        ),
        case(
            "cc-resp-no-store-old-new",
            Required,
            vec![
                r().rh(CC, "max-age=10000")
                    .rh("Expires", 10000)
                    .rh("Date", 0)
                    .rh("A", "1")
                    .setup()
                    .pause(),
                r().rh(CC, "no-store")
                    .rh("Date", 0)
                    .rh("A", "2")
                    .setup()
                    .pause(),
                r().expect(Cached).erh("a", "1"),
            ],
        ),
        case(
            "cc-resp-no-store-old-max-age",
            Required,
            vec![
                r().rh(CC, "max-age=10000")
                    .rh("Expires", 10000)
                    .rh("Date", 0)
                    .rh("A", "1")
                    .setup()
                    .pause(),
                r().rh(CC, "no-store, max-age=0")
                    .rh("Date", 0)
                    .rh("A", "2")
                    .setup()
                    .pause(),
                r().expect(Cached).erh("a", "1"),
            ],
        ),
        stored_then(
            "cc-resp-no-cache",
            Required,
            r().rh(CC, "max-age=10000, no-cache")
                .rh("Expires", 10000)
                .rh("Date", 0),
            NotCached,
        ),
        stored_then(
            "cc-resp-no-cache-case-insensitive",
            Required,
            r().rh(CC, "max-age=10000, No-CaChE")
                .rh("Expires", 10000)
                .rh("Date", 0),
            NotCached,
        ),
        stored_then(
            "cc-resp-no-cache-revalidate",
            Optimal,
            r().rh(CC, "no-cache").rh("ETag", "\"abcd\""),
            EtagValidated,
        ),
        stored_then(
            "cc-resp-no-cache-revalidate-fresh",
            Optimal,
            r().rh(CC, "max-age=10000, no-cache")
                .rh("Expires", 10000)
                .rh("Date", 0)
                .rh("ETag", "\"abcd\""),
            EtagValidated,
        ),
        case(
            "headers-omit-headers-listed-in-Cache-Control-no-cache-single",
            Check,
            vec![
                r().rh(CC, "no-cache=\"a\"")
                    .rh("a", "1")
                    .rh("b", "2")
                    .rh(CC, "max-age=3600")
                    .rh("Date", 0)
                    .setup()
                    .pause(),
                r().expect(Cached)
                    .erh("b", "2")
                    .missing("a")
                    .setup_tests(&["expected_type"]),
            ],
        ),
        case(
            "headers-omit-headers-listed-in-Cache-Control-no-cache",
            Check,
            vec![
                r().rh(CC, "no-cache=\"a, b\"")
                    .rh("a", "1")
                    .rh("b", "2")
                    .rh("c", "3")
                    .rh(CC, "max-age=3600")
                    .rh("Date", 0)
                    .setup()
                    .pause(),
                r().expect(Cached)
                    .erh("c", "3")
                    .missing("a")
                    .missing("b")
                    .setup_tests(&["expected_type"]),
            ],
        ),
        stored_then(
            "cc-resp-must-revalidate-fresh",
            Optimal,
            r().rh(CC, "max-age=10000, must-revalidate")
                .rh("ETag", "\"abcd\""),
            Cached,
        ),
        case(
            "cc-resp-must-revalidate-stale",
            Required,
            vec![
                r().rh(CC, "max-age=2, must-revalidate")
                    .rh("ETag", "\"abcd\"")
                    .setup(),
                r().expect(Cached)
                    .setup()
                    .pause()
                    .rh(CC, "max-age=2, must-revalidate")
                    .rh("ETag", "\"abcd\""),
                r().expect(EtagValidated),
            ],
        ),
    ]
}

pub(crate) fn cc_request() -> Vec<Case> {
    let with_request = |id, first: super::harness::ReqSpec, request: &str, then| {
        case(
            id,
            Check,
            vec![first.setup(), r().qh(CC, request).expect(then)],
        )
    };
    vec![
        with_request("ccreq-ma0", fresh(r()), "max-age=0", NotCached),
        with_request("ccreq-ma1", fresh(r()), "max-age=1", NotCached),
        with_request(
            "ccreq-magreaterage",
            r().rh(CC, "max-age=3600").rh("Age", "1800"),
            "max-age=600",
            NotCached,
        ),
        with_request(
            "ccreq-max-stale",
            r().rh(CC, "max-age=1").pause(),
            "max-stale=1000",
            Cached,
        ),
        with_request(
            "ccreq-max-stale-age",
            r().rh(CC, "max-age=1500").rh("Age", "2000"),
            "max-stale=1000",
            Cached,
        ),
        with_request(
            "ccreq-min-fresh",
            r().rh(CC, "max-age=1500"),
            "min-fresh=2000",
            NotCached,
        ),
        with_request(
            "ccreq-min-fresh-age",
            r().rh(CC, "max-age=1500").rh("Age", "1000"),
            "min-fresh=1000",
            NotCached,
        ),
        with_request(
            "ccreq-no-cache",
            r().rh(CC, "max-age=3600"),
            "no-cache",
            NotCached,
        ),
        with_request(
            "ccreq-no-cache-lm",
            r().rh(CC, "max-age=3600")
                .rh("Last-Modified", -10000)
                .rh("Date", 0),
            "no-cache",
            LmValidated,
        ),
        with_request(
            "ccreq-no-cache-etag",
            r().rh(CC, "max-age=3600").rh("ETag", "\"abc\""),
            "no-cache",
            EtagValidated,
        ),
        with_request(
            "ccreq-no-store",
            r().rh(CC, "max-age=3600"),
            "no-store",
            NotCached,
        ),
        case(
            "ccreq-oic",
            Check,
            vec![r().qh(CC, "only-if-cached").expect_status(504).text(None)],
        ),
    ]
}

pub(crate) fn pragma() -> Vec<Case> {
    vec![
        case(
            "pragma-request-no-cache",
            Check,
            vec![
                r().rh(CC, "max-age=3600").setup(),
                r().qh("Pragma", "no-cache").expect(Cached),
            ],
        ),
        case(
            "pragma-request-extension",
            Check,
            vec![
                r().rh(CC, "max-age=3600").setup(),
                r().qh("Pragma", "unrecognised-extension").expect(Cached),
            ],
        ),
        case(
            "pragma-response-no-cache",
            Check,
            vec![
                r().rh(CC, "max-age=3600").rh("Pragma", "no-cache").setup(),
                r().expect(Cached),
            ],
        ),
        case(
            "pragma-response-no-cache-heuristic",
            Check,
            vec![
                r().rh("Date", 0)
                    .rh("Last-Modified", -10000)
                    .rh("Pragma", "no-cache")
                    .setup(),
                r().expect(Cached),
            ],
        ),
        case(
            "pragma-response-extension",
            Check,
            vec![
                r().rh(CC, "max-age=3600")
                    .rh("Pragma", "unrecognised-extension")
                    .setup(),
                r().expect(Cached),
            ],
        ),
    ]
}

pub(crate) fn cc_stale() -> Vec<Case> {
    vec![
        case(
            "stale-while-revalidate",
            Optimal,
            vec![
                r().rh(CC, "max-age=0, stale-while-revalidate=3600")
                    .rh("ETag", "\"abc\"")
                    .setup(),
                r().pause()
                    .erh(CC, "max-age=0, stale-while-revalidate=3600")
                    .erh("ETag", "\"abc\"")
                    .rhu(CC, "max-age=3600")
                    .rhu("ETag", "\"def\""),
                r().expect(Cached)
                    .erh(CC, "max-age=3600")
                    .erh("ETag", "\"def\""),
            ],
        ),
        case(
            "stale-if-error-cc-response",
            Check,
            vec![
                r().rh(CC, "max-age=0, stale-if-error=3600").setup(),
                r().status(500).expect_status(200),
            ],
        ),
        case(
            "stale-if-error-cc-response-expired",
            Required,
            vec![
                r().rh(CC, "max-age=0, stale-if-error=1").setup().pause(),
                r().status(500),
            ],
        ),
        case(
            "stale-if-error-cc-request",
            Check,
            vec![
                r().rh(CC, "max-age=0").setup(),
                r().qh(CC, "stale-if-error=3600")
                    .status(500)
                    .expect_status(200),
            ],
        ),
        case(
            "stale-if-error-cc-request-expired",
            Required,
            vec![
                r().rh(CC, "max-age=0").setup().pause(),
                r().qh(CC, "stale-if-error=1").status(500),
            ],
        ),
    ]
}

pub(crate) fn stale() -> Vec<Case> {
    let prohibited = |id, cc: &str| {
        case(
            id,
            Required,
            vec![
                r().rh(CC, format!("max-age=2, {cc}")).setup().pause(),
                r().disconnect()
                    .any_status()
                    .no_body_check()
                    .missing("server-request-count"),
            ],
        )
    };
    vec![
        case(
            "stale-close",
            Check,
            vec![become_stale(r()), r().disconnect().expect(Cached)],
        ),
        case(
            "stale-503",
            Check,
            vec![
                become_stale(r()),
                r().status(503).expect_status(200).expect(Cached),
            ],
        ),
        case(
            "stale-while-revalidate",
            Optimal,
            vec![
                r().rh(CC, "max-age=1, stale-while-revalidate=3600")
                    .rh("ETag", "\"abc\"")
                    .setup()
                    .pause(),
                r().expect(Cached),
            ],
        ),
        case(
            "stale-while-revalidate-window",
            Required,
            vec![
                r().rh(CC, "max-age=1, stale-while-revalidate=4")
                    .rh("ETag", "\"abc\"")
                    .setup()
                    .pause(),
                r().rhu(CC, "no-cache")
                    .rhu("ETag", "\"def\"")
                    .expect(Cached)
                    .setup()
                    .pause(),
                r().erh("client-request-count", "3"),
            ],
        ),
        case(
            "stale-sie-close",
            Check,
            vec![
                r().rh(CC, "max-age=2, stale-if-error=60").setup().pause(),
                r().disconnect().expect(Cached),
            ],
        ),
        prohibited("stale-close-must-revalidate", "must-revalidate"),
        prohibited("stale-close-proxy-revalidate", "proxy-revalidate"),
        prohibited("stale-close-no-cache", "no-cache"),
        prohibited("stale-close-s-maxage=2", "s-maxage=2"),
        case(
            "stale-warning-stored",
            Check,
            vec![
                super::harness::templates::stale(r()),
                r().disconnect()
                    .expect(Cached)
                    .erh_present("warning")
                    .setup_tests(&["expected_type"]),
            ],
        ),
        case(
            "stale-warning-become",
            Check,
            vec![
                become_stale(r()),
                r().disconnect()
                    .expect(Cached)
                    .erh_present("warning")
                    .setup_tests(&["expected_type"]),
            ],
        ),
    ]
}
