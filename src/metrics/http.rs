//! `/metrics` over HTTP: a small HTTP/1.1 responder on tokio that answers
//! exactly `GET /metrics`, one request per connection.
//!
//! Why not hyper or a web framework: a scraper sends one GET and reads one
//! response; nothing here needs keep-alive, chunking, routing or TLS, and
//! the client's control thread should not grow a second HTTP stack for
//! that. The request head is parsed by `httparse` (already in the build
//! for the WebSocket handshake); what is left is reading with a size and
//! time limit and writing a fixed response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use super::{MetricsError, CONTENT_TYPE};

/// A request head larger than this is refused: a scraper's is a few
/// hundred bytes.
const MAX_REQUEST: usize = 8192;
/// A whole exchange, from accept to the last byte written: a stalled
/// connection cannot hold a slot for longer.
const DEADLINE: Duration = Duration::from_secs(5);
/// Connections answered at once; further ones wait in the listen queue.
const MAX_CONNECTIONS: usize = 16;

/// Produces the text for one scrape.
pub type Render = Arc<dyn Fn() -> Result<String, MetricsError> + Send + Sync>;

/// Binds the `/metrics` listener. Where it cannot (the port is taken, say)
/// the process goes on without `/metrics` and says so: a node that stops
/// carrying traffic for want of its metrics port would be the worse
/// failure, and a client's metrics stay available from `ringlink metrics`.
pub async fn bind(addr: SocketAddr, what: &str) -> Option<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => {
            let at = l.local_addr().unwrap_or(addr);
            info!("{what} metrics on http://{at}/metrics");
            if !at.ip().is_loopback() {
                warn!(
                    "metrics address {at} is not loopback: whoever reaches it sees this {what}'s \
                     peers and traffic counters (set metrics = \"127.0.0.1:{}\" to keep them local)",
                    at.port()
                );
            }
            Some(l)
        }
        Err(e) => {
            error!("cannot serve metrics on {addr}: {e}; running without /metrics");
            None
        }
    }
}

/// `/metrics` where the configuration says, moved by a reload.
pub struct Endpoint {
    what: &'static str,
    render: Render,
    live: Option<(SocketAddr, JoinHandle<()>)>,
}

impl Endpoint {
    /// Serves nowhere yet.
    pub fn new(what: &'static str, render: Render) -> Self {
        Self {
            what,
            render,
            live: None,
        }
    }

    /// Serves on a listener already bound (with [`bind`]).
    pub fn serve(&mut self, listener: TcpListener) {
        self.stop_now();
        if let Ok(at) = listener.local_addr() {
            let task = tokio::spawn(serve(listener, self.render.clone()));
            self.live = Some((at, task));
        }
    }

    /// Stops serving where it does and serves at `addr` instead (`None`:
    /// nowhere). The old port is closed before the new one is bound, so
    /// the same port on another address works. Returns where it serves
    /// now: `None` also when the bind failed, which [`bind`] logged.
    pub async fn rebind(&mut self, addr: Option<SocketAddr>) -> Option<SocketAddr> {
        if let Some((at, task)) = self.live.take() {
            task.abort();
            // Only a finished task has dropped its listener.
            let _ = task.await;
            info!("{} metrics on http://{at}/metrics stopped", self.what);
        }
        if let Some(listener) = match addr {
            Some(a) => bind(a, self.what).await,
            None => None,
        } {
            self.serve(listener);
        }
        self.addr()
    }

