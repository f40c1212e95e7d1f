//! What the services say about themselves: `GET /stats` (SQLite query counters, breaker state) and the few
//! `/metrics` series the report uses (cache outcomes, breaker transitions).

use serde::{Deserialize, Serialize};

use crate::client::Http;
use crate::prom;

/// The body of `GET /stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Stats {
    /// Read queries that reached SQLite.
    pub db_queries: u64,
    /// Read queries that started while an identical one was running in the same process.
    pub db_duplicate_queries: u64,
    /// `bare` or `stacked`.
    #[serde(default)]
    pub mode: String,
    /// `closed`, `open` or `half_open`; absent in bare mode.
    #[serde(default)]
    pub breaker_state: Option<String>,
}

impl Stats {
    /// Fetches `{base}/stats`.
    pub async fn fetch(http: &Http, base: &str) -> Result<Self, String> {
        let reply = http
            .get(&format!("{base}/stats"))
            .await
            .map_err(|e| format!("GET {base}/stats: {e}"))?;
        if !reply.status.is_success() {
            return Err(format!("GET {base}/stats answered {}", reply.status));
        }
        serde_json::from_slice(&reply.body).map_err(|e| format!("GET {base}/stats: {e}"))
    }

    /// Counters of `self` minus those of `earlier`.
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            db_queries: self.db_queries.saturating_sub(earlier.db_queries),
            db_duplicate_queries: self
                .db_duplicate_queries
                .saturating_sub(earlier.db_duplicate_queries),
            mode: self.mode.clone(),
            breaker_state: self.breaker_state.clone(),
        }
    }
}

/// Counters read from `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MetricCounters {
    /// Requests the cache answered from storage: `hit` and `stale` outcomes of the in-process tier's series,
    /// which records the cache's answer as a whole (a lower-tier hit counts there as a hit too).
    pub cache_hits: f64,
    /// Requests the cache looked up: in-process tier outcomes except `uncacheable` and `bypass`.
    pub cache_lookups: f64,
    /// State changes of every breaker.
    pub breaker_transitions: f64,
    /// Breaker changes into `open`.
    pub breaker_opened: f64,
    /// Fill leases another instance held that this one waited for (shared tier).
    pub leases_waited: f64,
    /// Waits for another instance's fill that gave up and went to the origin.
    pub leases_gave_up: f64,
}

impl MetricCounters {
    /// Fetches and reads `{base}/metrics`; `None` when the instance has no metrics (bare mode).
    pub async fn fetch(http: &Http, base: &str) -> Option<Self> {
        let reply = http.get(&format!("{base}/metrics")).await.ok()?;
        if !reply.status.is_success() {
            return None;
        }
        Some(Self::from_text(&String::from_utf8_lossy(&reply.body)))
    }

    /// Reads the counters from Prometheus text.
    pub fn from_text(text: &str) -> Self {
        let samples = prom::parse(text);
        let requests = "cache_requests_total";
        let l1 = prom::sum(&samples, requests, &[("tier", "l1")]);
        let skipped = prom::sum(
            &samples,
            requests,
            &[("tier", "l1"), ("outcome", "uncacheable")],
        ) + prom::sum(&samples, requests, &[("tier", "l1"), ("outcome", "bypass")]);
        Self {
            cache_hits: prom::sum(&samples, requests, &[("tier", "l1"), ("outcome", "hit")])
                + prom::sum(&samples, requests, &[("tier", "l1"), ("outcome", "stale")]),
            cache_lookups: l1 - skipped,
            breaker_transitions: prom::sum(&samples, "breaker_transitions_total", &[]),
            breaker_opened: prom::sum(&samples, "breaker_transitions_total", &[("to", "open")]),
            leases_waited: prom::sum(&samples, "cache_leases_total", &[("outcome", "waited")]),
            leases_gave_up: prom::sum(&samples, "cache_leases_total", &[("outcome", "gave_up")]),
        }
    }

    /// Counters of `self` minus those of `earlier`.
    pub fn since(&self, earlier: &MetricCounters) -> MetricCounters {
        MetricCounters {
            cache_hits: self.cache_hits - earlier.cache_hits,
            cache_lookups: self.cache_lookups - earlier.cache_lookups,
            breaker_transitions: self.breaker_transitions - earlier.breaker_transitions,
            breaker_opened: self.breaker_opened - earlier.breaker_opened,
            leases_waited: self.leases_waited - earlier.leases_waited,
            leases_gave_up: self.leases_gave_up - earlier.leases_gave_up,
        }
    }

    /// Hit rate of the lookups, `None` without lookups.
    pub fn hit_rate(&self) -> Option<f64> {
        (self.cache_lookups > 0.0).then(|| self.cache_hits / self.cache_lookups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_counters_from_text() {
        let text = "\
cache_requests_total{tier=\"l1\",outcome=\"hit\"} 80
cache_requests_total{tier=\"l1\",outcome=\"miss\"} 15
cache_requests_total{tier=\"l1\",outcome=\"stale\"} 5
cache_requests_total{tier=\"l1\",outcome=\"bypass\"} 30
cache_requests_total{tier=\"l2\",outcome=\"hit\"} 10
breaker_transitions_total{breaker=\"moderation\",from=\"closed\",to=\"open\"} 1
breaker_transitions_total{breaker=\"moderation\",from=\"open\",to=\"half_open\"} 1
cache_leases_total{outcome=\"waited\"} 7
cache_leases_total{outcome=\"gave_up\"} 2
";
        let counters = MetricCounters::from_text(text);
        assert_eq!(
            counters.cache_hits, 85.0,
            "lower-tier hits are already in the l1 series"
        );
        assert_eq!(counters.cache_lookups, 100.0);
        assert_eq!(counters.hit_rate(), Some(0.85));
        assert_eq!(counters.breaker_transitions, 2.0);
        assert_eq!(counters.breaker_opened, 1.0);
        assert_eq!(
            (counters.leases_waited, counters.leases_gave_up),
            (7.0, 2.0)
        );
        assert_eq!(counters.since(&counters).hit_rate(), None);
    }

    #[test]
    fn stats_body_and_deltas() {
        let before: Stats = serde_json::from_str(
            r#"{"db_queries":10,"db_duplicate_queries":2,"mode":"stacked","breaker_state":"closed"}"#,
        )
        .unwrap();
        let after: Stats = serde_json::from_str(
            r#"{"db_queries":15,"db_duplicate_queries":2,"mode":"bare","breaker_state":null}"#,
        )
        .unwrap();
        let delta = after.since(&before);
        assert_eq!((delta.db_queries, delta.db_duplicate_queries), (5, 0));
        assert_eq!(delta.breaker_state, None);
    }
}
