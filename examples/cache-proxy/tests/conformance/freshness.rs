//! cc-freshness, cc-parse, age-parse, expires-freshness, expires-parse and heuristic-freshness.

use super::harness::Kind::{Check, Optimal, Required};
use super::harness::Type::{Cached, NotCached};
use super::harness::templates::become_stale;
use super::harness::{Case, Kind, Type, case, r};

const CC: &str = "Cache-Control";

/// A stored response with one `Cache-Control` value, three seconds, then a second request.
fn cc(id: &'static str, kind: Kind, value: &str, then: Type) -> Case {
    case(
        id,
        kind,
        vec![r().rh(CC, value).setup().pause(), r().expect(then)],
    )
}

/// As [`cc`], the value not checked on the response (the suite's `false` flag).
fn ccu(id: &'static str, kind: Kind, value: &str, then: Type) -> Case {
    case(
        id,
        kind,
        vec![r().rhu(CC, value).setup().pause(), r().expect(then)],
    )
}

pub(crate) fn cc_freshness() -> Vec<Case> {
    vec![
        case(
            "freshness-none",
            Check,
            vec![r().setup().pause(), r().expect(NotCached)],
        ),
        cc("freshness-max-age", Optimal, "max-age=3600", Cached),
        case(
            "freshness-max-age-stale",
            Required,
            vec![become_stale(r()), r().expect(NotCached)],
        ),
        cc("freshness-max-age-0", Required, "max-age=0", NotCached),
        cc(
            "freshness-max-age-max-minus-1",
            Optimal,
            "max-age=2147483647",
            Cached,
        ),
        cc(
            "freshness-max-age-max",
            Optimal,
            "max-age=2147483648",
            Cached,
        ),
        cc(
            "freshness-max-age-max-plus-1",
            Optimal,
            "max-age=2147483649",
            Cached,
        ),
        cc(
            "freshness-max-age-max-plus",
            Optimal,
            "max-age=99999999999",
            Cached,
        ),
        case(
            "freshness-max-age-age",
            Required,
            vec![
                r().rh("Date", 0)
                    .rh(CC, "max-age=3600")
                    .rh("Age", "7200")
                    .setup()
                    .pause(),
                r().expect(NotCached),
            ],
        ),
        case(
            "freshness-max-age-date",
            Check,
            vec![
                r().rh("Date", -7200).rh(CC, "max-age=3600").setup().pause(),
                r().expect(NotCached),
            ],
        ),
        case(
            "freshness-max-age-expires",
            Optimal,
            vec![
                r().rh(CC, "max-age=3600")
                    .rh("Expires", -7200)
                    .rh("Date", 0)
                    .setup()
                    .pause(),
                r().expect(Cached),
            ],
        ),
        case(
            "freshness-max-age-expires-invalid",
            Optimal,
            vec![
                r().rh(CC, "max-age=3600")
                    .rhu("Expires", "0")
                    .rh("Date", 0)
                    .setup()
                    .pause(),
                r().expect(Cached),
            ],
        ),
        case(
            "freshness-max-age-0-expires",
            Required,
            vec![
                r().rh("Expires", 3600)
                    .rh(CC, "max-age=0")
                    .rh("Date", 0)
                    .setup()
                    .pause(),
                r().expect(NotCached),
            ],
        ),
        cc(
            "freshness-max-age-extension",
            Optimal,
            "foobar, max-age=3600",
            Cached,
        ),
        cc(
            "freshness-max-age-case-insenstive",
            Optimal,
            "MaX-aGe=3600",
            Cached,
        ),
        cc(
            "freshness-max-age-negative",
            Required,
            "max-age=-3600",
            NotCached,
        ),
        cc(
            "freshness-s-maxage-shared",
            Required,
            "s-maxage=3600",
            Cached,
        ),
        cc(
            "freshness-max-age-s-maxage-shared-longer",
            Required,
            "max-age=3600, s-maxage=1",
            NotCached,
        ),
        cc(
            "freshness-max-age-s-maxage-shared-longer-reversed",
            Required,
            "s-maxage=1, max-age=3600",
            NotCached,
        ),
        case(
            "freshness-max-age-s-maxage-shared-longer-multiple",
            Required,
            vec![
                r().rh(CC, "max-age=3600")
                    .rh(CC, "s-maxage=1")
                    .setup()
                    .pause(),
                r().expect(NotCached),
            ],
        ),
        cc(
            "freshness-max-age-s-maxage-shared-shorter",
            Optimal,
            "max-age=1, s-maxage=3600",
            Cached,
        ),
        case(
            "freshness-max-age-s-maxage-shared-shorter-expires",
            Optimal,
            vec![
                r().rh("Expires", -10)
                    .rh(CC, "max-age=0, s-maxage=3600")
                    .setup()
                    .pause(),
                r().expect(Cached),
            ],
        ),
    ]
}

