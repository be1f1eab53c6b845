//! A loopback TCP proxy that understands just enough of the PostgreSQL and MySQL wire
//! protocols to find a client's `COMMIT` and cut the connection there: the fault behind
//! "commit outcome unknown".
//!
//! Everything passes through unchanged until the proxy is [armed](CommitCutProxy::arm). The
//! next `COMMIT` a client sends (PostgreSQL: a simple-query `Q` message or a `Parse` whose text
//! starts with `COMMIT`; MySQL: `COM_QUERY` / `COM_STMT_PREPARE` with such a text) is then
//! either
//!
//! * [`CutMode::DropCommit`]: never forwarded; both sockets are closed (the server sees the
//!   client vanish inside the transaction and rolls it back), or
//! * [`CutMode::DropReply`]: forwarded; the proxy waits for the server's first reply byte
//!   (the server has executed the COMMIT), throws the reply away and closes both sockets (the
//!   transaction is committed, but the client never hears so).
//!
//! Either way the client sees its connection die while COMMIT is in flight: it cannot know the
//! outcome. The proxy disarms after one cut.
//!
//! It can also delay every server reply ([`CommitCutProxy::set_reply_delay`]), so that each
//! round trip of a client suspends its future (the cancellation sweep relies on it).
//!
//! TLS would hide the messages: connect through the proxy with TLS off (`sslmode=disable`,
//! `ssl-mode=DISABLED`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The wire protocol the proxy parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// PostgreSQL frontend/backend protocol v3.
    Postgres,
    /// MySQL/MariaDB client/server protocol.
    MySql,
}

/// What to do with the armed COMMIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// Do not forward it: the server never commits.
    DropCommit,
    /// Forward it, wait for the server's reply, discard the reply: the server commits.
    DropReply,
}

struct State {
    upstream: SocketAddr,
    protocol: Protocol,
    armed: Mutex<Option<CutMode>>,
    cuts: AtomicUsize,
    commits_seen: AtomicUsize,
    reply_delay: Mutex<Duration>,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

/// A running proxy; stops (and drops every proxied connection) when dropped.
pub struct CommitCutProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl CommitCutProxy {
    /// Listens on an ephemeral loopback port, forwarding to `upstream` (`host:port`).
    pub async fn start(protocol: Protocol, upstream: &str) -> io::Result<CommitCutProxy> {
        let upstream = tokio::net::lookup_host(upstream)
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "upstream address"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream,
            protocol,
            armed: Mutex::new(None),
            cuts: AtomicUsize::new(0),
            commits_seen: AtomicUsize::new(0),
            reply_delay: Mutex::new(Duration::ZERO),
            connections: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let st2 = st.clone();
                let handle = tokio::spawn(async move {
                    let _ = relay(client, st2).await;
                });
                let mut conns = st.connections.lock().unwrap();
                conns.retain(|h| !h.is_finished());
                conns.push(handle);
            }
        });
        Ok(CommitCutProxy {
            addr,
            state,
            accept,
        })
    }

    /// The port clients connect to (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Cuts the next COMMIT any client sends, in `mode`.
    pub fn arm(&self, mode: CutMode) {
        *self.state.armed.lock().unwrap() = Some(mode);
    }

    /// Disarms without cutting.
    pub fn disarm(&self) {
        *self.state.armed.lock().unwrap() = None;
    }

    /// Holds every chunk the server sends for `delay` before relaying it (network latency):
    /// a client then never finds an answer already there when it starts reading, so every
    /// round trip suspends its future at least once.
    pub fn set_reply_delay(&self, delay: Duration) {
        *self.state.reply_delay.lock().unwrap() = delay;
    }

    /// How many connections were cut at a COMMIT so far.
    pub fn cuts(&self) -> usize {
        self.state.cuts.load(Ordering::SeqCst)
    }

    /// How many COMMITs passed through or were cut so far.
    pub fn commits_seen(&self) -> usize {
        self.state.commits_seen.load(Ordering::SeqCst)
    }
}

impl Drop for CommitCutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for h in self.state.connections.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

/// Splits the client's byte stream into protocol messages.
struct Framer {
    protocol: Protocol,
    /// PostgreSQL: the next message is an untyped startup-phase message.
    pg_untyped: bool,
    buf: Vec<u8>,
}

impl Framer {
    fn new(protocol: Protocol) -> Framer {
        Framer {
            protocol,
            pg_untyped: true,
            buf: Vec::new(),
        }
    }

