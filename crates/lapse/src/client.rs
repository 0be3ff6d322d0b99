//! The CLI's HTTP client: JSON in and out, server errors turned into their message.

use anyhow::{Context as _, bail};
use lapse_core::wire::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub struct Client {
    base: String,
    http: reqwest::Client,
    key: Option<String>,
}

impl Client {
    /// A client of the server at `base`, presenting `key` (an API key or the admin key).
    pub fn new(base: &str, key: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().build().context("building the HTTP client")?;
        Ok(Client { base: base.trim_end_matches('/').to_owned(), http, key })
    }

    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        Ok(self.call_with_headers(method, path, body).await?.0)
    }

    /// A `GET` of one page of a list: the answer and the next page's cursor, if any.
    pub async fn get_page<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<(T, Option<String>)> {
        let (value, headers) = self.call_with_headers(Method::GET, path, None::<&()>).await?;
        let next = headers.get("lapse-next-cursor").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok((value, next))
    }

    async fn call_with_headers<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<(T, reqwest::header::HeaderMap)> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.with_context(|| {
            format!("cannot reach the Lapse server at {} (is `lapse serve` running? set --url or LAPSE_URL)", self.base)
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.context("reading the server's answer")?;
        if !status.is_success() {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => bail!("{} ({}, {})", e.error.message, status.as_u16(), e.error.code),
                Err(_) => bail!("the server answered {status}: {}", String::from_utf8_lossy(&bytes)),
            }
        }
        if status == StatusCode::NO_CONTENT {
            return Ok((serde_json::from_slice(b"null").context("empty answer")?, headers));
        }
        let value = serde_json::from_slice(&bytes)
            .with_context(|| format!("the server's answer to {path} is not what this CLI expects"))?;
        Ok((value, headers))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> anyhow::Result<T> {
        self.call(Method::POST, path, Some(body)).await
    }
}