pub(crate) fn cc_parse() -> Vec<Case> {
    let two_lines = |id, a: &str, b: &str| {
        case(
            id,
            Check,
            vec![
                r().rhu(CC, a).rhu(CC, b).setup().pause(),
                r().expect(Cached),
            ],
        )
    };
    vec![
        ccu(
            "freshness-max-age-two-fresh-stale-sameline",
            Check,
            "max-age=1800, max-age=1",
            Cached,
        ),
        two_lines(
            "freshness-max-age-two-fresh-stale-sepline",
            "max-age=1800",
            "max-age=1",
        ),
        ccu(
            "freshness-max-age-two-stale-fresh-sameline",
            Check,
            "max-age=1, max-age=1800",
            Cached,
        ),
        two_lines(
            "freshness-max-age-two-stale-fresh-sepline",
            "max-age=1",
            "max-age=1800",
        ),
        ccu(
            "freshness-max-age-quoted",
            Check,
            "max-age=\"3600\"",
            Cached,
        ),
        ccu(
            "freshness-max-age-ignore-quoted",
            Required,
            "extension=\"max-age=3600\", max-age=1",
            NotCached,
        ),
        ccu(
            "freshness-max-age-ignore-quoted-rev",
            Required,
            "max-age=1, extension=\"max-age=3600\"",
            NotCached,
        ),
        ccu(
            "freshness-max-age-space-before-equals",
            Check,
            "max-age =3600",
            NotCached,
        ),
        ccu(
            "freshness-max-age-space-after-equals",
            Check,
            "max-age= 3600",
            NotCached,
        ),
        ccu(
            "freshness-max-age-leading-zero",
            Required,
            "max-age=003600",
            Cached,
        ),
        ccu(
            "freshness-max-age-single-quoted",
            Required,
            "max-age='3600'",
            NotCached,
        ),
        ccu(
            "freshness-max-age-decimal-zero",
            Check,
            "max-age=3600.0",
            Cached,
        ),
        ccu(
            "freshness-max-age-decimal-five",
            Check,
            "max-age=3600.5",
            Cached,
        ),
        ccu("freshness-max-age-a100", Check, "max-age=a3600", Cached),
        ccu("freshness-max-age-100a", Check, "max-age=3600a", Cached),
    ]
}

pub(crate) fn age_parse() -> Vec<Case> {
    let age = |id, kind, max_age: &str, ages: &[&str], then| {
        let mut first = r().rh("Date", 0).rh(CC, max_age);
        for a in ages {
            first = first.rhu("Age", *a);
        }
        case(id, kind, vec![first.setup().pause(), r().expect(then)])
    };
    let m = "max-age=3600";
    vec![
        age("age-parse-nonnumeric", Required, m, &["abc"], Cached),
        age("age-parse-negative", Required, m, &["-7200"], Cached),
        age("age-parse-float", Required, m, &["7200.0"], Cached),
        age(
            "age-parse-large-minus-one",
            Required,
            m,
            &["2147483647"],
            NotCached,
        ),
        age("age-parse-large", Required, m, &["2147483648"], NotCached),
        age("age-parse-larger", Required, m, &["2147483649"], NotCached),
        age("age-parse-suffix", Required, m, &["7200, 0"], NotCached),
        age("age-parse-prefix", Required, m, &["0, 7200"], Cached),
        age(
            "age-parse-suffix-twoline",
            Required,
            m,
            &["7200", "0"],
            NotCached,
        ),
        age(
            "age-parse-prefix-twoline",
            Required,
            m,
            &["0", "7200"],
            Cached,
        ),
        age("age-parse-dup-0", Required, m, &["0, 0"], Cached),
        age("age-parse-dup-0-twoline", Required, m, &["0", "0"], Cached),
        age(
            "age-parse-dup-old",
            Required,
            "max-age=10000",
            &["3600", "3600"],
            Cached,
        ),
        age(
            "age-parse-parameter",
            Check,
            m,
            &["7200;foo=bar"],
            NotCached,
        ),
        age(
            "age-parse-numeric-parameter",
            Check,
            m,
            &["7200;foo=111"],
            NotCached,
        ),
    ]
}

