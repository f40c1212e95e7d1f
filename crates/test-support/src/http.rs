//! An axum app served over real TCP on a loopback port, for tests that need a live HTTP server
//! (an origin behind a client-side layer, an OTLP collector, a Prometheus scrape).

use std::io;
use std::net::SocketAddr;

use tokio::task::JoinHandle;

/// Serves `app` on a fresh `127.0.0.1` port from a spawned task; returns the address and the
/// task, which serves until it is aborted. Call it inside a tokio runtime.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// let (addr, server) = test_support::serve(app).await?;
/// assert!(addr.ip().is_loopback());
/// server.abort();
/// # Ok::<(), std::io::Error>(())
/// # }).unwrap();
/// ```
pub async fn serve(app: axum::Router) -> io::Result<(SocketAddr, JoinHandle<io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, server))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn answers_http_on_loopback_until_aborted() {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let (addr, server) = super::serve(app).await.unwrap();
        assert!(addr.ip().is_loopback());

        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nhello"), "{response}");

        server.abort();
        assert!(server.await.unwrap_err().is_cancelled());
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