    /// Where `/metrics` is served now.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.live.as_ref().map(|(at, _)| *at)
    }

    fn stop_now(&mut self) {
        if let Some((_, task)) = self.live.take() {
            task.abort();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Answers scrapes until the task is dropped.
pub async fn serve(listener: TcpListener, render: Render) {
    let mut open = JoinSet::new();
    loop {
        while open.try_join_next().is_some() {}
        if open.len() >= MAX_CONNECTIONS {
            open.join_next().await;
            continue;
        }
        match listener.accept().await {
            Ok((conn, from)) => {
                let render = render.clone();
                open.spawn(async move {
                    if tokio::time::timeout(DEADLINE, exchange(conn, &render))
                        .await
                        .is_err()
                    {
                        debug!(%from, "metrics request timed out");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors, typically: retrying at once
                // would spin.
                debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Metrics,
    NotFound,
    MethodNotAllowed,
    Malformed,
    TooLarge,
}

/// Decides on the bytes read so far; `None` while the head is incomplete.
fn classify(buf: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("");
            // Scrapers may add query parameters; they select nothing here.
            let path = path.split('?').next().unwrap_or(path);
            Some(match (req.method, path) {
                (Some("GET"), "/metrics") => Request::Metrics,
                (_, "/metrics") => Request::MethodNotAllowed,
                _ => Request::NotFound,
            })
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => Some(Request::TooLarge),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Request::TooLarge),
        Err(_) => Some(Request::Malformed),
    }
}

/// The whole response for `req`.
fn response(req: Request, render: &Render) -> Vec<u8> {
    let (status, extra, content_type, body) = match req {
        Request::Metrics => match render() {
            Ok(text) => ("200 OK", "", CONTENT_TYPE, text),
            Err(e) => (
                "500 Internal Server Error",
                "",
                "text/plain; charset=utf-8",
                format!("{e}\n"),
            ),
        },
        Request::NotFound => (
            "404 Not Found",
            "",
            "text/plain; charset=utf-8",
            "only /metrics is served here\n".to_string(),
        ),
        Request::MethodNotAllowed => (
            "405 Method Not Allowed",
            "Allow: GET\r\n",
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
        Request::Malformed => (
            "400 Bad Request",
            "",
            "text/plain; charset=utf-8",
            "malformed request\n".to_string(),
        ),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "",
            "text/plain; charset=utf-8",
            "request head too large\n".to_string(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// One connection: read the head, answer, close.
async fn exchange(mut conn: TcpStream, render: &Render) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let req = loop {
        match conn.read(&mut chunk).await {
            // Closed or broken before a whole head: nothing to answer.
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(req) = classify(&buf) {
            break req;
        }
    };
    let _ = conn.write_all(&response(req, render)).await;
    let _ = conn.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_get_metrics_is_served() {
        let cases: [(&[u8], Option<Request>); 9] = [
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Some(Request::Metrics),
            ),
            (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", Some(Request::Metrics)),
            (b"GET /metrics HTTP/1.1\r\nHost:", None),
            (b"GET /", None),
            (
                b"POST /metrics HTTP/1.1\r\n\r\n",
                Some(Request::MethodNotAllowed),
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n\r\n",
                Some(Request::MethodNotAllowed),
            ),
            (b"GET / HTTP/1.1\r\n\r\n", Some(Request::NotFound)),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Some(Request::NotFound)),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                Some(Request::Malformed),
            ),
        ];
        for (head, want) in cases {
            assert_eq!(classify(head), want, "{}", String::from_utf8_lossy(head));
        }
        let mut long = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while long.len() < MAX_REQUEST {
            long.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(classify(&long), Some(Request::TooLarge));
    }

    #[test]
    fn responses_carry_length_type_and_close() {
        let render: Render = Arc::new(|| Ok("ringlink_x 1\n".to_string()));
        let ok = String::from_utf8(response(Request::Metrics, &render)).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 13\r\n"), "{ok}");
        assert!(ok.contains("Connection: close\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nringlink_x 1\n"), "{ok}");
        let no = String::from_utf8(response(Request::MethodNotAllowed, &render)).unwrap();
        assert!(
            no.starts_with("HTTP/1.1 405 ") && no.contains("Allow: GET\r\n"),
            "{no}"
        );
        let failing: Render =
            Arc::new(|| Err(MetricsError(prometheus::Error::Msg("broken".into()))));
        let err = String::from_utf8(response(Request::Metrics, &failing)).unwrap();
        assert!(
            err.starts_with("HTTP/1.1 500 ") && err.contains("broken"),
            "{err}"
        );
    }

    /// A rebind closes the old port before it answers on the new one, and
    /// `None` turns `/metrics` off.
    #[test]
    fn endpoint_moves_and_stops() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let render: Render = Arc::new(|| Ok("ringlink_up 1\n".to_string()));
        rt.block_on(async {
            let mut ep = Endpoint::new("test", render);
            let first = ep
                .rebind(Some("127.0.0.1:0".parse().unwrap()))
                .await
                .unwrap();
            assert_eq!(ep.addr(), Some(first));
            assert!(TcpStream::connect(first).await.is_ok());
            let second = ep
                .rebind(Some("127.0.0.1:0".parse().unwrap()))
                .await
                .unwrap();
            assert_ne!(first, second);
            assert!(
                TcpStream::connect(first).await.is_err(),
                "old port still open"
            );
            assert!(TcpStream::connect(second).await.is_ok());
            // The same port again: free once the old listener is gone.
            assert_eq!(ep.rebind(Some(second)).await, Some(second));
            assert_eq!(ep.rebind(None).await, None);
            assert!(TcpStream::connect(second).await.is_err());
            // A port that cannot be bound leaves it off.
            let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let busy = taken.local_addr().unwrap();
            assert_eq!(ep.rebind(Some(busy)).await, None);
            assert_eq!(ep.addr(), None);
        });
    }

    /// A real exchange over loopback, a request split across writes
    /// included, and a silent connection that does not block the next one.
    #[test]
    fn serves_over_tcp() {
        use std::io::{Read, Write};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(bind("127.0.0.1:0".parse().unwrap(), "test"))
            .expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let render: Render = Arc::new(|| Ok("ringlink_up 1\n".to_string()));
        let server = rt.spawn(serve(listener, render));
        let get = |parts: &[&[u8]]| {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            for p in parts {
                c.write_all(p).unwrap();
                c.flush().unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        };
        let _silent = std::net::TcpStream::connect(addr).unwrap();
        let out = get(&[b"GET /metr", b"ics HTTP/1.1\r\nHost: a\r\n", b"\r\n"]);
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.ends_with("\r\n\r\nringlink_up 1\n"), "{out}");
        let out = get(&[b"GET /other HTTP/1.1\r\n\r\n"]);
        assert!(out.starts_with("HTTP/1.1 404 "), "{out}");
        server.abort();
    }
}
