//! Extractors whose rejections are JSON errors, and the layer that makes sure every 4xx is.
//!
//! Handlers take [`ApiPath`] instead of `Path` (and [`super::ApiJson`] instead of `Json`;
//! query strings go through [`super::query_pairs`]). [`json_errors`] is the backstop: a 4xx
//! that some extractor or layer answered in plain text (an extractor a handler still takes
//! from axum, a body limit) is rewritten into `{"error": {"code", "message"}}` with its
//! status and headers kept.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::ApiError;

/// `Path<T>` whose rejections (bad percent-encoding, not UTF-8, wrong type) are JSON `400`s.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", format!("bad path: {}", e.body_text())))
            }
            Err(other) => {
                // A route without the parameter its handler takes: the server's bug, not the client's.
                tracing::error!(error = %other.body_text(), "path extraction failed");
                Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the server failed on this request"))
            }
        }
    }
}

/// Largest plain-text rejection body carried into the JSON message.
const MAX_TEXT: usize = 4096;

/// Rewrites a 4xx that is not JSON into the JSON error shape, keeping status and headers.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_TEXT).await.map(|b| String::from_utf8_lossy(&b).trim().to_owned());
    let message = match text {
        Ok(t) if !t.is_empty() => t,
        _ => status.canonical_reason().unwrap_or("the request was refused").to_owned(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut answer = ApiError::new(status, code_of(status), message).into_response();
    for (name, value) in parts.headers.iter() {
        answer.headers_mut().insert(name.clone(), value.clone());
    }
    answer
}

fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        _ => "client_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_text_4xx_becomes_json() {
        let plain = (StatusCode::BAD_REQUEST, [(header::RETRY_AFTER, "3")], "Invalid URL: bad").into_response();
        let answer = json_errors(plain).await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        assert_eq!(answer.headers()[header::RETRY_AFTER], "3");
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(answer.into_body(), 10_000).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request");
        assert_eq!(v["error"]["message"], "Invalid URL: bad");
        let ok = json_errors((StatusCode::OK, "fine").into_response()).await;
        assert_eq!(axum::body::to_bytes(ok.into_body(), 100).await.unwrap(), "fine");
    }
}
