//! Correctness checks that need the whole picture: the final history of every touched room, and whether a
//! burst of identical GETs for a URL no one asked before reaches SQLite once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Barrier;

use crate::client::Http;
use crate::load::{PostRecord, Target};
use crate::observe::Stats;
use crate::stats::Errors;

/// Page size of the history walk (the service's largest).
const HISTORY_PAGE: u32 = 200;

/// Examples of lost or duplicated posts kept in a result.
const EXAMPLES: usize = 10;

/// Prefix of every post's text; the token follows it.
pub const POST_TEXT_PREFIX: &str = "load test post ";

/// What the full histories showed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HistoryCheck {
    /// Instances whose histories were read.
    pub instances: usize,
    /// Rooms read on each.
    pub rooms: usize,
    /// Messages read in all.
    pub messages_read: u64,
    /// Acknowledged posts looked for.
    pub acked: u64,
    /// Acknowledged posts missing from a history (counted per instance).
    pub lost: u64,
    /// Posts stored more than once (counted per instance).
    pub stored_twice: u64,
    /// Posts never acknowledged (a timeout, a `503`) but stored once: allowed, reported.
    pub stored_unacked: u64,
    /// Some of the tokens lost or stored twice.
    pub examples: Vec<String>,
    /// Pages that could not be read, by cause.
    pub failed: Errors,
}

#[derive(Deserialize)]
struct Page {
    messages: Vec<PageMessage>,
    next_before: Option<i64>,
}

#[derive(Deserialize)]
struct PageMessage {
    text: String,
}

/// Reads the whole history of each room in `rooms` on every target, paginating with `before`, and matches it
/// against the posts of `ledger` by their tokens.
pub async fn verify_history(
    http: &Http,
    targets: &[Target],
    ledger: &[PostRecord],
    rooms: &BTreeSet<u32>,
) -> HistoryCheck {
    let mut check = HistoryCheck {
        instances: targets.len(),
        rooms: rooms.len(),
        acked: ledger.iter().filter(|p| p.acked.is_some()).count() as u64,
        ..HistoryCheck::default()
    };
    for target in targets {
        let mut seen: HashMap<String, u32> = HashMap::new();
        for room in rooms {
            let mut before: Option<i64> = None;
            // A bound on pages so that a service that loops its cursor cannot hang the check.
            for _ in 0..100_000 {
                let mut url = format!(
                    "{}/rooms/room-{room}/messages?limit={HISTORY_PAGE}",
                    target.base
                );
                if let Some(before) = before {
                    url.push_str(&format!("&before={before}"));
                }
                let page = match http.get(&url).await {
                    Ok(reply) if reply.status.is_success() => {
                        serde_json::from_slice::<Page>(&reply.body)
                            .map_err(|_| "unreadable page".to_owned())
                    }
                    Ok(reply) => Err(format!("status {}", reply.status.as_u16())),
                    Err(e) => Err(e.cause().to_owned()),
                };
                let page = match page {
                    Ok(page) => page,
                    Err(cause) => {
                        check.failed.add(&cause);
                        break;
                    }
                };
                check.messages_read += page.messages.len() as u64;
                for message in page.messages {
                    if let Some(token) = message.text.strip_prefix(POST_TEXT_PREFIX) {
                        *seen.entry(token.to_owned()).or_insert(0) += 1;
                    }
                }
                match page.next_before {
                    Some(next) if Some(next) != before => before = Some(next),
                    _ => break,
                }
            }
        }
        tally(&mut check, ledger, &seen, &target.name);
    }
    check
}

/// Compares the token counts of one instance's histories with the ledger.
fn tally(
    check: &mut HistoryCheck,
    ledger: &[PostRecord],
    seen: &HashMap<String, u32>,
    instance: &str,
) {
    for post in ledger {
        let count = seen.get(&post.token).copied().unwrap_or(0);
        if post.acked.is_some() && count == 0 {
            check.lost += 1;
            if check.examples.len() < EXAMPLES {
                check
                    .examples
                    .push(format!("{instance}: {} lost", post.token));
            }
        }
        if count > 1 {
            check.stored_twice += 1;
            if check.examples.len() < EXAMPLES {
                check
                    .examples
                    .push(format!("{instance}: {} stored {count} times", post.token));
            }
        }
        if post.acked.is_none() && count == 1 {
            check.stored_unacked += 1;
        }
    }
}

