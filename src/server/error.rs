//! HTTP errors: one type for every handler, one `recover` that turns it (and
//! warp's own rejections) into `{"error": {"code", "message"}}` replies.

use std::convert::Infallible;

use warp::http::StatusCode;
use warp::{Rejection, Reply};

use crate::protocol::{ErrorBody, ErrorDetail};
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing, invalid or expired session token",
        )
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such resource, or not visible to you",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; nothing was changed",
        )
    }
}

/// 429 at the WebSocket upgrade: the address has too many connections open.
pub fn too_many_connections() -> ApiError {
    super::metrics::rate_limited("connections_per_ip");
    let mut err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_connections",
        "too many open connections from your address",
    );
    err.retry_after_secs = Some(5);
    err
}

/// 503 when every password-hashing slot is busy and the queue is full.
pub fn hashing_saturated() -> ApiError {
    super::metrics::rate_limited("hashing_queue");
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "the server is busy checking passwords; retry shortly",
    );
    err.retry_after_secs = Some(1);
    err
}

/// 503 when the database refused a write for now (locked, full, read-only).
fn storage_unavailable(fault: crate::store::faults::StorageFault) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        format!("{fault}; nothing was changed, retry later"),
    );
    err.retry_after_secs = Some(1);
    err
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::UsernameTaken => Self::new(
                StatusCode::CONFLICT,
                "username_taken",
                "that username is taken",
            ),
            StoreError::UsernameConfusable => Self::new(
                StatusCode::CONFLICT,
                "username_confusable",
                "that username looks too much like an existing one (0 and o, 1 i and l, \
                 rn and m, vv and w, and _ . - count as the same); choose another",
            ),
            StoreError::NotFound => Self::not_found(),
            StoreError::Forbidden(why) => Self::new(StatusCode::FORBIDDEN, "forbidden", why),
            StoreError::Conflict(why) => Self::new(StatusCode::CONFLICT, "conflict", why),
            StoreError::Blocked => {
                Self::new(StatusCode::FORBIDDEN, "blocked", "this user blocks you")
            }
            StoreError::Invalid(why) => Self::bad_request("bad_request", why),
            StoreError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is shutting down",
            ),
            StoreError::Unavailable(fault) => storage_unavailable(fault),
            StoreError::Db(ref db) => match crate::store::faults::classify(db) {
                Some(fault) => {
                    tracing::warn!(error = %err, fault = fault.as_str(), "database unavailable");
                    storage_unavailable(fault)
                }
                None => {
                    tracing::error!(error = %err, "database error");
                    Self::internal()
                }
            },
            StoreError::Migrate(_) => {
                tracing::error!(error = %err, "database error");
                Self::internal()
            }
        }
    }
}

pub fn reply(err: &ApiError) -> warp::reply::Response {
    super::metrics::error(err.code);
    let body = ErrorBody {
        error: ErrorDetail {
            code: err.code.to_owned(),
            message: err.message.clone(),
            retry_after_secs: err.retry_after_secs,
        },
    };
    let mut response =
        warp::reply::with_status(warp::reply::json(&body), err.status).into_response();
    if let Some(secs) = err.retry_after_secs {
        response
            .headers_mut()
            .insert(warp::http::header::RETRY_AFTER, secs.into());
    }
    response
}

/// Maps every rejection to a JSON error reply.
pub async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let err = if let Some(api) = rejection.find::<ApiError>() {
        return Ok(reply(api));
    } else if rejection.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        ApiError::bad_request("bad_request", format!("invalid JSON body: {e}"))
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body too large",
        )
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            "expected a JSON body",
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed here",
        )
    } else if rejection.find::<warp::reject::MissingHeader>().is_some() {
        ApiError::bad_request("bad_request", "a required header is missing")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "bad_request",
            "Content-Length is required",
        )
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        ApiError::bad_request("bad_request", "the request could not be handled")
    };
    Ok(reply(&err))
}
