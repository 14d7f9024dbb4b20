//! Connecting to the server and logging in (PROTOCOL.md §2.2).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::stream::MaybeTls;
use super::{ClientError, ConnectError, LinkLost, Refusal};
use crate::config::ServerUrl;
use crate::proto::ws::{Auth, ExptTun, Vmac, WsMessage, MAX_FRAME};
use crate::proto::Ipv4Cidr;

pub type Ws = WebSocketStream<MaybeTls>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub fn ws_config() -> WebSocketConfig {
    // Candy frames are at most 1500 bytes; leave room for ringlink
    // extensions but never buffer megabytes for a misbehaving peer.
    WebSocketConfig {
        max_frame_size: Some(4 * MAX_FRAME),
        max_message_size: Some(4 * MAX_FRAME),
        ..WebSocketConfig::default()
    }
}

/// Connects to `url`, through TLS exactly when `tls` is given (config made
/// that choice from the scheme; this does not look at it again).
pub async fn connect(url: &ServerUrl, tls: Option<&TlsConnector>) -> Result<Ws, ClientError> {
    let target = format!("{}:{}", url.host, url.port);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&target)
        .await
        .map_err(|source| ConnectError::Resolve {
            target: target.clone(),
            source,
        })?
        .filter(|a| a.is_ipv4())
        .collect();
    let addr = *addrs.first().ok_or(ConnectError::NoIpv4 { target })?;
    let tcp = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout {
            addr,
            stage: "connect",
        })?
        .map_err(|source| ConnectError::Tcp { addr, source })?;
    tcp.set_nodelay(true).ok();
    crate::sys::tcp::limit_unsent(&tcp);
    let stream = match tls {
        Some(connector) => {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|_| ConnectError::ServerName(url.host.clone()))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|source| ConnectError::TlsHandshake { addr, source })?;
            MaybeTls::Tls(Box::new(tls))
        }
        None => MaybeTls::Plain(tcp),
    };
    let request = url
        .to_url()
        .into_client_request()
        .map_err(|source| ConnectError::Request {
            url: url.to_url(),
            source,
        })?;
    let (ws, _) = timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config())),
    )
    .await
    .map_err(|_| ConnectError::Timeout {
        addr,
        stage: "WebSocket handshake",
    })?
    .map_err(|source| ConnectError::WsHandshake { addr, source })?;
    Ok(ws)
}

/// What address to ask for.
#[derive(Debug, Clone, Copy)]
pub enum Wanted {
    /// `address` from the config: claimed directly with AUTH.
    Static(Ipv4Cidr),
    /// From the pool, preferring the one we had before a reconnect.
    Pool(Option<Ipv4Cidr>),
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// VMAC, then EXPTTUN if needed, then AUTH. Returns the address claimed.
/// The server never acknowledges AUTH; a refusal shows up as the
/// connection closing, which the session loop reports.
pub async fn login(
    ws: &mut Ws,
    password: &[u8],
    vmac: [u8; 16],
    wanted: Wanted,
) -> Result<Ipv4Cidr, ClientError> {
    send(ws, Vmac::new(password, vmac, unix_now()).encode()).await?;
    let cidr = match wanted {
        Wanted::Static(c) => c,
        Wanted::Pool(previous) => {
            let ask = previous.unwrap_or_else(ExptTun::unspecified_cidr);
            send(ws, ExptTun::new(password, ask, unix_now()).encode()).await?;
            let reply = timeout(CONNECT_TIMEOUT, wait_for_grant(ws))
                .await
                .map_err(|_| Refusal::NoGrant(CONNECT_TIMEOUT))??;
            // Candy clients take the grant on trust; we check that the
            // server knows the password before using what it says.
            if !reply.verify(password) {
                return Err(Refusal::BadGrant.into());
            }
            reply.cidr
        }
    };
    // The marker tells a ringlink server it may send ringlink-only
    // messages (TURN_OFFER); stock servers ignore the bytes.
    send(
        ws,
        Auth::new(password, cidr.addr, unix_now())
            .ringlink()
            .encode(),
    )
    .await?;
    Ok(cidr)
}

async fn send(ws: &mut Ws, frame: Vec<u8>) -> Result<(), ClientError> {
    ws.send(Message::Binary(frame))
        .await
        .map_err(|e| LinkLost::WebSocket(e).into())
}

async fn wait_for_grant(ws: &mut Ws) -> Result<ExptTun, ClientError> {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Binary(frame)) => {
                if let Ok(WsMessage::ExptTun(e)) = WsMessage::decode(&frame) {
                    return Ok(e);
                }
            }
            Ok(Message::Close(reason)) => {
                let why = reason.map(|r| r.reason.to_string()).unwrap_or_default();
                return Err(Refusal::Closed(why).into());
            }
            Ok(_) => {}
            Err(e) => return Err(LinkLost::WebSocket(e).into()),
        }
    }
    Err(Refusal::ClosedBeforeGrant.into())
}
