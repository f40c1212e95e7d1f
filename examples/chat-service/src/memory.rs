//! The memory budget: one number (`--memory-budget`, `MEMORY_BUDGET`) from which every bounded
//! part of the service is sized, so resident memory stays under it whatever the traffic.
//!
//! docs/performance.md ("Memory") has the measurements behind the shares below.

use std::fmt;
use std::str::FromStr;

/// Resident memory the service is sized to stay under, in bytes.
///
/// Read from text such as `160MB` or `256MiB`: a whole number with `B`, `KB`/`MB`/`GB` (powers of
/// 1000) or `KiB`/`MiB`/`GiB` (powers of 1024), case-insensitive; a bare number is bytes.
/// Between [`MemoryBudget::MIN`] and [`MemoryBudget::MAX`].
///
/// ```
/// use chat_service::MemoryBudget;
///
/// let budget: MemoryBudget = "160MB".parse()?;
/// assert_eq!(budget.bytes(), 160_000_000);
/// assert_eq!("256MiB".parse::<MemoryBudget>()?.bytes(), 256 << 20);
/// assert!("10MB".parse::<MemoryBudget>().is_err());
/// assert!("lots".parse::<MemoryBudget>().is_err());
/// # Ok::<(), chat_service::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemoryBudget(u64);

/// What the budget turns into: every bound of the service that holds memory.
///
/// Built by [`MemoryBudget::bounds`]; the service applies it when it opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryBounds {
    /// Bytes the in-process cache tier may charge (cache-layer's `max_capacity_bytes`): bodies,
    /// fields and bookkeeping of every entry it holds, fresh, stale or expired but not yet
    /// reclaimed.
    pub l1_bytes: u64,
    /// Largest body the cache stores (cache-layer's `max_body_bytes`), so one entry cannot take
    /// a large part of the tier.
    pub l1_max_body_bytes: usize,
    /// Bound on (tag, key) pairs of the cache's tag index (cache-layer's `max_tag_entries`).
    pub l1_tag_entries: u64,
    /// Bytes of idempotency records kept in memory (dedup-layer's `MemoryStore::max_bytes`).
    pub idempotency_bytes: u64,
    /// Idempotency keys kept in memory (dedup-layer's `MemoryStore::max_entries`).
    pub idempotency_entries: u64,
    /// Distinct reads coalesced at once (dedup-layer's `max_inflight`); more run uncoalesced.
    pub dedup_inflight: usize,
    /// Largest answer a coalesced read buffers for its waiters (dedup-layer's `max_body_bytes`).
    pub dedup_body_bytes: usize,
    /// SQLite page cache of each connection, readers and writer alike, in KiB
    /// (`PRAGMA cache_size = -N`).
    pub sqlite_cache_kib: u32,
}

impl MemoryBudget {
    /// The default: 160 MB, which keeps peak resident memory under 200 MB under any churn
    /// (docs/performance.md).
    pub const DEFAULT: Self = Self(160_000_000);
    /// The smallest budget accepted: below it the parts no budget bounds (code, runtime,
    /// threads, telemetry) leave nothing to share out.
    pub const MIN: Self = Self(64_000_000);
    /// The largest budget accepted (1 TB).
    pub const MAX: Self = Self(1_000_000_000_000);

    /// What the process holds whatever the budget: mapped code, the Tokio and blocking-pool
    /// threads, telemetry's metric storage, SQLite's schema, the allocator's slack.
    const FIXED: u64 = 40_000_000;
    /// Resident bytes the in-process tier costs per byte it charges, under churn, for the
    /// smallest entries the service stores: measured at 1.58 per charged byte (allocation
    /// rounding, memory freed by evictions that the allocator has not handed back yet) plus
    /// 1.3 KB per entry that the charge leaves out (moka's nodes, `Arc`s, maps), and an entry is
    /// charged at least about 1.1 KB (docs/performance.md).
    const L1_RESIDENT_PER_CHARGED: f64 = 2.75;

