//! status, vary and vary-parse.

use super::harness::Kind::{Optimal, Required};
use super::harness::Type::{Cached, NotCached};
use super::harness::templates::{fresh, stale};
use super::harness::{Case, ReqSpec, case, r};

const CC: &str = "Cache-Control";

pub(crate) fn status() -> Vec<Case> {
    let codes: [u16; 18] = [
        200, 203, 204, 299, 301, 302, 303, 307, 308, 400, 404, 410, 499, 500, 502, 503, 504, 599,
    ];
    let ids: [(&'static str, &'static str); 18] = [
        ("status-200-fresh", "status-200-stale"),
        ("status-203-fresh", "status-203-stale"),
        ("status-204-fresh", "status-204-stale"),
        ("status-299-fresh", "status-299-stale"),
        ("status-301-fresh", "status-301-stale"),
        ("status-302-fresh", "status-302-stale"),
        ("status-303-fresh", "status-303-stale"),
        ("status-307-fresh", "status-307-stale"),
        ("status-308-fresh", "status-308-stale"),
        ("status-400-fresh", "status-400-stale"),
        ("status-404-fresh", "status-404-stale"),
        ("status-410-fresh", "status-410-stale"),
        ("status-499-fresh", "status-499-stale"),
        ("status-500-fresh", "status-500-stale"),
        ("status-502-fresh", "status-502-stale"),
        ("status-503-fresh", "status-503-stale"),
        ("status-504-fresh", "status-504-stale"),
        ("status-599-fresh", "status-599-stale"),
    ];
    let mut cases = Vec::new();
    for (code, (fresh_id, stale_id)) in codes.into_iter().zip(ids) {
        let body = format!("status {code}");
        let with_body = |req: ReqSpec| {
            if code == 204 { req } else { req.body(&body) }
        };
        cases.push(case(
            fresh_id,
            Optimal,
            vec![
                with_body(fresh(r().status(code))),
                with_body(r().status(code).expect(Cached)),
            ],
        ));
        cases.push(case(
            stale_id,
            Required,
            vec![
                with_body(stale(r().status(code)).setup()),
                with_body(r().expect(NotCached)),
            ],
        ));
    }
    cases.push(case(
        "status-599-must-understand",
        Required,
        vec![
            r().status(599)
                .rh(CC, "max-age=3600, no-store, must-understand")
                .setup(),
            r().expect(NotCached),
        ],
    ));
    cases.push(case(
        "status-200-must-understand",
        Optimal,
        vec![
            r().rh(CC, "max-age=3600, no-store, must-understand")
                .setup(),
            r().expect(Cached),
        ],
    ));
    cases
}

fn vary_setup(req: ReqSpec, vary: &str, checked: bool) -> ReqSpec {
    let req = req
        .rh(CC, "max-age=5000")
        .rh("Last-Modified", -3000)
        .rh("Date", 0);
    let req = if checked {
        req.rh("Vary", vary)
    } else {
        req.rhu("Vary", vary)
    };
    req.setup()
}

