//! `application/problem+json` (RFC 9457) answers for the layers' own outcomes.
//!
//! Bodies are static strings so an error path allocates nothing but the response itself.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::DedupBody;

/// A fault answered by one of this crate's layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    WaiterTimeout,
    LeaderFailed,
    MissingKey,
    InvalidKey,
    KeyMismatch,
    KeyInUse,
    BodyTooLarge,
    BodyUnreadable,
    StoreUnavailable,
}

macro_rules! problem_json {
    ($status:literal, $title:literal, $detail:literal) => {
        concat!(
            "{\"type\":\"about:blank\",\"title\":\"",
            $title,
            "\",\"status\":",
            $status,
            ",\"detail\":\"",
            $detail,
            "\"}"
        )
    };
}

impl Problem {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Problem::WaiterTimeout => StatusCode::GATEWAY_TIMEOUT,
            Problem::LeaderFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Problem::MissingKey | Problem::InvalidKey | Problem::BodyUnreadable => {
                StatusCode::BAD_REQUEST
            }
            Problem::KeyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Problem::KeyInUse => StatusCode::CONFLICT,
            Problem::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Problem::WaiterTimeout => problem_json!(
                "504",
                "Gateway Timeout",
                "an identical request was in flight and did not finish within the waiter timeout"
            ),
            Problem::LeaderFailed => problem_json!(
                "500",
                "Internal Server Error",
                "the request that was answering this one failed"
            ),
            Problem::MissingKey => problem_json!(
                "400",
                "Bad Request",
                "this operation requires an Idempotency-Key header"
            ),
            Problem::InvalidKey => problem_json!(
                "400",
                "Bad Request",
                "the Idempotency-Key header must be one structured-field string of 1 to 255 characters"
            ),
            Problem::KeyMismatch => problem_json!(
                "422",
                "Unprocessable Content",
                "this Idempotency-Key was already used with a different request"
            ),
            Problem::KeyInUse => problem_json!(
                "409",
                "Conflict",
                "a request with this Idempotency-Key is still being processed"
            ),
            Problem::BodyTooLarge => problem_json!(
                "413",
                "Content Too Large",
                "the request body is larger than the idempotency layer buffers"
            ),
            Problem::BodyUnreadable => {
                problem_json!("400", "Bad Request", "the request body could not be read")
            }
            Problem::StoreUnavailable => problem_json!(
                "503",
                "Service Unavailable",
                "the idempotency store is unavailable"
            ),
        }
    }

    /// Builds the response. `Cache-Control: no-store` keeps caches above from keeping a transient fault.
    pub(crate) fn response<B>(self) -> Response<DedupBody<B>> {
        let mut response =
            Response::new(DedupBody::full(Bytes::from_static(self.body().as_bytes())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Problem::KeyInUse | Problem::StoreUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