    /// The budget in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Shares the budget out: what is left after the fixed part goes 8% to SQLite's page caches
    /// (split over `connections`, readers and writer), 4% to idempotency records, 4% to
    /// coalesced reads, and the rest to the in-process cache tier, whose charged bytes cost up
    /// to 2.75 times as much resident memory under churn.
    ///
    /// ```
    /// use chat_service::MemoryBudget;
    ///
    /// let bounds = MemoryBudget::DEFAULT.bounds(5);
    /// assert!(bounds.l1_bytes > 30_000_000 && bounds.l1_bytes < 45_000_000);
    /// assert!(MemoryBudget::MAX.bounds(5).l1_bytes > bounds.l1_bytes);
    /// ```
    pub fn bounds(self, connections: usize) -> MemoryBounds {
        let shared = self.0.saturating_sub(Self::FIXED);
        let percent = |p: u64| shared / 100 * p;

        let connections = u64::try_from(connections.max(1)).unwrap_or(u64::MAX);
        let sqlite_cache_kib = (percent(8) / connections / 1024).clamp(64, 1 << 20);
        let sqlite_total = sqlite_cache_kib * 1024 * connections;

        let idempotency_bytes = percent(4);
        // A post's replayed answer is a few hundred bytes; 1 KiB each keeps the count honest.
        let idempotency_entries = (idempotency_bytes / 1024).max(1);

        let dedup_share = percent(4);
        let dedup_body_bytes = (dedup_share / 16).clamp(64 * 1024, 4 << 20);
        // Only coalesced reads with waiters buffer a body, and most pages are far smaller than
        // the largest: a 4 KiB average per key in flight.
        let dedup_inflight = (dedup_share / 4096).clamp(64, 10_000);

        let l1_resident = shared
            .saturating_sub(sqlite_total)
            .saturating_sub(idempotency_bytes)
            .saturating_sub(dedup_share);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let l1_bytes = ((l1_resident as f64) / Self::L1_RESIDENT_PER_CHARGED) as u64;
        let l1_bytes = l1_bytes.max(1 << 20);
        // Every entry is charged at least 256 bytes and the chat's answers carry one tag each;
        // two pairs per entry leave room for responses with a second tag.
        let l1_tag_entries = (l1_bytes / 256 * 2).max(1024);
        let l1_max_body_bytes = usize::try_from((l1_bytes / 32).min(1 << 20)).unwrap_or(1 << 20);

        MemoryBounds {
            l1_bytes,
            l1_max_body_bytes,
            l1_tag_entries,
            idempotency_bytes,
            idempotency_entries,
            dedup_inflight: usize::try_from(dedup_inflight).unwrap_or(10_000),
            dedup_body_bytes: usize::try_from(dedup_body_bytes).unwrap_or(4 << 20),
            sqlite_cache_kib: u32::try_from(sqlite_cache_kib).unwrap_or(1 << 20),
        }
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1_000_000) {
            write!(f, "{}MB", self.0 / 1_000_000)
        } else {
            write!(f, "{}B", self.0)
        }
    }
}

