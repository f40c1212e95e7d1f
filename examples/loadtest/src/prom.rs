//! Reads the few series the report needs out of Prometheus text exposition (`GET /metrics`).
//! Only samples are parsed: `name{label="value",...} number`; comments and malformed lines are skipped.

use std::collections::BTreeMap;

/// One sample of a Prometheus text page.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name, with any `_total` suffix as exposed.
    pub name: String,
    /// Labels by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// Parses every sample line of `text`.
///
/// ```
/// let samples = chat_loadtest::prom::parse("# HELP x y\nx_total{tier=\"l1\",outcome=\"hit\"} 3\n");
/// assert_eq!(samples[0].labels["outcome"], "hit");
/// assert_eq!(samples[0].value, 3.0);
/// ```
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// Sum of the samples named `name` whose labels include every `(label, value)` of `filter`.
pub fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            filter
                .iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
        .map(|s| s.value)
        .sum()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].find('}')? + open;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let space = line.find(char::is_whitespace)?;
            (&line[..space], BTreeMap::new(), &line[space..])
        }
    };
    // A timestamp may follow the value; only the value is kept.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

fn parse_labels(mut text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if text.is_empty() {
            return Some(labels);
        }
        let eq = text.find('=')?;
        let key = text[..eq].trim().to_owned();
        let rest = text[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        text = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP cache_requests_total Requests seen by the cache
# TYPE cache_requests_total counter
cache_requests_total{cache_name="chat",tier="l1",outcome="hit"} 90
cache_requests_total{cache_name="chat",tier="l1",outcome="miss"} 10
cache_requests_total{cache_name="chat",tier="l2",outcome="hit"} 4
breaker_transitions_total{breaker="moderation",from="closed",to="open"} 1 1700000000000
chat_db_queries_total 12
weird{a="x\"y\\z"} +Inf
broken{a="x" 1
"#;

    #[test]
    fn parses_names_labels_and_values() {
        let samples = parse(PAGE);
        assert_eq!(samples.len(), 6, "{samples:?}");
        assert_eq!(samples[0].name, "cache_requests_total");
        assert_eq!(samples[0].labels["tier"], "l1");
        assert_eq!(samples[3].value, 1.0, "the timestamp is not the value");
        assert_eq!(samples[4].labels.len(), 0);
        assert_eq!(samples[5].labels["a"], "x\"y\\z");
        assert!(samples[5].value.is_infinite());
    }

    #[test]
    fn sums_by_label_filter() {
        let samples = parse(PAGE);
        assert_eq!(sum(&samples, "cache_requests_total", &[]), 104.0);
        assert_eq!(
            sum(&samples, "cache_requests_total", &[("tier", "l1")]),
            100.0
        );
        assert_eq!(
            sum(&samples, "cache_requests_total", &[("outcome", "hit")]),
            94.0
        );
        assert_eq!(
            sum(&samples, "cache_requests_total", &[("tier", "l3")]),
            0.0
        );
        assert_eq!(sum(&samples, "missing", &[]), 0.0);
    }
}
