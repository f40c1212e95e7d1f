//! The HTTP client of the OTLP exporter: hyper on a one-thread Tokio runtime of its own.
//!
//! The SDK's batch span processor exports from its own thread, outside any runtime. Giving the client
//! its own runtime means a flush never waits on the application's runtime, so it cannot deadlock a
//! current-thread runtime and works after the application's runtime has stopped.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError};
use tokio::runtime::Runtime;

/// Collector replies are small; anything bigger is not an OTLP response.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

pub(crate) struct ExportClient {
    runtime: Option<Runtime>,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ExportClient {
    pub(crate) fn new(timeout: Duration) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self {
            runtime: Some(runtime),
            client,
            timeout,
        })
    }
}

impl ExportClient {
    /// The export timeout, which also bounds retries.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `future` to completion on the client's runtime, blocking the calling thread, which must not
    /// be a runtime thread.
    pub(crate) fn block_on<T>(
        &self,
        future: impl Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        match &self.runtime {
            Some(runtime) => runtime.block_on(future),
            None => Err("the OTLP export runtime has stopped".to_owned()),
        }
    }

    /// Waits on the client's own runtime, so a retry backoff works from the batch processor's thread,
    /// which runs no runtime.
    pub(crate) async fn sleep(&self, duration: Duration) {
        if let Some(runtime) = &self.runtime {
            // An error means the runtime is shutting down; the next attempt then fails on its own.
            let _ = runtime.spawn(tokio::time::sleep(duration)).await;
        }
    }
}

impl Drop for ExportClient {
    fn drop(&mut self) {
        // A runtime dropped normally blocks, which panics inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl HttpClient for ExportClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let client = self.client.clone();
        let timeout = self.timeout;
        let handle = self.runtime.as_ref().map(|r| r.handle().clone());
        Box::pin(async move {
            let handle = handle.ok_or("the OTLP export runtime has stopped")?;
            let exchange = async move {
                let response = client.request(request.map(Full::new)).await?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_RESPONSE_BYTES)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            };
            let task = handle.spawn(async move {
                match tokio::time::timeout(timeout, exchange).await {
                    Ok(result) => result,
                    Err(_) => Err(HttpError::from(format!(
                        "OTLP export timed out after {timeout:?}"
                    ))),
                }
            });
            task.await?
        })
    }
}
