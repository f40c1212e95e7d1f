//! conditional-etag, conditional-lm, headers, update304 and update-head.

use super::harness::Kind::{Check, Optimal, Required};
use super::harness::Type::{Cached, EtagValidated, LmValidated};
use super::harness::templates::{become_stale, fresh};
use super::harness::{Case, ReqSpec, case, r};

const CC: &str = "Cache-Control";

pub(crate) fn conditional() -> Vec<Case> {
    let respond = |id, kind, etag: &str, inm: &str| {
        case(
            id,
            kind,
            vec![
                fresh(r().rh("ETag", etag)),
                r().qh("If-None-Match", inm)
                    .expect(Cached)
                    .expect_status(304),
            ],
        )
    };
    let generate = |id, kind, etag: &str, expected: &str| {
        case(
            id,
            kind,
            vec![
                become_stale(r().rh("ETag", etag)),
                r().ereq("If-None-Match", expected).expect(EtagValidated),
            ],
        )
    };
    let lm = |id, ims: i64, then, status| {
        case(
            id,
            Optimal,
            vec![
                r().rh(
                    CC,
                    if then == Cached {
                        "max-age=100000"
                    } else {
                        "max-age=2"
                    },
                )
                .rh("Last-Modified", -3000)
                .rh("Date", 0)
                .setup()
                .pause(),
                r().qh("If-Modified-Since", ims)
                    .expect(then)
                    .expect_status(status),
            ],
        )
    };
    vec![
        respond(
            "conditional-etag-strong-respond",
            Optimal,
            "\"abcdef\"",
            "\"abcdef\"",
        ),
        case(
            "conditional-304-etag",
            Required,
            vec![
                fresh(r().rh("ETag", "\"abcdef\"")),
                r().qh("If-None-Match", "\"abcdef\"")
                    .expect(Cached)
                    .expect_status(304)
                    .erh("ETag", "\"abcdef\""),
            ],
        ),
        case(
            "conditional-etag-precedence",
            Required,
            vec![
                fresh(r().rh("Last-Modified", -5000).rh("ETag", "\"abcdef\"")),
                r().qh("If-None-Match", "\"abcdef\"")
                    .qh("If-Modified-Since", -1)
                    .expect(Cached)
                    .expect_status(304),
            ],
        ),
        respond(
            "conditional-etag-quoted-respond-unquoted",
            Check,
            "\"abcdef\"",
            "abcdef",
        ),
        respond(
            "conditional-etag-unquoted-respond-unquoted",
            Check,
            "abcdef",
            "abcdef",
        ),
        respond(
            "conditional-etag-unquoted-respond-quoted",
            Check,
            "abcdef",
            "\"abcdef\"",
        ),
        respond(
            "conditional-etag-weak-respond",
            Optimal,
            "W/\"abcdef\"",
            "W/\"abcdef\"",
        ),
        respond(
            "conditional-etag-weak-respond-lowercase",
            Check,
            "w/\"abcdef\"",
            "w/\"abcdef\"",
        ),
        respond(
            "conditional-etag-weak-respond-backslash",
            Check,
            "W\\\"abcdef\"",
            "W\\\"abcdef\"",
        ),
        respond(
            "conditional-etag-weak-respond-omit-slash",
            Check,
            "W\"abcdef\"",
            "W\"abcdef\"",
        ),
        respond(
            "conditional-etag-strong-respond-multiple-first",
            Optimal,
            "\"abcdef\"",
            "\"abcdef\", \"1234\", \"5678\"",
        ),
        respond(
            "conditional-etag-strong-respond-multiple-second",
            Optimal,
            "\"abcdef\"",
            "\"1234\", \"abcdef\", \"5678\"",
        ),
        respond(
            "conditional-etag-strong-respond-multiple-last",
            Optimal,
            "\"abcdef\"",
            "\"1234\", \"5678\", \"abcdef\"",
        ),
        case(
            "conditional-etag-vary-headers",
            Required,
            vec![
                r().qh("Abc", "123")
                    .rh("Expires", 1)
                    .rh("ETag", "\"abcdef\"")
                    .rh("Date", 0)
                    .rh("Vary", "Abc")
                    .setup()
                    .pause(),
                r().qh("Abc", "123")
                    .expect(EtagValidated)
                    .ereq("Abc", "123")
                    .setup_tests(&["expected_type"]),
            ],
        ),
        case(
            "conditional-etag-vary-headers-mismatch",
            Check,
            vec![
                r().qh("Abc", "123")
                    .rh("Expires", 10000)
                    .rh("ETag", "\"abcdef\"")
                    .rh("Date", 0)
                    .rh("Vary", "Abc")
                    .setup()
                    .pause(),
                r().qh("Abc", "456").ereq("If-None-Match", "\"abcdef\""),
            ],
        ),
        generate(
            "conditional-etag-strong-generate",
            Optimal,
            "\"abcdef\"",
            "\"abcdef\"",
        ),
        generate(
            "conditional-etag-weak-generate-weak",
            Optimal,
            "W/\"abcdef\"",
            "W/\"abcdef\"",
        ),
        generate(
            "conditional-etag-strong-generate-unquoted",
            Check,
            "abcdef",
            "\"abcdef\"",
        ),
        case(
            "conditional-etag-forward",
            Check,
            vec![
                r().qh("If-None-Match", "\"abcdef\"")
                    .ereq("If-None-Match", "\"abcdef\""),
            ],
        ),
        case(
            "conditional-etag-forward-unquoted",
            Check,
            vec![
                r().qh("If-None-Match", "abcdef")
                    .ereq("If-None-Match", "\"abcdef\""),
            ],
        ),
        lm("conditional-lm-fresh", -3000, Cached, 304),
        lm("conditional-lm-fresh-earlier", -2000, Cached, 304),
        lm("conditional-lm-stale", -3000, LmValidated, 304),
    ]
}

