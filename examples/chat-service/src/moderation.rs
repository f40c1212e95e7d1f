//! The client of the moderation service each post is checked with, the service's one outbound
//! dependency. Stacked, the call goes through `TraceClientLayer` (the check continues the
//! request's trace) and a `BreakerLayer` with a timeout (a dead dependency costs nothing).
//!
//! Bare, the same call is made directly with the same timeout and no breaker.

use std::fmt;
use std::time::Duration;

use breaker_layer::{Breaker, BreakerLayer, BreakerState, CircuitBreaker};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use telemetry_layer::{TraceClient, TraceClientLayer};
use tower::{Layer, ServiceExt};

use crate::config::{Config, ConfigError};

/// Largest moderation answer read; a verdict is a few dozen bytes.
const MAX_VERDICT_BYTES: usize = 16 * 1024;
/// `Retry-After` when the dependency failed but no breaker says how long to wait.
const DEFAULT_RETRY_AFTER_SECS: u64 = 1;

type Http = Client<HttpConnector, Full<Bytes>>;
type Guarded = TraceClient<Breaker<Http>>;

/// What the moderation service said about a post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Judgement {
    Allowed,
    Rejected(String),
    /// The service failed, timed out or its breaker is open: nothing may be stored.
    Unavailable {
        retry_after_secs: u64,
    },
}

#[derive(Serialize)]
struct CheckRequest<'a> {
    author: &'a str,
    text: &'a str,
}

#[derive(Deserialize)]
struct Verdict {
    allowed: bool,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Clone)]
enum Calls {
    Direct(Http),
    Guarded {
        client: Guarded,
        breaker: CircuitBreaker,
    },
}

/// Calls `POST {moderation_url}/v1/check`. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ModerationClient {
    check_url: Uri,
    timeout: Duration,
    calls: Calls,
    /// The breaker's Open wait in whole seconds (rounded up).
    open_wait_secs: u64,
}

impl fmt::Debug for ModerationClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModerationClient")
            .field("check_url", &self.check_url)
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker().map(CircuitBreaker::state))
            .finish()
    }
}

impl ModerationClient {
    /// The client for `config`, or `None` when posts are not moderated. Stacked, it builds the
    /// breaker, whose counters register with the `metrics` recorder installed now.
    pub(crate) fn new(config: &Config) -> Result<Option<Self>, ConfigError> {
        let Some(base) = &config.moderation_url else {
            return Ok(None);
        };
        let check_url: Uri = format!("{}/v1/check", base.trim_end_matches('/'))
            .parse()
            .map_err(|e| ConfigError::new(format!("--moderation-url {base:?}: {e}")))?;
        let http: Http = Client::builder(TokioExecutor::new()).build_http();
        let calls = if config.bare {
            Calls::Direct(http)
        } else {
            let settings = config.moderation_breaker;
            let breaker = CircuitBreaker::builder()
                .name("moderation")
                .count_window(settings.window)
                .minimum_calls(settings.minimum_calls)
                .failure_rate_threshold(settings.failure_rate_threshold)
                .wait_in_open(settings.wait_in_open)
                .half_open_probes(settings.half_open_probes)
                .build()
                .map_err(|e| ConfigError::new(format!("moderation breaker: {e}")))?;
            // The timeout sits in the breaker so a slow dependency counts as a failing one.
            let guarded = BreakerLayer::new(breaker.clone())
                .timeout(config.moderation_timeout)
                .layer(http);
            Calls::Guarded {
                client: TraceClientLayer::new().layer(guarded),
                breaker,
            }
        };
        let wait = config.moderation_breaker.wait_in_open;
        Ok(Some(Self {
            check_url,
            timeout: config.moderation_timeout,
            calls,
            open_wait_secs: wait
                .as_secs()
                .saturating_add(u64::from(wait.subsec_nanos() > 0)),
        }))
    }

    /// The breaker, stacked.
    pub(crate) fn breaker(&self) -> Option<&CircuitBreaker> {
        match &self.calls {
            Calls::Direct(_) => None,
            Calls::Guarded { breaker, .. } => Some(breaker),
        }
    }

    /// The breaker's state, stacked.
    pub(crate) fn breaker_state(&self) -> Option<BreakerState> {
        self.breaker().map(CircuitBreaker::state)
    }

    /// Asks the service whether `text` by `author` may be posted. Never fails: every fault is
    /// [`Judgement::Unavailable`].
    pub(crate) async fn check(&self, author: &str, text: &str) -> Judgement {
        let request = match self.request(author, text) {
            Ok(request) => request,
            Err(error) => {
                tracing::error!(%error, "moderation request could not be built");
                return self.unavailable(None);
            }
        };
        let judged = match &self.calls {
            Calls::Direct(http) => {
                let call = async {
                    match http.request(request).await {
                        Ok(response) => Ok(judge(response).await),
                        Err(error) => Err(error.to_string()),
                    }
                };
                match tokio::time::timeout(self.timeout, call).await {
                    Ok(judged) => judged,
                    Err(_) => Err("timed out".to_owned()),
                }
            }
            Calls::Guarded { client, .. } => match client.clone().oneshot(request).await {
                // The breaker's timeout covers the head; the small body gets the same bound.
                Ok(response) => tokio::time::timeout(self.timeout, judge(response))
                    .await
                    .map_err(|_| "timed out reading the verdict".to_owned()),
                Err(error) => Err(error.to_string()),
            },
        };
        match judged {
            Ok(Ok(judgement)) => judgement,
            Ok(Err(failed)) => {
                tracing::warn!(status = %failed.status, "moderation unavailable");
                self.unavailable(failed.retry_after_secs)
            }
            Err(error) => {
                tracing::warn!(%error, "moderation call failed");
                self.unavailable(None)
            }
        }
    }

    fn request(&self, author: &str, text: &str) -> Result<Request<Full<Bytes>>, String> {
        let body = serde_json::to_vec(&CheckRequest { author, text }).map_err(|e| e.to_string())?;
        Request::post(self.check_url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())
    }

    fn unavailable(&self, retry_after_secs: Option<u64>) -> Judgement {
        // A call that just opened the breaker: come back when it probes again.
        let from_breaker = self
            .breaker()
            .filter(|b| b.state() == BreakerState::Open)
            .map(|_| self.open_wait_secs);
        Judgement::Unavailable {
            retry_after_secs: retry_after_secs
                .or(from_breaker)
                .unwrap_or(DEFAULT_RETRY_AFTER_SECS)
                .max(1),
        }
    }
}

/// A non-verdict answer: a `5xx` of the service, or the breaker's own `503`/`504`.
struct Failed {
    status: StatusCode,
    retry_after_secs: Option<u64>,
}

async fn judge<B>(response: Response<B>) -> Result<Judgement, Failed>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let status = response.status();
    let failed = |retry_after_secs| Failed {
        status,
        retry_after_secs,
    };
    if status != StatusCode::OK {
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        return Err(failed(retry_after));
    }
    let body = Limited::new(response.into_body(), MAX_VERDICT_BYTES)
        .collect()
        .await
        .map_err(|_| failed(None))?
        .to_bytes();
    let verdict: Verdict = serde_json::from_slice(&body).map_err(|_| failed(None))?;
    Ok(if verdict.allowed {
        Judgement::Allowed
    } else {
        Judgement::Rejected(
            verdict
                .reason
                .unwrap_or_else(|| "rejected by moderation".to_owned()),
        )
    })
}
