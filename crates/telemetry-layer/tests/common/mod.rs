//! Test helpers: a strict parser of the Prometheus text exposition format (0.0.4), and request helpers.
//!
//! The parser follows the format's grammar, including escaped and brace-containing label values such as
//! `http_route="/users/{id}"`, and fails the test on any line it cannot parse.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub types: HashMap<String, String>,
    pub helps: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        other => other
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value {other:?}")),
    }
}

pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            if let Some(rest) = rest.strip_prefix("TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line has a type");
                assert!(is_name(name, true), "line {n}: bad metric name {name:?}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "line {n}: bad type {kind:?}"
                );
                let previous = out.types.insert(name.to_owned(), kind.to_owned());
                assert!(previous.is_none(), "line {n}: second TYPE for {name}");
            } else if let Some(rest) = rest.strip_prefix("HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                assert!(is_name(name, true), "line {n}: bad metric name {name:?}");
                out.helps.insert(name.to_owned(), help.to_owned());
            }
            continue;
        }
        out.samples.push(parse_sample(line, n));
    }
    for sample in &out.samples {
        let family = family_of(&sample.name, &out.types);
        assert!(
            out.types.contains_key(&family),
            "sample {} has no TYPE line",
            sample.name
        );
    }
    out
}

fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    if types.contains_key(name) {
        return name.to_owned();
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.contains_key(base)
        {
            return base.to_owned();
        }
    }
    name.to_owned()
}

fn parse_sample(line: &str, n: usize) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("line {n}: no value: {line:?}"));
    let name = &line[..name_end];
    assert!(is_name(name, true), "line {n}: bad metric name {name:?}");
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            // label name
            let start = chars.peek().map(|(i, _)| *i).expect("unterminated labels");
            if after[start..].starts_with('}') {
                chars.next();
                rest = &after[start + 1..];
                break;
            }
            let eq = after[start..].find('=').expect("label without =") + start;
            let label = &after[start..eq];
            assert!(is_name(label, false), "line {n}: bad label name {label:?}");
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            assert_eq!(
                chars.next().map(|(_, c)| c),
                Some('"'),
                "line {n}: label value must be quoted"
            );
            let mut value = String::new();
            loop {
                match chars
                    .next()
                    .unwrap_or_else(|| panic!("line {n}: unterminated label value"))
                {
                    (_, '\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("line {n}: bad escape {other:?}"),
                    },
                    (_, '"') => break,
                    (_, c) => value.push(c),
                }
            }
            assert!(
                labels.insert(label.to_owned(), value).is_none(),
                "line {n}: duplicate label {label}"
            );
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => {
                    rest = &after[i + 1..];
                    break;
                }
                other => panic!("line {n}: expected , or }} after label value, got {other:?}"),
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(
        fields
            .next()
            .unwrap_or_else(|| panic!("line {n}: no value")),
    );
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .unwrap_or_else(|_| panic!("line {n}: bad timestamp {ts:?}"));
    }
    assert!(fields.next().is_none(), "line {n}: trailing garbage");
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

impl Exposition {
    /// The value of the sample with exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// Every sample of a name.
    pub fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}