pub(crate) fn vary() -> Vec<Case> {
    let v1 = || vary_setup(r().qh("Foo", "1"), "Foo", true);
    let v2 = || vary_setup(r().qh("Foo", "1").qh("Bar", "abc"), "Foo, Bar", false);
    let v3 = || {
        vary_setup(
            r().qh("Foo", "1").qh("Bar", "abc").qh("Baz", "789"),
            "Foo, Bar, Baz",
            false,
        )
    };
    let single =
        |id, kind, sent: &str, field: &str, extra: Option<(&str, &str)>, then_sent: &str| {
            let mut first = vary_setup(r().qh(field, sent), field, true);
            if let Some((n, v)) = extra {
                first = first.rh(n, v);
            }
            case(
                id,
                kind,
                vec![first, r().qh(field, then_sent).expect(Cached)],
            )
        };
    vec![
        case(
            "vary-match",
            Optimal,
            vec![v1(), r().qh("Foo", "1").expect(Cached)],
        ),
        case(
            "vary-no-match",
            Required,
            vec![v1(), r().qh("Foo", "2").expect(NotCached)],
        ),
        case(
            "vary-omit-stored",
            Required,
            vec![
                vary_setup(r(), "Foo", true),
                r().qh("Foo", "1").expect(NotCached),
            ],
        ),
        case("vary-omit", Required, vec![v1(), r().expect(NotCached)]),
        case(
            "vary-invalidate",
            Optimal,
            vec![
                v1().body("foo_1"),
                vary_setup(r().qh("Foo", "2"), "Foo", true)
                    .expect(NotCached)
                    .body("foo_2"),
                r().qh("Foo", "1").body("foo_1").expect(Cached),
            ],
        ),
        case(
            "vary-cache-key",
            Optimal,
            vec![
                vary_setup(r().qh("Foo", "1").qh("Other", "2"), "Foo", true),
                r().qh("Foo", "1").qh("Other", "3").expect(Cached),
            ],
        ),
        case(
            "vary-2-match",
            Optimal,
            vec![v2(), r().qh("Foo", "1").qh("Bar", "abc").expect(Cached)],
        ),
        case(
            "vary-2-no-match",
            Required,
            vec![v2(), r().qh("Foo", "2").qh("Bar", "abc").expect(NotCached)],
        ),
        case(
            "vary-2-match-omit",
            Required,
            vec![v2(), r().expect(NotCached)],
        ),
        case(
            "vary-3-match",
            Optimal,
            vec![
                v3(),
                r().qh("Foo", "1")
                    .qh("Bar", "abc")
                    .qh("Baz", "789")
                    .expect(Cached),
            ],
        ),
        case(
            "vary-3-no-match",
            Required,
            vec![
                v3(),
                r().qh("Foo", "2")
                    .qh("Bar", "abc")
                    .qh("Baz", "789")
                    .expect(NotCached),
            ],
        ),
        case(
            "vary-3-order",
            Required,
            vec![
                v3(),
                r().qh("Foo", "1")
                    .qh("Baz", "789")
                    .qh("Bar", "abcde")
                    .expect(NotCached),
            ],
        ),
        case(
            "vary-3-omit",
            Optimal,
            vec![
                vary_setup(r().qh("Foo", "1").qh("Baz", "789"), "Foo, Bar, Baz", false),
                r().qh("Foo", "1").qh("Baz", "789").expect(Cached),
            ],
        ),
        case(
            "vary-star",
            Required,
            vec![
                vary_setup(r().qh("Foo", "1").qh("Baz", "789"), "*", true),
                r().qh("Foo", "1").qh("Baz", "789").expect(NotCached),
            ],
        ),
        case(
            "vary-normalise-combine",
            Optimal,
            vec![
                vary_setup(r().qh("Foo", "1, 2"), "Foo", true),
                r().qh("Foo", "1").qh("Foo", "2").expect(Cached),
            ],
        ),
        single(
            "vary-normalise-lang-order",
            Optimal,
            "en, de",
            "Accept-Language",
            None,
            "de, en",
        ),
        single(
            "vary-normalise-lang-case",
            Optimal,
            "en, de",
            "Accept-Language",
            None,
            "eN, De",
        ),
        single(
            "vary-normalise-lang-space",
            Optimal,
            "en, de",
            "Accept-Language",
            None,
            " en ,   de",
        ),
        single(
            "vary-normalise-lang-select",
            Optimal,
            "en, de",
            "Accept-Language",
            Some(("Content-Language", "de")),
            "fr;q=0.5, de;q=1.0",
        ),
        single(
            "vary-normalise-space",
            Optimal,
            "1,2",
            "Foo",
            None,
            " 1, 2 ",
        ),
    ]
}

pub(crate) fn vary_parse() -> Vec<Case> {
    // The suite's template loses its freshness fields here (its `Object.assign` replaces
    // them), which makes these cases pass trivially; they keep `max-age` so `Vary` decides.
    let parse = |id, lines: &[&str]| {
        let mut first = r()
            .qh("Foo", "1")
            .qh("Baz", "789")
            .rh(CC, "max-age=5000")
            .rh("Last-Modified", -3000)
            .rh("Date", 0)
            .setup();
        for l in lines {
            first = first.rhu("Vary", *l);
        }
        case(
            id,
            Required,
            vec![first, r().qh("Foo", "1").qh("Baz", "789").expect(NotCached)],
        )
    };
    vec![
        parse("vary-syntax-star", &["*"]),
        parse("vary-syntax-star-star", &["*, *"]),
        parse("vary-syntax-star-star-lines", &["*", "*"]),
        parse("vary-syntax-empty-star", &[", *"]),
        parse("vary-syntax-empty-star-lines", &["", "*"]),
        parse("vary-syntax-star-foo", &["*, Foo"]),
        parse("vary-syntax-foo-star", &["Foo, *"]),
    ]
}
