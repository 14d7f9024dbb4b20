//! One WebSocket session: relayed packets in both directions, keepalives,
//! and the messages the server pushes. Returns why the session ended.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::iface::Interface;
use super::status::SharedStatus;
use super::ws_client::Ws;
use crate::proto::ws::{encode_forward, encode_keepalive, WsMessage};
use crate::route::subnet::decapsulate;

/// Self-addressed GENERAL every so often: Cacao drops connections idle for
/// 60 s, and the echo tells us the server is still there.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Nothing at all from the server for this long: the connection is dead
/// even if TCP has not noticed (a server host that vanished).
const SILENCE: Duration = Duration::from_secs(35);
/// Frames written before one flush; bounds the time the reader waits on us.
const BATCH: usize = 64;

pub async fn run(ws: Ws, own: Ipv4Addr, iface: &mut Interface, status: &SharedStatus) -> String {
    let (mut sink, mut stream) = ws.split();
    let (packets, writer) = iface.relay_halves();

    let reader = async {
        loop {
            let msg = match timeout(SILENCE, stream.next()).await {
                Err(_) => return format!("nothing from the server for {} s", SILENCE.as_secs()),
                Ok(None) => return "server closed the connection".to_string(),
                Ok(Some(Err(e))) => return e.to_string(),
                Ok(Some(Ok(m))) => m,
            };
            let frame = match msg {
                Message::Binary(f) => f,
                Message::Close(c) => {
                    return match c {
                        Some(c) if !c.reason.is_empty() => format!("server closed the connection: {}", c.reason),
                        _ => "server closed the connection".to_string(),
                    }
                }
                _ => continue,
            };
            match WsMessage::decode(&frame) {
                Ok(WsMessage::Forward(packet)) => {
                    super::set_status(status, |s| s.relay_rx_frames += 1);
                    match decapsulate(packet) {
                        Ok(inner) => {
                            if let Err(e) = writer.write(inner) {
                                debug!(error = %e, "relayed packet not written to the interface");
                            }
                        }
                        Err(e) => debug!(error = %e, "relayed packet dropped"),
                    }
                }
                Ok(WsMessage::SysRoutes(routes)) => {
                    info!(count = routes.len(), "server pushed subnet routes");
                }
                Ok(WsMessage::General(g)) if g.src == own && g.dst == own => {}
                Ok(other) => debug!(message = ?other, "ignored server message"),
                Err(e) => warn!(error = %e, "malformed frame from the server"),
            }
        }
    };

    let sender = async {
        let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
        let mut frame = Vec::new();
        loop {
            tokio::select! {
                first = packets.recv() => {
                    let Some(first) = first else { return "dataplane stopped".to_string() };
                    let mut sent = 0u64;
                    let mut next = Some(first);
                    while let Some(p) = next.take() {
                        encode_forward(&p, &mut frame);
                        if let Err(e) = sink.feed(Message::Binary(std::mem::take(&mut frame))).await {
                            return e.to_string();
                        }
                        sent += 1;
                        if sent < BATCH as u64 {
                            next = packets.try_recv();
                        }
                    }
                    if let Err(e) = sink.flush().await {
                        return e.to_string();
                    }
                    super::set_status(status, |s| s.relay_tx_frames += sent);
                }
                _ = keepalive.tick() => {
                    if let Err(e) = sink.send(Message::Binary(encode_keepalive(own))).await {
                        return e.to_string();
                    }
                }
            }
        }
    };

    tokio::select! {
        why = reader => why,
        why = sender => why,
    }
}