pub(crate) fn expires() -> Vec<Case> {
    let exp = |id, kind, first: super::harness::ReqSpec, then| {
        case(id, kind, vec![first.setup(), r().expect(then)])
    };
    vec![
        exp(
            "freshness-expires-future",
            Optimal,
            r().rh("Expires", 30 * 24 * 3600).rh("Date", 0).pause(),
            Cached,
        ),
        exp(
            "freshness-expires-past",
            Required,
            r().rh("Expires", -30 * 24 * 3600).rh("Date", 0).pause(),
            NotCached,
        ),
        exp(
            "freshness-expires-present",
            Required,
            r().rh("Expires", 0).rh("Date", 0),
            NotCached,
        ),
        exp(
            "freshness-expires-old-date",
            Required,
            r().rh("Expires", 300).rh("Date", 400).pause(),
            NotCached,
        ),
        exp(
            "freshness-expires-invalid",
            Required,
            r().rhu("Expires", "0").rh("Date", 0).pause(),
            NotCached,
        ),
        exp(
            "freshness-expires-invalid-date",
            Optimal,
            r().rhu("Date", "foo").rh("Expires", 10),
            Cached,
        ),
        exp(
            "freshness-expires-age-slow-date",
            Required,
            r().rh("Date", -10).rh("Expires", 10).rh("Age", "25"),
            NotCached,
        ),
        exp(
            "freshness-expires-age-fast-date",
            Required,
            r().rh("Date", 10).rh("Expires", 20).rh("Age", "15"),
            NotCached,
        ),
    ]
}

pub(crate) fn expires_parse() -> Vec<Case> {
    let exp = |id, kind, value: &str, pause: bool, then| {
        let mut first = r().rhu("Expires", value).rh("Date", 0).setup();
        if pause {
            first = first.pause();
        }
        case(id, kind, vec![first, r().expect(then)])
    };
    vec![
        exp(
            "freshness-expires-32bit",
            Optimal,
            "Tue, 19 Jan 2038 14:14:08 GMT",
            true,
            Cached,
        ),
        exp(
            "freshness-expires-far-future",
            Optimal,
            "Sun, 21 Nov 2286 04:46:39 GMT",
            true,
            Cached,
        ),
        exp(
            "freshness-expires-rfc850",
            Optimal,
            "Thursday, 18-Aug-50 02:01:18 GMT",
            true,
            Cached,
        ),
        exp(
            "freshness-expires-ansi-c",
            Optimal,
            "Thu Aug  8 02:01:18 2050",
            true,
            Cached,
        ),
        exp(
            "freshness-expires-wrong-case-weekday",
            Optimal,
            "THU, 18 Aug 2050 02:01:18 GMT",
            true,
            Cached,
        ),
        exp(
            "freshness-expires-wrong-case-month",
            Optimal,
            "Thu, 18 AUG 2050 02:01:18 GMT",
            true,
            Cached,
        ),
        exp(
            "freshness-expires-wrong-case-tz",
            Optimal,
            "Thu, 18 Aug 2050 02:01:18 gMT",
            true,
            Cached,
        ),
        exp(
            "freshness-expires-invalid-utc",
            Required,
            "Thu, 18 Aug 2050 02:01:18 UTC",
            true,
            NotCached,
        ),
        exp(
            "freshness-expires-invalid-aest",
            Required,
            "Thu, 18 Aug 2050 02:01:18 AEST",
            true,
            NotCached,
        ),
        exp(
            "freshness-expires-invalid-2-digit-year",
            Required,
            "Thu, 18 Aug 50 02:01:18 GMT",
            true,
            NotCached,
        ),
        exp(
            "freshness-expires-invalid-no-comma",
            Required,
            "Thu 18 Aug 2050 02:01:18 GMT",
            true,
            NotCached,
        ),
        exp(
            "freshness-expires-invalid-multiple-spaces",
            Required,
            "Thu, 18  Aug  2050 02:01:18 GMT",
            false,
            NotCached,
        ),
        exp(
            "freshness-expires-invalid-date-dashes",
            Required,
            "Thu, 18-Aug-2050 02:01:18 GMT",
            false,
            NotCached,
        ),
        exp(
            "freshness-expires-invalid-time-periods",
            Required,
            "Thu, 18 Aug 2050 02.01.18 GMT",
            false,
            NotCached,
        ),
        exp(
            "freshness-expires-invalid-1-digit-hour",
            Required,
            "Thu, 18 Aug 2050 2:01:18 GMT",
            false,
            NotCached,
        ),
        case(
            "freshness-expires-invalid-multiple-lines",
            Required,
            vec![
                r().rhu("Expires", "Thu, 18 Aug 2050 2:01:18 GMT")
                    .rhu("Expires", "Thu, 18 Aug 2050 2:01:19 GMT")
                    .rh("Date", 0)
                    .setup(),
                r().expect(NotCached),
            ],
        ),
    ]
}

