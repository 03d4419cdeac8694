//! A small blocking client of a running node's HTTP API, for the shell and the CLI.
//!
//! It speaks HTTP/1.1 with hyper (already in the tree through axum) on a current-thread
//! runtime, one connection per request: the API is local and requests are few. A node is
//! found through `<data dir>/node.api`, which a running daemon writes; a stale file (the
//! node was killed) is recognised because nothing answers there.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::http::uri::Scheme;
use hyper::{header, Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;

use crate::data_dir;

/// How long a request may take before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting may take (the API is local).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to a node's API.
#[derive(Debug)]
pub struct Client {
    /// `host:port`.
    authority: String,
    token: Option<String>,
    runtime: tokio::runtime::Runtime,
}

/// The `HOST:PORT` of an API URL `http://HOST:PORT` (http's `Uri` parses it): the API is
/// plain HTTP at the root, so a trailing `/` is all the path it may have, and user info or
/// a query would be ignored, so they are refused.
fn api_authority(url: &str) -> Result<String> {
    let uri: Uri = url.parse().with_context(|| format!("API URL {url:?} must be http://HOST:PORT"))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        bail!("API URL {url:?} must start with http://");
    }
    match uri.authority() {
        Some(authority) if !authority.as_str().contains('@') && uri.path() == "/" && uri.query().is_none() => {
            Ok(authority.as_str().to_string())
        }
        _ => bail!("API URL {url:?} must be http://HOST:PORT"),
    }
}

impl Client {
    /// A client for `url` (`http://host:port`).
    pub fn new(url: &str, token: Option<String>) -> Result<Client> {
        let authority = api_authority(url)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client runtime")?;
        Ok(Client { authority, token, runtime })
    }

    /// The node running on `data_dir`, if one answers; `None` if none runs there.
    pub fn discover(data_dir: &Path, token: Option<String>) -> Result<Option<Client>> {
        let Some(url) = data_dir::advertised_url(data_dir)? else { return Ok(None) };
        let client = Client::new(&url, token)?;
        // Any answer means a node runs there: an unhealthy one (503) still holds the store.
        let answered = client.runtime.block_on(client.send(Method::GET, "/v1/health", None)).is_ok();
        Ok(answered.then_some(client))
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Json> {
        self.request(Method::GET, path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Json) -> Result<Json> {
        self.request(Method::POST, path, Some(body))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<Json> {
        self.request(Method::DELETE, path, None)
    }

    fn request(&self, method: Method, path: &str, body: Option<&Json>) -> Result<Json> {
        let (status, bytes) = self.runtime.block_on(self.send(method, path, body))?;
        let answer: Json = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} answered HTTP {status} with a body that is not JSON", self.url()))?;
        if !status.is_success() {
            let message = answer["error"].as_str().map_or_else(|| answer.to_string(), str::to_string);
            bail!("{message}");
        }
        Ok(answer)
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Json>) -> Result<(hyper::StatusCode, Vec<u8>)> {
        let connect = tokio::net::TcpStream::connect(&self.authority);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| anyhow!("connecting to {} timed out", self.url()))?
            .with_context(|| format!("connecting to the node at {}", self.url()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake")?;
        tokio::spawn(connection);
        let mut request = Request::builder().method(method).uri(path).header(header::HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(json.to_string())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body)).context("building the request")?;
        let exchange = async {
            let response = sender.send_request(request).await.context("sending the request")?;
            let status = response.status();
            let bytes = response.into_body().collect().await.context("reading the answer")?.to_bytes();
            Ok::<_, anyhow::Error>((status, bytes.to_vec()))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("{} did not answer in time", self.url()))?
    }
}

#[cfg(test)]
mod tests {
    use super::api_authority;

    #[test]
    fn api_urls_are_plain_http_at_the_root() {
        for (url, authority) in [
            ("http://127.0.0.1:7480", "127.0.0.1:7480"),
            ("http://127.0.0.1:7480/", "127.0.0.1:7480"),
            ("http://[::1]:80", "[::1]:80"),
        ] {
            assert_eq!(api_authority(url).expect(url), authority);
        }
        for url in [
            "https://127.0.0.1:7480",
            "127.0.0.1:7480",
            "http://",
            "http://h:1/v1",
            "http://u@h:1",
            "http://h:1/?a=1",
            "",
        ] {
            assert!(api_authority(url).is_err(), "{url} should be refused");
        }
    }
}