    /// The next complete message (its raw bytes) and whether it is a COMMIT.
    fn next(&mut self) -> Option<(Vec<u8>, bool)> {
        let (len, commit) = match self.protocol {
            Protocol::Postgres if self.pg_untyped => {
                if self.buf.len() < 8 {
                    return None;
                }
                let len = u32::from_be_bytes(self.buf[0..4].try_into().unwrap()) as usize;
                if self.buf.len() < len {
                    return None;
                }
                let code = u32::from_be_bytes(self.buf[4..8].try_into().unwrap());
                // SSLRequest / GSSENCRequest are followed by another untyped message.
                if code != 80_877_103 && code != 80_877_104 {
                    self.pg_untyped = false;
                }
                (len, false)
            }
            Protocol::Postgres => {
                if self.buf.len() < 5 {
                    return None;
                }
                let len = 1 + u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() < len {
                    return None;
                }
                let body = &self.buf[5..len];
                let commit = match self.buf[0] {
                    b'Q' => is_commit(body),
                    // Parse: statement name (C string), then the query text.
                    b'P' => body
                        .iter()
                        .position(|&b| b == 0)
                        .is_some_and(|name_end| is_commit(&body[name_end + 1..])),
                    _ => false,
                };
                (len, commit)
            }
            Protocol::MySql => {
                if self.buf.len() < 4 {
                    return None;
                }
                let len = 4
                    + (u32::from(self.buf[0])
                        | u32::from(self.buf[1]) << 8
                        | u32::from(self.buf[2]) << 16) as usize;
                if self.buf.len() < len {
                    return None;
                }
                let payload = &self.buf[4..len];
                // COM_QUERY (0x03) or COM_STMT_PREPARE (0x16), then the SQL text.
                let commit =
                    matches!(payload.first(), Some(0x03 | 0x16)) && is_commit(&payload[1..]);
                (len, commit)
            }
        };
        let msg: Vec<u8> = self.buf.drain(..len).collect();
        Some((msg, commit))
    }
}

fn is_commit(text: &[u8]) -> bool {
    let text = String::from_utf8_lossy(text);
    let t = text.trim_start().trim_end_matches('\0').trim();
    t.len() >= 6 && t[..6].eq_ignore_ascii_case("COMMIT")
}

async fn relay(mut client: TcpStream, state: Arc<State>) -> io::Result<()> {
    let mut server = TcpStream::connect(state.upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let mut framer = Framer::new(state.protocol);
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut sbuf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = client.read(&mut cbuf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                framer.buf.extend_from_slice(&cbuf[..n]);
                while let Some((msg, commit)) = framer.next() {
                    if commit {
                        state.commits_seen.fetch_add(1, Ordering::SeqCst);
                        let mode = state.armed.lock().unwrap().take();
                        match mode {
                            Some(CutMode::DropCommit) => {
                                state.cuts.fetch_add(1, Ordering::SeqCst);
                                return Ok(()); // both sockets close here
                            }
                            Some(CutMode::DropReply) => {
                                server.write_all(&msg).await?;
                                server.flush().await?;
                                // The server has executed the COMMIT once it answers.
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(5),
                                    server.read(&mut sbuf),
                                )
                                .await;
                                state.cuts.fetch_add(1, Ordering::SeqCst);
                                return Ok(());
                            }
                            None => {}
                        }
                    }
                    server.write_all(&msg).await?;
                }
            }
            n = server.read(&mut sbuf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                let delay = *state.reply_delay.lock().unwrap();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                client.write_all(&sbuf[..n]).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_pg_commit_in_simple_and_extended_protocol() {
        let mut f = Framer::new(Protocol::Postgres);
        // startup: length 8 + protocol 3.0, no parameters
        f.buf.extend_from_slice(&[0, 0, 0, 8, 0, 3, 0, 0]);
        assert_eq!(f.next().map(|(_, c)| c), Some(false));
        let q = |t: u8, body: &[u8]| {
            let mut m = vec![t];
            m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            m.extend_from_slice(body);
            m
        };
        f.buf.extend(q(b'Q', b"BEGIN READ WRITE\0"));
        f.buf.extend(q(b'Q', b"COMMIT\0"));
        f.buf.extend(q(b'P', b"\0commit\0\0\0"));
        let partial = q(b'Q', b"COMMIT\0");
        f.buf.extend_from_slice(&partial[..3]);
        assert_eq!(f.next().map(|(_, c)| c), Some(false));
        assert_eq!(f.next().map(|(_, c)| c), Some(true));
        assert_eq!(f.next().map(|(_, c)| c), Some(true));
        assert!(f.next().is_none(), "incomplete message");
        f.buf.extend_from_slice(&partial[3..]);
        assert_eq!(f.next().map(|(_, c)| c), Some(true));
    }

    #[test]
    fn finds_mysql_commit() {
        let mut f = Framer::new(Protocol::MySql);
        let p = |payload: &[u8]| {
            let l = payload.len() as u32;
            let mut m = vec![l as u8, (l >> 8) as u8, (l >> 16) as u8, 0];
            m.extend_from_slice(payload);
            m
        };
        f.buf.extend(p(b"\x03START TRANSACTION"));
        f.buf.extend(p(b"\x03COMMIT"));
        assert_eq!(f.next().map(|(_, c)| c), Some(false));
        assert_eq!(f.next().map(|(_, c)| c), Some(true));
    }
}