pub(crate) fn heuristic() -> Vec<Case> {
    let statuses: [(bool, u16, &'static str, Option<&str>); 16] = [
        (true, 200, "heuristic-200-cached", None),
        (false, 201, "heuristic-201-not_cached", None),
        (false, 202, "heuristic-202-not_cached", None),
        (true, 203, "heuristic-203-cached", None),
        (true, 204, "heuristic-204-cached", None),
        (false, 403, "heuristic-403-not_cached", None),
        (true, 404, "heuristic-404-cached", None),
        (true, 405, "heuristic-405-cached", None),
        (true, 410, "heuristic-410-cached", None),
        (true, 414, "heuristic-414-cached", None),
        (true, 501, "heuristic-501-cached", None),
        (false, 502, "heuristic-502-not_cached", None),
        (false, 503, "heuristic-503-not_cached", None),
        (false, 504, "heuristic-504-not_cached", None),
        (false, 599, "heuristic-599-not_cached", None),
        (true, 599, "heuristic-599-cached", Some("public")),
    ];
    let mut cases: Vec<Case> = statuses
        .into_iter()
        .map(|(succeed, code, id, cc)| {
            let body = code.to_string();
            let mut first = r()
                .status(code)
                .rh("Last-Modified", -24 * 3600)
                .rh("Date", 0)
                .setup();
            if let Some(v) = cc {
                first = first.rh(CC, v);
            }
            let mut second = r().status(code);
            if code != 204 {
                first = first.body(&body);
                second = second.body(&body);
            }
            let (kind, then) = if succeed {
                (Optimal, Cached)
            } else {
                (Required, NotCached)
            };
            case(id, kind, vec![first, second.expect(then)])
        })
        .collect();
    let deltas: [(i64, &'static str); 11] = [
        (5, "heuristic-delta-5"),
        (10, "heuristic-delta-10"),
        (30, "heuristic-delta-30"),
        (60, "heuristic-delta-60"),
        (300, "heuristic-delta-300"),
        (600, "heuristic-delta-600"),
        (1200, "heuristic-delta-1200"),
        (1800, "heuristic-delta-1800"),
        (3600, "heuristic-delta-3600"),
        (3600 * 12, "heuristic-delta-43200"),
        (3600 * 24, "heuristic-delta-86400"),
    ];
    for (delta, id) in deltas {
        cases.push(case(
            id,
            Check,
            vec![
                r().rh("Last-Modified", -delta)
                    .rh("Date", 0)
                    .setup()
                    .pause(),
                r().expect(Cached),
            ],
        ));
    }
    cases
}
