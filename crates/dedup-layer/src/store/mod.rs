//! Stores for idempotency records: the [`IdempotencyStore`] trait, [`MemoryStore`] and (feature `redis`) `RedisStore`.
//!
//! A store keeps, per scoped key, either an in-flight lock or the completed response, each with a time to live.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::body::DedupBody;

mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisStore, RedisStoreBuilder};

/// SHA-256 of what makes two requests "the same operation": method, path, query and body.
///
/// ```
/// use dedup_layer::store::Fingerprint;
///
/// let a = Fingerprint::from_bytes([7; 32]);
/// assert_eq!(a.as_bytes(), &[7; 32]);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Wraps a digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    /// The digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(")?;
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Proof of holding a key's in-flight lock; only its holder may complete or release it.
///
/// ```
/// use dedup_layer::store::LockToken;
///
/// assert_ne!(LockToken::random(), LockToken::random());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LockToken([u8; 16]);

impl LockToken {
    /// A fresh random token.
    pub fn random() -> Self {
        LockToken(fastrand::u128(..).to_be_bytes())
    }

    /// Wraps stored bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        LockToken(bytes)
    }

    /// The token's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockToken(..)")
    }
}

/// A completed response kept for replay.
///
/// ```
/// use dedup_layer::store::StoredResponse;
/// use http::{HeaderMap, StatusCode};
///
/// let stored = StoredResponse::new(StatusCode::CREATED, HeaderMap::new(), bytes::Bytes::from_static(b"{}"));
/// let decoded = StoredResponse::decode(&stored.encode()).unwrap();
/// assert_eq!(decoded, stored);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

const RECORD_VERSION: u8 = 1;

impl StoredResponse {
    /// A response to store.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes) -> Self {
        StoredResponse {
            status,
            headers,
            body,
        }
    }

    /// Status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Header fields.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Compact binary form: version, status, header count, length-prefixed names and values, body.
    pub fn encode(&self) -> Vec<u8> {
        let headers_len: usize = self
            .headers
            .iter()
            .map(|(n, v)| 6 + n.as_str().len() + v.len())
            .sum();
        let mut out = Vec::with_capacity(5 + headers_len + self.body.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        let count = u16::try_from(self.headers.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for (name, value) in self.headers.iter().take(usize::from(count)) {
            // Header names are at most 64 KiB in practice; longer ones cannot come from `http`.
            let name = name.as_str().as_bytes();
            out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&name[..usize::from(u16::try_from(name.len()).unwrap_or(0))]);
            let value = value.as_bytes();
            out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&value[..u32::try_from(value.len()).map_or(0, |l| l as usize)]);
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads [`encode`](Self::encode)'s output; `None` when the bytes are not a valid record.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader(bytes);
        if reader.take(1)?[0] != RECORD_VERSION {
            return None;
        }
        let status = StatusCode::from_u16(reader.u16()?).ok()?;
        let count = reader.u16()?;
        // The count is untrusted: reserve little up front and let `try_append` refuse what a header map cannot
        // hold, so a record claiming too many fields is invalid, not a panic.
        let mut headers = HeaderMap::try_with_capacity(usize::from(count).min(64)).ok()?;
        for _ in 0..count {
            let len = usize::from(reader.u16()?);
            let name = HeaderName::from_bytes(reader.take(len)?).ok()?;
            let len = usize::try_from(reader.u32()?).ok()?;
            let value = HeaderValue::from_bytes(reader.take(len)?).ok()?;
            headers.try_append(name, value).ok()?;
        }
        Some(StoredResponse {
            status,
            headers,
            body: Bytes::copy_from_slice(reader.0),
        })
    }

    pub(crate) fn to_response<B>(&self) -> Response<DedupBody<B>> {
        let mut response = Response::new(DedupBody::full(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// What [`IdempotencyStore::try_begin`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// The key was free: the caller now holds its lock (with the token it passed) and must complete or
    /// release it.
    Started,
    /// Another request with the same key and fingerprint holds the lock.
    InProgress,
    /// The key completed with the same fingerprint: replay this.
    Completed(StoredResponse),
    /// The key is locked or completed with a different fingerprint.
    Mismatch,
}

/// A store call failed (connection, timeout, corrupt data).
///
/// ```
/// use dedup_layer::store::StoreError;
///
/// let err = StoreError::new("connection refused");
/// assert_eq!(err.to_string(), "idempotency store error: connection refused");
/// ```
#[derive(Debug)]
pub struct StoreError {
    message: String,
}

impl StoreError {
    /// An error with this description.
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "idempotency store error: {}", self.message)
    }
}

impl std::error::Error for StoreError {}

/// Keeps idempotency locks and records. Implementations must make `try_begin` atomic per key.
///
/// Keys passed in are already scoped per client by the layer. The caller picks the lock token before
/// `try_begin`, so that if the answer is lost (timeout, cancellation) it can still release a lock the store
/// may have taken; `release` with a token that does not hold the key must do nothing.
pub trait IdempotencyStore: Clone + Send + Sync + 'static {
    /// Takes the key's lock with `token` for `lock_ttl` if the key is free (absent or expired), or reports
    /// what holds it.
    fn try_begin(
        &self,
        key: &str,
        token: &LockToken,
        fingerprint: &Fingerprint,
        lock_ttl: Duration,
    ) -> impl Future<Output = Result<Begin, StoreError>> + Send;

    /// Replaces the lock held with `token` by the completed `response`, kept for `ttl`.
    ///
    /// A store may also take the record when the key is gone altogether (the Redis store does,
    /// so the record survives a lock that expired or a Redis that restarted empty); it must fail
    /// when another token holds the key.
    fn complete(
        &self,
        key: &str,
        token: &LockToken,
        fingerprint: &Fingerprint,
        response: &StoredResponse,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Frees the key if its lock is still held with `token`, so the client may retry.
    fn release(
        &self,
        key: &str,
        token: &LockToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn record_round_trips_with_repeated_headers() {
        let mut headers = HeaderMap::new();
        headers.append("location", HeaderValue::from_static("/orders/1"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let stored = StoredResponse::new(StatusCode::CREATED, headers, Bytes::from_static(b"body"));
        assert_eq!(StoredResponse::decode(&stored.encode()), Some(stored));
    }

    #[test]
    fn a_record_announcing_more_fields_than_a_header_map_holds_is_invalid_not_a_panic() {
        // Version 1, status 200, 65535 fields announced (a header map cannot even reserve that many), one present.
        let mut bytes = vec![RECORD_VERSION, 0, 200, 0xff, 0xff];
        bytes.extend_from_slice(&[0, 1, b'a', 0, 0, 0, 1, b'b']);
        assert_eq!(StoredResponse::decode(&bytes), None);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = StoredResponse::decode(&bytes);
        }

        #[test]
        fn round_trip(status in 200u16..600, body in proptest::collection::vec(any::<u8>(), 0..64),
                      values in proptest::collection::vec("[ -~]{0,20}", 0..5)) {
            let mut headers = HeaderMap::new();
            for v in &values {
                headers.append("x-v", HeaderValue::from_str(v).unwrap());
            }
            let stored = StoredResponse::new(StatusCode::from_u16(status).unwrap(), headers, Bytes::from(body));
            prop_assert_eq!(StoredResponse::decode(&stored.encode()), Some(stored));
        }
    }
}