/// The suite's header list: name, stored value, value in a later `304`, and how the cache
/// must treat the field (`Some(true)`: must update, `Some(false)`: must not, `None`: check).
struct HeaderConfig {
    name: &'static str,
    a: &'static str,
    b: &'static str,
    no_store: bool,
    update: Option<bool>,
    check_body: bool,
}

const fn h(name: &'static str, a: &'static str, b: &'static str) -> HeaderConfig {
    HeaderConfig {
        name,
        a,
        b,
        no_store: false,
        update: None,
        check_body: true,
    }
}

const fn must_update(mut c: HeaderConfig) -> HeaderConfig {
    c.update = Some(true);
    c
}

const fn not_stored(name: &'static str) -> HeaderConfig {
    let mut c = h(name, "value-a", "value-b");
    c.no_store = true;
    c
}

fn header_list() -> Vec<HeaderConfig> {
    let mut content_length = h("Content-Length", "5", "10");
    content_length.update = Some(false);
    content_length.check_body = false;
    vec![
        must_update(h("Test-Header", "test-value-a", "test-value-b")),
        must_update(h("X-Test-Header", "x-test-value-a", "x-test-value-b")),
        must_update(h("Content-Foo", "foo-value-a", "foo-value-b")),
        must_update(h("X-Content-Foo", "x-foo-value-a", "x-foo-value-b")),
        must_update(h("Cache-Control", "max-age=1", "max-age=3600")),
        not_stored("Connection"),
        h("Content-Encoding", "encoding-a", "encoding-b"),
        content_length,
        h("Content-Location", "/foo", "/bar"),
        h(
            "Content-MD5",
            "rL0Y20zC+Fzt72VPzMSk2A==",
            "N7UdGUp1E+RbVvZSTy1R8g==",
        ),
        h("Content-Range", "bytes 0-0/1", "bytes 0-0/2"),
        h(
            "Content-Security-Policy",
            "default-src 'self'",
            "default-src 'self' cdn.example.com",
        ),
        h("Content-Type", "text/plain", "text/plain;charset=utf-8"),
        h("Clear-Site-Data", "cache", "cookies"),
        h("ETag", "\"abcdef\"", "\"ghijkl\""),
        h(
            "Expires",
            "Fri, 01 Jan 2038 01:01:01 GMT",
            "Mon, 11 Jan 2038 11:11:11 GMT",
        ),
        not_stored("Keep-Alive"),
        not_stored("Proxy-Authenticate"),
        not_stored("Proxy-Authentication-Info"),
        not_stored("Proxy-Authorization"),
        not_stored("Proxy-Connection"),
        h("Public-Key-Pins", "pins-a", "pins-b"),
        h("Set-Cookie", "a=b", "a=c"),
        h("Set-Cookie2", "a=b", "a=c"),
        not_stored("TE"),
        not_stored("Upgrade"),
        h("X-Frame-Options", "deny", "sameorigin"),
        h("X-XSS-Protection", "1", "1; mode=block"),
    ]
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// A body as long as a configured `Content-Length`, so the origin's framing stays valid.
fn sized_body(req: ReqSpec, c: &HeaderConfig, value: &str) -> ReqSpec {
    if c.name == "Content-Length" {
        let n: usize = value.parse().unwrap_or(0);
        req.body(&"x".repeat(n))
    } else {
        req
    }
}

pub(crate) fn headers() -> Vec<Case> {
    let mut cases = vec![case(
        "headers-omit-headers-listed-in-Connection",
        Required,
        vec![
            fresh(r())
                .rhu("Connection", "a, b")
                .rhu("a", "1")
                .rhu("b", "2")
                .rhu("c", "3"),
            r().expect(Cached)
                .erh("c", "3")
                .missing("a")
                .missing("b")
                .setup_tests(&["expected_type", "expected_response_headers"]),
        ],
    )];
    for c in header_list() {
        let value = c.b;
        let mut first = r().rh("Date", 0);
        first = if c.no_store {
            first.rhu(c.name, value)
        } else {
            first.rh(c.name, value)
        };
        if c.name != "Cache-Control" {
            first = first.rh(CC, "max-age=3600");
        }
        first = sized_body(first.setup().pause(), &c, value);
        let mut second = r().expect(Cached).setup_tests(&["expected_type"]);
        second = if c.no_store {
            second.missing(c.name)
        } else {
            second.erh(c.name, value)
        };
        second = sized_body(second, &c, value);
        if !c.check_body {
            first = first.no_body_check();
            second = second.no_body_check();
        }
        cases.push(case(
            leak(format!("headers-store-{}", c.name)),
            Required,
            vec![first, second],
        ));
    }
    cases
}

pub(crate) fn update304() -> Vec<Case> {
    const LM: &str = "Wed, 01 Jan 2020 00:00:00 GMT";
    let mut cases = vec![case(
        "304-lm-use-stored-Test-Header",
        Required,
        vec![
            r().rh(CC, "max-age=2")
                .rh("Last-Modified", LM)
                .rh("Date", 0)
                .rh("Test-Header", "stored-value")
                .setup()
                .pause(),
            r().rh("Last-Modified", LM)
                .rh("Date", 0)
                .expect(LmValidated)
                .erh("Test-Header", "stored-value")
                .setup_tests(&["expected_type"]),
        ],
    )];
    for c in header_list() {
        if c.no_store {
            continue;
        }
        let expected = if c.update == Some(false) { c.a } else { c.b };
        let kind = match c.update {
            Some(_) => Required,
            None => Check,
        };
        let etag = format!("\"{}-etag-1\"", c.name);
        let response = |value: &str, validator: bool| {
            let mut req = r().rh("Date", 0);
            req = if c.update == Some(false) {
                req.rhu(c.name, value)
            } else {
                req.rh(c.name, value)
            };
            if c.name != "Cache-Control" {
                req = req.rh(CC, "max-age=2");
            }
            if validator && c.name != "ETag" {
                req = req.rh("ETag", etag.as_str());
            }
            req
        };
        let mut reqs = vec![
            sized_body(response(c.a, true).setup().pause(), &c, c.a),
            sized_body(
                response(c.b, true)
                    .expect(EtagValidated)
                    .setup_tests(&["expected_type"])
                    .erh(c.name, expected),
                &c,
                c.a,
            ),
            sized_body(
                response(expected, false)
                    .expect(Cached)
                    .setup_tests(&["expected_type"])
                    .erh(c.name, expected),
                &c,
                c.a,
            ),
        ];
        if !c.check_body {
            reqs = reqs.into_iter().map(ReqSpec::no_body_check).collect();
        }
        cases.push(case(
            leak(format!("304-etag-update-response-{}", c.name)),
            kind,
            reqs,
        ));
    }
    cases
}

pub(crate) fn update_head() -> Vec<Case> {
    let head = || r().method("HEAD").expected_method("HEAD");
    vec![
        case("head-writethrough", Check, vec![become_stale(r()), head()]),
        case(
            "head-200-retain",
            Check,
            vec![become_stale(r()), head().erh("Template-A", "1")],
        ),
        case(
            "head-200-freshness-update",
            Check,
            vec![
                become_stale(r()),
                head().rh(CC, "max-age=1000"),
                r().expect(Cached),
            ],
        ),
        case(
            "head-200-update",
            Check,
            vec![
                become_stale(r()),
                head().rh("Template-A", "2").rh(CC, "max-age=1000"),
                r().expect(Cached)
                    .setup_tests(&["expected_type"])
                    .erh("Template-A", "2"),
            ],
        ),
        case(
            "head-410-update",
            Check,
            vec![
                become_stale(r()),
                head()
                    .status(410)
                    .rh("Template-A", "2")
                    .rh(CC, "max-age=1000"),
                r().expect(Cached)
                    .setup_tests(&["expected_type"])
                    .erh("Template-A", "2"),
            ],
        ),
    ]
}