/// What a burst of identical GETs for a cold URL cost in SQLite queries.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ColdBurst {
    /// Identical requests sent at the same instant.
    pub requests: u32,
    /// Queries one request for another cold URL made: what one origin call costs.
    pub single_queries: u64,
    /// Queries the whole burst made.
    pub burst_queries: u64,
    /// Duplicate queries counted during the burst.
    pub burst_duplicates: u64,
    /// Requests of the burst answered `200`.
    pub ok: u32,
}

impl ColdBurst {
    /// True when the burst cost no more than one request: identical concurrent misses reached SQLite once.
    pub fn coalesced(&self) -> bool {
        self.burst_queries <= self.single_queries && self.burst_duplicates == 0
    }
}

/// Sends one GET for a cold URL, then `requests` identical GETs for another cold URL released together, and
/// counts the SQLite queries each cost from `/stats`. The instance must have no other traffic meanwhile.
pub async fn cold_burst(
    http: &Http,
    target: &Target,
    room: u32,
    requests: u32,
    salt: u32,
) -> Result<ColdBurst, String> {
    // Limits no other request uses make URLs no cache has seen.
    let single = format!(
        "{}/rooms/room-{room}/messages?limit={}",
        target.base,
        150 + salt % 40
    );
    let burst = format!(
        "{}/rooms/room-{room}/messages?limit={}",
        target.base,
        100 + salt % 40
    );
    let before = Stats::fetch(http, &target.base).await?;
    let reply = http
        .get(&single)
        .await
        .map_err(|e| format!("GET {single}: {e}"))?;
    if !reply.status.is_success() {
        return Err(format!("GET {single} answered {}", reply.status));
    }
    // One connection per request of the burst, opened beforehand, so the burst's requests reach the service at
    // the same instant instead of one connection set-up apart.
    together(http, &format!("{}/healthz", target.base), requests).await;
    let middle = Stats::fetch(http, &target.base).await?;
    let ok = together(http, &burst, requests).await;
    let after = Stats::fetch(http, &target.base).await?;
    let single_cost = middle.since(&before);
    let burst_cost = after.since(&middle);
    Ok(ColdBurst {
        requests,
        single_queries: single_cost.db_queries,
        burst_queries: burst_cost.db_queries,
        burst_duplicates: burst_cost.db_duplicate_queries,
        ok,
    })
}

/// Sends `requests` GETs of `url` released together; returns how many were answered with a success status.
async fn together(http: &Http, url: &str, requests: u32) -> u32 {
    let barrier = Arc::new(Barrier::new(requests as usize));
    let mut tasks = Vec::new();
    for _ in 0..requests {
        let (http, url, barrier) = (http.clone(), url.to_owned(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            http.get(&url).await.is_ok_and(|r| r.status.is_success())
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += u32::from(task.await.unwrap_or(false));
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Acked;
    use std::time::Duration;

    fn post(token: &str, acked: bool) -> PostRecord {
        let json = serde_json::json!({
            "token": token, "room": 1, "key": token, "instance": 0, "attempts": 1,
        });
        let mut record: PostRecord = serde_json::from_value(json).unwrap();
        if acked {
            record.acked = Some(Acked {
                id: 1,
                at: Duration::ZERO,
                instance: 0,
            });
        }
        record
    }

    #[test]
    fn tally_counts_lost_duplicated_and_unacked_posts() {
        let ledger = vec![
            post("a", true),
            post("b", true),
            post("c", false),
            post("d", false),
            post("e", true),
        ];
        let seen: HashMap<String, u32> = [("a", 1), ("b", 2), ("c", 1), ("e", 0)]
            .into_iter()
            .map(|(t, n)| (t.to_owned(), n))
            .collect();
        let mut check = HistoryCheck::default();
        tally(&mut check, &ledger, &seen, "one");
        assert_eq!(
            (check.lost, check.stored_twice, check.stored_unacked),
            (1, 1, 1)
        );
        assert_eq!(check.examples, vec!["one: b stored 2 times", "one: e lost"]);
    }

    #[test]
    fn a_burst_is_coalesced_when_it_costs_one_request() {
        let mut burst = ColdBurst {
            requests: 10,
            single_queries: 1,
            burst_queries: 1,
            burst_duplicates: 0,
            ok: 10,
        };
        assert!(burst.coalesced());
        burst.burst_queries = 2;
        assert!(!burst.coalesced());
        burst.burst_queries = 1;
        burst.burst_duplicates = 1;
        assert!(!burst.coalesced());
    }
}