impl FromStr for MemoryBudget {
    type Err = crate::ConfigError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bad = || {
            crate::ConfigError::new(format!(
                "expected a size like 160MB, 256MiB or 2GB, got {raw:?}"
            ))
        };
        let text = raw.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            _ => return Err(bad()),
        };
        let bytes = number.checked_mul(scale).ok_or_else(bad)?;
        if bytes < Self::MIN.0 {
            return Err(crate::ConfigError::new(format!(
                "{raw:?} is below the smallest budget, {}: code, runtime, threads and \
                 telemetry alone take about {}MB",
                Self::MIN,
                Self::FIXED / 1_000_000
            )));
        }
        if bytes > Self::MAX.0 {
            return Err(crate::ConfigError::new(format!(
                "{raw:?} is above the largest budget, {}",
                Self::MAX
            )));
        }
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let parse = |raw: &str| raw.parse::<MemoryBudget>().map(MemoryBudget::bytes);
        assert_eq!(parse("160MB"), Ok(160_000_000));
        assert_eq!(parse(" 160 mb "), Ok(160_000_000));
        assert_eq!(parse("160MiB"), Ok(160 << 20));
        assert_eq!(parse("2GB"), Ok(2_000_000_000));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("65000KB"), Ok(65_000_000));
        assert_eq!(parse("100000000"), Ok(100_000_000));
        assert_eq!(parse("100000000B"), Ok(100_000_000));
        assert_eq!(parse("1000GB"), Ok(1_000_000_000_000));
    }

    #[test]
    fn refuses_bad_sizes_with_a_reason() {
        for (raw, expected) in [
            ("", "expected a size"),
            ("MB", "expected a size"),
            ("160", "below the smallest"),
            ("1.5GB", "expected a size"),
            ("-160MB", "expected a size"),
            ("160 MBs", "expected a size"),
            ("160TB", "expected a size"),
            ("10MB", "below the smallest"),
            ("63MB", "below the smallest"),
            ("1001GB", "above the largest"),
            ("99999999999999999999", "expected a size"),
            ("18446744073709551615GB", "expected a size"),
        ] {
            let err = raw.parse::<MemoryBudget>().unwrap_err().to_string();
            assert!(err.contains(expected), "{raw:?}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for raw in ["160MB", "64MB", "1000000000000B", "67108864B"] {
            let budget: MemoryBudget = raw.parse().unwrap();
            assert_eq!(budget.to_string().parse::<MemoryBudget>(), Ok(budget));
        }
        assert_eq!(MemoryBudget::DEFAULT.to_string(), "160MB");
    }

    /// What the bounded parts may hold resident, by the same rule the derivation uses.
    fn resident(bounds: &MemoryBounds, connections: u64) -> u64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let l1 = (bounds.l1_bytes as f64 * MemoryBudget::L1_RESIDENT_PER_CHARGED) as u64;
        l1 + u64::from(bounds.sqlite_cache_kib) * 1024 * connections
            + bounds.idempotency_bytes
            + bounds.dedup_inflight as u64 * 4096
    }

    #[test]
    fn every_budget_is_kept() {
        for budget in [
            MemoryBudget::MIN,
            MemoryBudget(100_000_000),
            MemoryBudget::DEFAULT,
            MemoryBudget(1_000_000_000),
            MemoryBudget(64_000_000_000),
            MemoryBudget::MAX,
        ] {
            for connections in [1, 5, 257] {
                let bounds = budget.bounds(connections);
                let held = resident(&bounds, connections as u64) + MemoryBudget::FIXED;
                assert!(
                    held <= budget.bytes() + budget.bytes() / 50,
                    "{budget} over {connections} connections: {held} bytes held, {bounds:?}"
                );
                assert!(bounds.l1_bytes >= 1 << 20, "{bounds:?}");
                assert!(bounds.l1_max_body_bytes >= 16 * 1024, "{bounds:?}");
                assert!(bounds.l1_max_body_bytes <= 1 << 20, "{bounds:?}");
                assert!(bounds.l1_tag_entries >= bounds.l1_bytes / 256, "{bounds:?}");
                assert!(bounds.idempotency_entries >= 1, "{bounds:?}");
                assert!((64..=10_000).contains(&bounds.dedup_inflight), "{bounds:?}");
                assert!(bounds.dedup_body_bytes >= 64 * 1024, "{bounds:?}");
                assert!(bounds.sqlite_cache_kib >= 64, "{bounds:?}");
            }
        }
    }

    #[test]
    fn the_cache_tier_gets_most_and_grows_with_the_budget() {
        let small = MemoryBudget::MIN.bounds(5);
        let default = MemoryBudget::DEFAULT.bounds(5);
        let large = MemoryBudget(1_000_000_000).bounds(5);
        assert!(small.l1_bytes < default.l1_bytes && default.l1_bytes < large.l1_bytes);
        let shared = MemoryBudget::DEFAULT.bytes() - MemoryBudget::FIXED;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let l1_resident = (default.l1_bytes as f64 * MemoryBudget::L1_RESIDENT_PER_CHARGED) as u64;
        assert!(l1_resident > shared * 3 / 4, "{default:?}");
        // SQLite's default page cache is 2000 KiB per connection; the default budget keeps
        // about that.
        assert!(
            (1500..=2500).contains(&default.sqlite_cache_kib),
            "{default:?}"
        );
        // More connections share the same SQLite bytes.
        assert!(MemoryBudget::DEFAULT.bounds(10).sqlite_cache_kib < default.sqlite_cache_kib);
    }
}
