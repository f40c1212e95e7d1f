//! The chaos part of the report: what each fault did, what the load met during it, failures by cause with
//! documented refusals apart, and a verdict per guarantee.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::chaos::{ChaosSchedule, FaultRecord, PeriodStats, Refusal};
use crate::load::{ChaosResult, FRESHNESS_BOUND, PostStats, StaleRead};
use crate::report::{VariantReport, Verdict};
use crate::stats::Errors;

/// Examples of lost or duplicated posts and stale reads kept in the report.
const EXAMPLES: usize = 10;

/// Breaker transitions of one instance over the main phase, from its `/metrics`.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceTransitions {
    /// Instance.
    pub instance: String,
    /// `breaker: from -> to` and how many times.
    pub transitions: BTreeMap<String, u64>,
}

/// Peak resident memory of one instance.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceMemory {
    /// Instance.
    pub instance: String,
    /// Peak resident memory (VmHWM) over the whole run, MB (10^6 bytes).
    pub peak_rss_mb: f64,
}

/// Everything the chaos run found.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosReport {
    /// The planned schedule.
    pub schedule: ChaosSchedule,
    /// The faults as they happened, with the evidence that each reached the service.
    pub faults: Vec<FaultRecord>,
    /// The calm lead-in, then each fault with the calm gap after it.
    pub periods: Vec<PeriodStats>,
    /// Requests of the load that completed, resent posts included.
    pub requests: u64,
    /// Of those, answered `2xx`: reads served and posts accepted.
    pub served: u64,
    /// Reads of the load answered `2xx`.
    pub reads_served: u64,
    /// Reads that failed: the load's, the freshness checks' and the final history walk's.
    pub reads_failed: u64,
    /// Posts: first attempts, acknowledgements, refusals, resends.
    pub posts: PostStats,
    /// Documented refusals of posts (`503` or `409` with `Retry-After`), by kind.
    pub refusals: Errors,
    /// Every other failure, by cause.
    pub failures: Errors,
    /// Acknowledged posts missing from an instance's history (counted per instance).
    pub lost: u64,
    /// Posts stored more than once (per instance), plus retries answered `201` with a new id.
    pub duplicated: u64,
    /// Some lost or duplicated posts.
    pub lost_or_duplicated_examples: Vec<String>,
    /// The freshness bound: a first page requested this long after a post's `201` must hold it (or only
    /// newer messages), on every instance.
    pub freshness_bound_ms: u64,
    /// Freshness checks made (one per acknowledged post and instance).
    pub freshness_checks: u64,
    /// First pages served without a post acknowledged over the bound earlier.
    pub stale: u64,
    /// Some of them.
    pub stale_examples: Vec<StaleRead>,
    /// Breaker transitions per instance.
    pub breaker_transitions: Vec<InstanceTransitions>,
    /// Peak memory per instance.
    pub peak_rss: Vec<InstanceMemory>,
    /// Seconds after the main phase until the last refused post was accepted.
    pub resend_drain_s: f64,
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn causes(errors: &Errors) -> String {
    if errors.0.is_empty() {
        "0".to_owned()
    } else {
        errors
            .0
            .iter()
            .map(|(cause, n)| format!("{cause}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl ChaosReport {
    /// Gathers the chaos figures of `variant`, whose main phase ran `schedule` and gave `result`.
    pub fn new(
        schedule: ChaosSchedule,
        result: Option<ChaosResult>,
        variant: &VariantReport,
        transitions: Vec<(String, BTreeMap<String, u64>)>,
    ) -> Self {
        let (faults, periods, resend_drain_s) = match result {
            Some(result) => (result.faults, result.periods, result.resend_drain_s),
            None => (Vec::new(), Vec::new(), 0.0),
        };
        let mut refusals = Errors::default();
        let mut failures = Errors::default();
        for period in &periods {
            refusals.merge(&period.refusals);
            failures.merge(&period.failures);
        }
        for (cause, n) in &variant.freshness.failed.0 {
            failures.add_n(&format!("freshness read {cause}"), *n);
        }
        for (cause, n) in &variant.history_check.failed.0 {
            failures.add_n(&format!("history read {cause}"), *n);
        }
        let reads_served: u64 = periods.iter().map(|p| p.reads_served).sum();
        let posts_accepted: u64 = periods.iter().map(|p| p.posts_accepted).sum();
        let reads_failed = periods.iter().map(|p| p.reads_failed).sum::<u64>()
            + variant.freshness.failed.total()
            + variant.history_check.failed.total();
        let history = &variant.history_check;
        Self {
            schedule,
            requests: periods.iter().map(|p| p.requests).sum(),
            served: reads_served + posts_accepted,
            reads_served,
            reads_failed,
            posts: variant.posts,
            refusals,
            failures,
            lost: history.lost,
            duplicated: history.stored_twice + variant.posts.stored_again,
            lost_or_duplicated_examples: history.examples.iter().take(EXAMPLES).cloned().collect(),
            freshness_bound_ms: u64::try_from(FRESHNESS_BOUND.as_millis()).unwrap_or(u64::MAX),
            freshness_checks: variant.freshness.checks,
            stale: variant.freshness.stale,
            stale_examples: variant
                .freshness
                .stale_examples
                .iter()
                .take(EXAMPLES)
                .cloned()
                .collect(),
            breaker_transitions: transitions
                .into_iter()
                .map(|(instance, transitions)| InstanceTransitions {
                    instance,
                    transitions,
                })
                .collect(),
            peak_rss: variant
                .instances
                .iter()
                .map(|i| InstanceMemory {
                    instance: i.name.clone(),
                    peak_rss_mb: i.peak_rss_mb(),
                })
                .collect(),
            faults,
            periods,
            resend_drain_s,
        }
    }

    /// The guarantees of the chaos run, each with what was measured; `met: Some(false)` when one broke.
    pub fn guarantees(&self) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        let fired = self.faults.iter().filter(|f| f.fired).count();
        let missing: Vec<&str> = self
            .schedule
            .faults
            .iter()
            .filter(|s| !self.faults.iter().any(|f| f.fault == s.fault && f.fired))
            .map(|s| s.fault.name())
            .collect();
        verdicts.push(Verdict::new(
            "every fault reached the service",
            if missing.is_empty() {
                format!(
                    "{fired} of {} faults, each seen in the instances' /metrics (and Redis restarted with a \
                     new pid, seen stopped)",
                    self.schedule.faults.len()
                )
            } else {
                format!("not shown to have happened: {}", missing.join(", "))
            },
            Some(missing.is_empty() && !self.schedule.faults.is_empty()),
        ));
        let load_reads_failed: u64 = self.periods.iter().map(|p| p.reads_failed).sum();
        verdicts.push(Verdict::new(
            "no read failed",
            format!(
                "{} reads served; {} failed ({} of the load, {} freshness and history reads)",
                self.reads_served,
                self.reads_failed,
                load_reads_failed,
                self.reads_failed - load_reads_failed
            ),
            Some(self.reads_failed == 0 && self.reads_served > 0),
        ));
        let post_failures: u64 = self
            .failures
            .0
            .iter()
            .filter(|(cause, _)| cause.starts_with("post"))
            .map(|(_, n)| n)
            .sum();
        verdicts.push(Verdict::new(
            "no post failed other than the documented refusals (503 or 409 with Retry-After)",
            format!(
                "{} refusals ({}); other failures: {}",
                self.refusals.total(),
                causes(&self.refusals),
                causes(&Errors(
                    self.failures
                        .0
                        .iter()
                        .filter(|(cause, _)| cause.starts_with("post"))
                        .map(|(c, n)| (c.clone(), *n))
                        .collect()
                ))
            ),
            Some(post_failures == 0),
        ));
        verdicts.push(Verdict::new(
            "every refused post accepted when sent again with its key",
            format!(
                "{} posts, {} acknowledged; {} resent after a refusal or failure; {} never accepted \
                 (last accepted {:.1} s after the main phase)",
                self.posts.posts,
                self.posts.acked,
                self.posts.resent,
                self.posts.never_accepted,
                self.resend_drain_s
            ),
            Some(self.posts.never_accepted == 0 && self.posts.acked > 0),
        ));
        verdicts.push(Verdict::new(
            "no acknowledged post lost",
            format!(
                "{} of {} acknowledged posts missing from a history (both instances read)",
                self.lost, self.posts.acked
            ),
            Some(self.lost == 0 && self.posts.acked > 0),
        ));
        verdicts.push(Verdict::new(
            "no post stored twice",
            format!(
                "{} stored twice; {} retries of acknowledged posts replayed, {} answered with a new id",
                self.duplicated, self.posts.replayed, self.posts.stored_again
            ),
            Some(self.duplicated == 0),
        ));
        verdicts.push(Verdict::new(
            "no stale read past the freshness bound",
            format!(
                "{} of {} first pages requested {} ms or more after a post's 201 missed it",
                self.stale, self.freshness_checks, self.freshness_bound_ms
            ),
            Some(self.stale == 0 && self.freshness_checks > 0),
        ));
        verdicts
    }

    /// The fault timeline with the load met during each fault and the calm gap after it, markdown.
    pub fn fault_table(&self) -> String {
        let mut out = String::from(
            "| fault | applied / healed (s) | requests (req/s) | reads served / failed | read p99 / max (ms) \
             | posts 201 | documented refusals | failures | fired |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for (i, period) in self.periods.iter().enumerate() {
            let record = i.checked_sub(1).and_then(|f| self.faults.get(f));
            let name = period.fault.map_or_else(
                || "calm lead-in".to_owned(),
                |fault| format!("{i}. {}", fault.name()),
            );
            let window = match record {
                Some(r) => format!("{:.1} / {:.1}", r.start_s, r.end_s),
                None => format!("{:.1} - {:.1}", period.start_s, period.end_s),
            };
            let refusals: Vec<String> = Refusal::ALL
                .iter()
                .filter_map(|r| {
                    period
                        .refusals
                        .0
                        .get(r.name())
                        .map(|n| format!("{}: {n}", r.name()))
                })
                .collect();
            let _ = writeln!(
                out,
                "| {name} | {window} | {} ({:.0}) | {} / {} | {:.1} / {:.0} | {} | {} | {} | {} |",
                period.requests,
                period.rate(),
                period.reads_served,
                period.reads_failed,
                period.read_latency.p99_ms,
                period.read_latency.max_ms,
                period.posts_accepted,
                if refusals.is_empty() {
                    "0".to_owned()
                } else {
                    refusals.join(", ")
                },
                causes(&period.failures),
                match (period.fault, record) {
                    (None, _) => "",
                    (Some(_), Some(r)) if r.fired => "yes",
                    _ => "NO",
                },
            );
        }
        out
    }

    /// What each fault did and the evidence that it reached the service, markdown.
    pub fn evidence_table(&self) -> String {
        let mut out = String::from(
            "| fault | what was done | evidence over its period |\n| --- | --- | --- |\n",
        );
        for (i, record) in self.faults.iter().enumerate() {
            let mut what = record.description.clone();
            if !record.detail.is_empty() {
                what.push_str(&format!(" ({})", record.detail.join("; ")));
            }
            let _ = writeln!(
                out,
                "| {}. {} | {} | {} |",
                i + 1,
                record.fault.name(),
                what.replace('|', "/"),
                record.evidence.replace('|', "/")
            );
        }
        out
    }

    /// Every request that did not get a `2xx`, by cause, refusals marked as documented, markdown.
    pub fn failure_table(&self) -> String {
        let mut out = String::from("| cause | requests | kind |\n| --- | --- | --- |\n");
        for (cause, n) in &self.refusals.0 {
            let _ = writeln!(
                out,
                "| post {cause} | {n} | documented refusal: nothing stored, sent again with its key |"
            );
        }
        for (cause, n) in &self.failures.0 {
            let _ = writeln!(out, "| {cause} | {n} | failure |");
        }
        if self.refusals.0.is_empty() && self.failures.0.is_empty() {
            out.push_str("| none | 0 | |\n");
        }
        out
    }

    /// Breaker transitions and peak memory per instance, one line each.
    pub fn instance_lines(&self) -> Vec<String> {
        self.peak_rss
            .iter()
            .map(|memory| {
                let transitions = self
                    .breaker_transitions
                    .iter()
                    .find(|t| t.instance == memory.instance)
                    .map(|t| {
                        t.transitions
                            .iter()
                            .map(|(name, n)| format!("{name} {}", plural(*n, "time", "times")))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .filter(|text| !text.is_empty())
                    .unwrap_or_else(|| "no breaker transition".to_owned());
                format!(
                    "{}: peak RSS {:.0} MB; {transitions}",
                    memory.instance, memory.peak_rss_mb
                )
            })
            .collect()
    }

    /// The whole chaos section as printed: the timeline, the evidence, failures by cause and the instances.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n## Chaos: faults and the load during each (period = the fault and the calm gap after it)\n"
        );
        out.push_str(&self.fault_table());
        out.push_str("\n## What each fault did\n\n");
        out.push_str(&self.evidence_table());
        let _ = writeln!(
            out,
            "\n## Not served, by cause ({} requests, {} served)\n",
            self.requests, self.served
        );
        out.push_str(&self.failure_table());
        out.push_str("\n## Instances\n\n");
        for line in self.instance_lines() {
            let _ = writeln!(out, "- {line}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::{Fault, FaultCounters, ModerationCounts};
    use crate::report::tests::variant;
    use crate::stack::Variant;
    use std::time::Duration;

    fn chaos_report(fired: bool, lost: u64) -> ChaosReport {
        let schedule = ChaosSchedule::with_faults(
            Duration::from_secs(20),
            &[Fault::RedisKilled, Fault::ModerationErrors],
        );
        let mut variant = variant(Variant::Stacked2, 2, 5, None);
        variant.posts.posts = 10;
        variant.posts.acked = 10;
        variant.freshness.checks = 20;
        variant.history_check.lost = lost;
        let faults = schedule
            .faults
            .iter()
            .map(|s| FaultRecord {
                detail: vec!["done".into()],
                instances: vec![Some(FaultCounters::default())],
                moderation: Some(ModerationCounts::default()),
                fired,
                ..FaultRecord::as_planned(s)
            })
            .collect();
        let mut periods: Vec<PeriodStats> = schedule
            .periods()
            .iter()
            .map(|p| PeriodStats {
                fault: p.fault.map(|f| f.fault),
                start_s: p.start.as_secs_f64(),
                end_s: p.end.as_secs_f64(),
                requests: 100,
                reads_served: 95,
                reads_failed: 0,
                read_latency: Default::default(),
                posts_accepted: 5,
                refusals: Errors::default(),
                failures: Errors::default(),
            })
            .collect();
        periods[1]
            .refusals
            .add_n(Refusal::KeyStoreUnavailable.name(), 7);
        let result = ChaosResult {
            faults,
            periods,
            resend_drain_s: 1.5,
        };
        ChaosReport::new(
            schedule,
            Some(result),
            &variant,
            vec![(
                "chat-service".into(),
                BTreeMap::from([("moderation: closed -> open".into(), 1)]),
            )],
        )
    }

    fn met(report: &ChaosReport, target: &str) -> Option<bool> {
        report
            .guarantees()
            .into_iter()
            .find(|v| v.target.starts_with(target))
            .and_then(|v| v.met)
    }

    #[test]
    fn a_clean_run_meets_every_guarantee() {
        let report = chaos_report(true, 0);
        let verdicts = report.guarantees();
        assert!(verdicts.iter().all(|v| v.met == Some(true)), "{verdicts:?}");
        assert_eq!((report.requests, report.served), (300, 300));
        assert_eq!(report.refusals.total(), 7);
        let text = report.text();
        assert!(
            text.contains("| 1. Redis killed, restarted empty |"),
            "{text}"
        );
        assert!(text.contains("| 2. moderation answers 500 |"), "{text}");
        assert!(
            text.contains("503 idempotency store unreachable: 7"),
            "{text}"
        );
        assert!(text.contains("moderation: closed -> open 1 time"), "{text}");
        assert_eq!(report.fault_table().lines().count(), 2 + 3);
    }

    #[test]
    fn broken_guarantees_and_silent_faults_are_named() {
        let report = chaos_report(false, 2);
        assert_eq!(met(&report, "every fault reached"), Some(false));
        assert_eq!(met(&report, "no acknowledged post lost"), Some(false));
        assert_eq!(met(&report, "no read failed"), Some(true));
        assert!(report.fault_table().contains("| NO |"));
    }

    #[test]
    fn failed_reads_and_posts_are_failures_not_refusals() {
        let mut report = chaos_report(true, 0);
        report.periods[2].failures.add("post status 500");
        report.periods[2].reads_failed = 1;
        report.periods[2].failures.add("read timeout");
        let report = ChaosReport {
            failures: {
                let mut f = Errors::default();
                for p in &report.periods {
                    f.merge(&p.failures);
                }
                f
            },
            reads_failed: 1,
            ..report
        };
        assert_eq!(met(&report, "no read failed"), Some(false));
        assert_eq!(met(&report, "no post failed"), Some(false));
        let table = report.failure_table();
        assert!(
            table.contains("| post status 500 | 1 | failure |"),
            "{table}"
        );
        assert!(table.contains("documented refusal"), "{table}");
    }
}
