//! [`CacheHandle`]: purge entries by URL, tag or key prefix, hard or soft.

use std::fmt;
use std::sync::Arc;

use http::Uri;

use crate::layer::Shared;
use crate::tiered::{Purge, PurgeTarget, Target, TierEvent, TierStats};

/// A handle on a [`CacheLayer`](crate::CacheLayer)'s store, cheap to clone.
///
/// A hard purge removes entries. A soft purge marks them stale from now on: they are no longer
/// served as fresh, but `stale-while-revalidate` and `stale-if-error` still apply, and their
/// validators make the next request a cheap conditional one.
///
/// ```
/// use cache_layer::CacheLayer;
///
/// let layer = CacheLayer::new();
/// let handle = layer.handle();
/// assert_eq!(handle.purge_tag("room:42"), 0);
/// assert_eq!(handle.soft_purge_url("http://example.com/rooms/42"), 0);
/// ```
#[derive(Clone)]
pub struct CacheHandle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("entries", &self.shared.l1.entry_count())
            .finish_non_exhaustive()
    }
}

impl CacheHandle {
    /// Removes every variant stored for an absolute URL; returns how many keys went.
    pub fn purge_url(&self, url: &str) -> usize {
        self.url(url, false)
    }

    /// Marks every variant stored for an absolute URL stale.
    pub fn soft_purge_url(&self, url: &str) -> usize {
        self.url(url, true)
    }

    /// Removes every entry carrying `tag`.
    pub fn purge_tag(&self, tag: &str) -> usize {
        self.tag(tag, false)
    }

    /// Marks every entry carrying `tag` stale.
    pub fn soft_purge_tag(&self, tag: &str) -> usize {
        self.tag(tag, true)
    }

    /// Removes every entry whose key starts with `prefix` (keys look like
    /// `http://host/path?query` unless a key function says otherwise).
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.prefix(prefix, false)
    }

    /// Marks every entry whose key starts with `prefix` stale.
    pub fn soft_purge_prefix(&self, prefix: &str) -> usize {
        self.prefix(prefix, true)
    }

    /// Removes everything.
    pub fn purge_all(&self) -> usize {
        self.prefix("", false)
    }

    /// Keys (URLs) held by the in-process tier.
    pub fn entry_count(&self) -> u64 {
        self.shared.l1.entry_count()
    }

    /// Bytes held by the in-process tier.
    pub fn weighted_size(&self) -> u64 {
        self.shared.l1.bytes()
    }

    /// (tag, key) pairs in the tag index.
    pub fn tag_index_len(&self) -> u64 {
        self.shared.l1.tags.len()
    }

    /// Background refreshes running now.
    pub fn refreshes_in_flight(&self) -> usize {
        self.shared.in_flight.len()
    }

    /// Keys whose collapsed miss is in flight now (zero when misses are not collapsed, see
    /// [`CacheLayerBuilder::collapse_misses`](crate::CacheLayerBuilder::collapse_misses)).
    pub fn collapsed_in_flight(&self) -> usize {
        self.shared.collapser.as_ref().map_or(0, |c| c.in_flight())
    }

    /// Runs the store's pending maintenance now (evictions and their bookkeeping), which
    /// otherwise happens during later requests.
    pub fn run_pending_tasks(&self) {
        self.shared.l1.run_pending_tasks();
    }

    fn apply(&self, key: &str, soft: bool) -> bool {
        let done = if soft {
            let stamp = self.shared.clock.stamp(self.shared.clock.now());
            self.shared.l1.soft_purge(key, stamp)
        } else {
            self.shared.l1.invalidate(key)
        };
        tracing::debug!(key, soft, done, "cache purge");
        done
    }

    fn url(&self, url: &str, soft: bool) -> usize {
        let Some(key) = self.key_of_url(url) else {
            return 0;
        };
        let n = usize::from(self.apply(&key, soft));
        self.propagate(Target::Key(key), soft);
        n
    }

    fn key_of_url(&self, url: &str) -> Option<String> {
        let uri = url.parse::<Uri>().ok()?;
        uri.authority()?;
        self.shared.config.key.key_for_uri(&uri, None)
    }

    fn tag(&self, tag: &str, soft: bool) -> usize {
        let n = self.tag_local(tag, soft);
        self.propagate(Target::Tag(tag.to_owned()), soft);
        n
    }

    fn tag_local(&self, tag: &str, soft: bool) -> usize {
        self.shared
            .l1
            .keys_with_tag(tag)
            .iter()
            .filter(|k| self.apply(k, soft))
            .count()
    }

    fn prefix(&self, prefix: &str, soft: bool) -> usize {
        let n = self.prefix_local(prefix, soft);
        self.propagate(Target::Prefix(prefix.to_owned()), soft);
        n
    }

    fn prefix_local(&self, prefix: &str, soft: bool) -> usize {
        self.shared
            .l1
            .keys_with_prefix(prefix)
            .iter()
            .filter(|k| self.apply(k, soft))
            .count()
    }

    /// Sends a purge to the lower tiers and the other instances, in the background.
    fn propagate(&self, target: Target, soft: bool) {
        if let Some(lower) = &self.shared.lower {
            lower.propagate(target, soft);
        }
    }

    /// Applies a purge here at once, then to the shared and persistent tiers and every other
    /// instance, and returns when Redis has been told (or could not be: the purge is then
    /// tried again until Redis takes it, and meanwhile this instance does not trust what it finds
    /// in Redis). Returns how many keys went from this instance's in-process tier. Without lower
    /// tiers it is the same as the matching synchronous method.
    ///
    /// ```
    /// use cache_layer::{CacheLayer, Purge};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let handle = CacheLayer::new().handle();
    /// assert_eq!(handle.purge(Purge::tag("room:42")).await, 0);
    /// # }
    /// ```
    pub async fn purge(&self, purge: Purge) -> usize {
        let soft = purge.soft;
        let target = match purge.target {
            PurgeTarget::Url(url) => match self.key_of_url(&url) {
                Some(k) => Target::Key(k),
                None => return 0,
            },
            PurgeTarget::Resolved(t) => t,
        };
        let n = match &target {
            Target::Key(k) => usize::from(self.apply(k, soft)),
            Target::Tag(t) => self.tag_local(t, soft),
            Target::Prefix(p) => self.prefix_local(p, soft),
            Target::All => self.prefix_local("", soft),
        };
        if let Some(lower) = &self.shared.lower {
            lower.purge_lower(target, soft).await;
        }
        n
    }

    /// Counters of the shared and persistent tiers (all zero without them).
    pub fn tier_stats(&self) -> TierStats {
        self.shared
            .lower
            .as_ref()
            .map(|l| l.stats())
            .unwrap_or_default()
    }

    /// Events of the lower tiers (subscription up, flush, purges from other instances);
    /// `None` without lower tiers.
    pub fn tier_events(&self) -> Option<tokio::sync::broadcast::Receiver<TierEvent>> {
        self.shared.lower.as_ref().map(|l| l.subscribe())
    }
}
