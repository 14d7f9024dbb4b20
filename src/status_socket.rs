//! The unix socket a running process answers `ringlink status` on: each
//! connection gets one JSON document and is closed. The client serves its
//! peers and counters (`control::status`), the server its members
//! (`server::status`); the CLI fetches either with [`query`].

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

/// Binds the socket at `path` (its directory made if need be). Bound
/// before the process says it is ready, so `ringlink status` works as
/// soon as systemd reports the service up.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket file left by a crashed run would make bind fail.
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
}

/// Serves `document()` until the task is dropped. Each connection gets one
/// document and is closed, so a stuck reader cannot pile up.
pub async fn serve<T: Serialize>(
    listener: UnixListener,
    document: impl Fn() -> T + 'static,
) -> std::io::Result<()> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        let body = serde_json::to_vec(&document()).unwrap_or_default();
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.write_all(&body)).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot reach a running {who} at {}: {source} (is `ringlink {who}` running?)", path.display())]
    Connect {
        path: PathBuf,
        /// "client" or "server".
        who: &'static str,
        source: std::io::Error,
    },
    #[error("reading status from {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed status from {}: {source}", path.display())]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The CLI side: fetch the document from a running `ringlink {who}`.
pub fn query<T: DeserializeOwned>(path: &Path, who: &'static str) -> Result<T, QueryError> {
    let path_buf = || path.to_owned();
    let mut conn = UnixStream::connect(path).map_err(|source| QueryError::Connect {
        path: path_buf(),
        who,
        source,
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    conn.flush().ok();
    let mut body = Vec::new();
    conn.read_to_end(&mut body)
        .map_err(|source| QueryError::Read {
            path: path_buf(),
            source,
        })?;
    serde_json::from_slice(&body).map_err(|source| QueryError::Malformed {
        path: path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_process_the_error_names_it() {
        let e = query::<serde_json::Value>(Path::new("/nonexistent/ringlink.sock"), "server")
            .unwrap_err();
        assert!(matches!(e, QueryError::Connect { .. }), "{e}");
        assert!(
            e.to_string().contains("is `ringlink server` running?"),
            "{e}"
        );
    }

    #[test]
    fn a_document_of_another_shape_is_malformed_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("ringlink-sock-{}", std::process::id()));
        let path = dir.join("s.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let server = tokio::spawn(serve(bind(&path).unwrap(), || vec![1, 2, 3]));
            let p = path.clone();
            let got = tokio::task::spawn_blocking(move || {
                query::<std::collections::HashMap<String, u8>>(&p, "client")
            })
            .await
            .unwrap();
            server.abort();
            got
        });
        assert!(matches!(got, Err(QueryError::Malformed { .. })), "{got:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
