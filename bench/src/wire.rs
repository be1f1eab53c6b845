//! A loopback TCP proxy that records what clients send a PostgreSQL or MySQL/MariaDB server:
//! every statement executed (with its SQL text), every statement prepared, every ping.
//!
//! It reads the client's messages (and, for MySQL, the first packet of each server reply, to
//! learn the ids the server gives prepared statements) and forwards every byte unchanged. What
//! it records is what reached the server, whichever layer sent it: the application's
//! statements, the driver's `BEGIN`/`COMMIT`/`SAVEPOINT`, session settings, and the pool's
//! liveness pings. TLS would hide the messages: connect with TLS off.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The wire protocol the proxy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// PostgreSQL frontend/backend protocol v3.
    Postgres,
    /// MySQL/MariaDB client/server protocol.
    MySql,
}

/// One thing a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// A statement executed: a simple query (PostgreSQL `Query`, MySQL `COM_QUERY`, whose text
    /// may hold several statements) or an execution of a prepared one (`Execute`,
    /// `COM_STMT_EXECUTE`), with its SQL text.
    Statement(String),
    /// A statement prepared (PostgreSQL `Parse`, MySQL `COM_STMT_PREPARE`): the driver does
    /// it once per connection and statement text, then executes the cached statement.
    Prepare(String),
    /// A liveness check: a PostgreSQL `Sync` with nothing before it, a MySQL `COM_PING`.
    Ping,
}

/// A running proxy; stops (and drops every proxied connection) when dropped.
pub struct CountingProxy {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Sent>>>,
    accept: JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on an ephemeral loopback port, forwarding to `upstream` (`host:port`).
    pub async fn start(protocol: Protocol, upstream: &str) -> io::Result<CountingProxy> {
        // Fail now, not in the first client's connection, when the server is down; and
        // resolve the name once.
        let upstream = TcpStream::connect(upstream).await?.peer_addr()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let accept = tokio::spawn(async move {
            // Dropped with this task when the proxy is: that aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(relay(client, upstream, protocol, log2.clone()));
                while connections.try_join_next().is_some() {}
            }
            connections.join_all().await;
        });
        Ok(CountingProxy { addr, log, accept })
    }

    /// The port clients connect to (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything sent since the last call (or the start), in order of arrival.
    pub fn take(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads one direction of a connection's byte stream as protocol messages.
#[derive(Default)]
struct Buffer(Vec<u8>);

impl Buffer {
    /// The next complete message of `len_of` bytes (given the buffered prefix), if buffered.
    fn next(&mut self, len_of: impl Fn(&[u8]) -> Option<usize>) -> Option<Vec<u8>> {
        let len = len_of(&self.0)?;
        (self.0.len() >= len).then(|| self.0.drain(..len).collect())
    }
}

fn pg_len(untyped: bool) -> impl Fn(&[u8]) -> Option<usize> {
    move |b| {
        if untyped {
            b.get(0..4)
                .map(|l| u32::from_be_bytes(l.try_into().unwrap()) as usize)
        } else {
            b.get(1..5)
                .map(|l| 1 + u32::from_be_bytes(l.try_into().unwrap()) as usize)
        }
    }
}

fn mysql_len(b: &[u8]) -> Option<usize> {
    b.get(0..3)
        .map(|l| 4 + (usize::from(l[0]) | usize::from(l[1]) << 8 | usize::from(l[2]) << 16))
}

/// A C string at the start of `b` and the rest after its NUL.
fn c_str(b: &[u8]) -> (String, &[u8]) {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let rest = b.get(end + 1..).unwrap_or(&[]);
    (String::from_utf8_lossy(&b[..end]).into_owned(), rest)
}

/// What the client side of one PostgreSQL connection has told the server so far.
#[derive(Default)]
struct PgClient {
    started: bool,
    statements: HashMap<String, String>,
    bound: String,
    /// Messages since the last `Sync`: a `Sync` with none is a ping.
    batch: usize,
}

impl PgClient {
    fn message(&mut self, msg: &[u8], log: &Mutex<Vec<Sent>>) {
        if !self.started {
            let code = msg
                .get(4..8)
                .map(|c| u32::from_be_bytes(c.try_into().unwrap()));
            // SSLRequest / GSSENCRequest are followed by another untyped message.
            self.started = !matches!(code, Some(80_877_103 | 80_877_104));
            return;
        }
        let body = &msg[5..];
        let sent = match msg[0] {
            b'Q' => Some(Sent::Statement(c_str(body).0)),
            b'P' => {
                let (name, rest) = c_str(body);
                let text = c_str(rest).0;
                self.statements.insert(name, text.clone());
                Some(Sent::Prepare(text))
            }
            b'B' => {
                let (_portal, rest) = c_str(body);
                self.bound = c_str(rest).0;
                None
            }
            b'E' => Some(Sent::Statement(
                self.statements
                    .get(&self.bound)
                    .cloned()
                    .unwrap_or_default(),
            )),
            b'S' if self.batch == 0 => Some(Sent::Ping),
            _ => None,
        };
        self.batch = if matches!(msg[0], b'S' | b'Q') {
            0
        } else {
            self.batch + 1
        };
        if let Some(sent) = sent {
            log.lock().unwrap().push(sent);
        }
    }
}

/// What one MySQL connection's commands were, to name executed statements by their text.
#[derive(Default)]
struct MySqlSession {
    /// Commands awaiting their reply, oldest first: `Some(text)` for a prepare.
    pending: VecDeque<Option<String>>,
    statements: HashMap<u32, String>,
}

impl MySqlSession {
    fn client(&mut self, msg: &[u8], log: &Mutex<Vec<Sent>>) {
        // Only a command starts a sequence (number 0); the handshake's packets do not.
        if msg[3] != 0 || msg.len() < 5 {
            return;
        }
        let payload = &msg[4..];
        let text = || String::from_utf8_lossy(&payload[1..]).into_owned();
        let (sent, prepare) = match payload[0] {
            0x03 => (Some(Sent::Statement(text())), None),
            0x16 => (Some(Sent::Prepare(text())), Some(text())),
            0x17 => {
                let id = payload
                    .get(1..5)
                    .map_or(0, |i| u32::from_le_bytes(i.try_into().unwrap()));
                let text = self.statements.get(&id).cloned().unwrap_or_default();
                (Some(Sent::Statement(text)), None)
            }
            0x0e => (Some(Sent::Ping), None),
            // COM_STMT_CLOSE, COM_QUIT: no reply.
            0x19 | 0x01 => return,
            _ => (None, None),
        };
        self.pending.push_back(prepare);
        if let Some(sent) = sent {
            log.lock().unwrap().push(sent);
        }
    }

    fn server(&mut self, msg: &[u8]) {
        // The first packet of a reply has sequence number 1; a prepare's starts with 0x00
        // and the statement id.
        if msg[3] != 1 {
            return;
        }
        if let Some(Some(text)) = self.pending.pop_front()
            && msg.get(4) == Some(&0)
            && let Some(id) = msg.get(5..9)
        {
            self.statements
                .insert(u32::from_le_bytes(id.try_into().unwrap()), text);
        }
    }
}

/// What one connection's two byte streams have said so far, in the protocol it speaks.
struct Session {
    protocol: Protocol,
    pg: PgClient,
    my: MySqlSession,
    from_client: Buffer,
    from_server: Buffer,
    log: Arc<Mutex<Vec<Sent>>>,
}

impl Session {
    /// Bytes the client sent, before they are forwarded.
    fn client(&mut self, bytes: &[u8]) {
        self.from_client.0.extend_from_slice(bytes);
        match self.protocol {
            Protocol::Postgres => {
                while let Some(msg) = self.from_client.next(pg_len(!self.pg.started)) {
                    self.pg.message(&msg, &self.log);
                }
            }
            Protocol::MySql => {
                while let Some(msg) = self.from_client.next(mysql_len) {
                    self.my.client(&msg, &self.log);
                }
            }
        }
    }

    /// Bytes the server sent, before they are forwarded: MySQL's replies name prepared
    /// statements.
    fn server(&mut self, bytes: &[u8]) {
        if self.protocol == Protocol::MySql {
            self.from_server.0.extend_from_slice(bytes);
            while let Some(msg) = self.from_server.next(mysql_len) {
                self.my.server(&msg);
            }
        }
    }
}

/// Forwards `from` to `to` until `from` ends, showing each chunk to `observe` first.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut observe: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        observe(&buf[..n]);
        to.write_all(&buf[..n]).await?;
    }
}

/// Relays one client connection until either side closes it. A client's bytes are observed
/// before they are forwarded, so the server's reply to a command is always observed after it.
async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    protocol: Protocol,
    log: Arc<Mutex<Vec<Sent>>>,
) -> io::Result<()> {
    let mut server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let session = Mutex::new(Session {
        protocol,
        pg: PgClient::default(),
        my: MySqlSession::default(),
        from_client: Buffer::default(),
        from_server: Buffer::default(),
        log,
    });
    let (client_rx, client_tx) = client.split();
    let (server_rx, server_tx) = server.split();
    tokio::select! {
        r = pump(client_rx, server_tx, |b| session.lock().unwrap().client(b)) => r,
        r = pump(server_rx, client_tx, |b| session.lock().unwrap().server(b)) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `"ping"`, `"prepare <sql>"`, or a statement's text.
    fn expect(spec: &[&str]) -> Vec<Sent> {
        spec.iter()
            .map(|s| match (*s, s.strip_prefix("prepare ")) {
                ("ping", _) => Sent::Ping,
                (_, Some(sql)) => Sent::Prepare(sql.to_owned()),
                (sql, None) => Sent::Statement(sql.to_owned()),
            })
            .collect()
    }

    fn pg_msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![t];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn mysql_packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let l = payload.len() as u32;
        let mut m = vec![l as u8, (l >> 8) as u8, (l >> 16) as u8, seq];
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn postgres_statements_prepares_and_pings() {
        let log = Mutex::new(Vec::new());
        let mut c = PgClient::default();
        let mut buf = Buffer::default();
        buf.0.extend_from_slice(&[0, 0, 0, 8, 0, 3, 0, 0]);
        buf.0.extend(pg_msg(b'Q', b"BEGIN\0"));
        buf.0.extend(pg_msg(b'P', b"s1\0SELECT 1\0\0\0"));
        buf.0.extend(pg_msg(b'D', b"Ss1\0"));
        buf.0.extend(pg_msg(b'S', b""));
        buf.0.extend(pg_msg(b'B', b"\0s1\0\0\0\0\0\0\0"));
        buf.0.extend(pg_msg(b'E', b"\0\0\0\0\0"));
        buf.0.extend(pg_msg(b'S', b""));
        buf.0.extend(pg_msg(b'S', b""));
        let partial = pg_msg(b'Q', b"COMMIT\0");
        // A message split across two reads is taken once complete.
        for part in [&partial[..3], &partial[3..]] {
            buf.0.extend_from_slice(part);
            while let Some(m) = buf.next(pg_len(!c.started)) {
                c.message(&m, &log);
            }
        }
        let expected = expect(&["BEGIN", "prepare SELECT 1", "SELECT 1", "ping", "COMMIT"]);
        assert_eq!(log.into_inner().unwrap(), expected);
    }

    #[test]
    fn mysql_names_executed_statements_by_their_prepared_text() {
        let log = Mutex::new(Vec::new());
        let mut s = MySqlSession::default();
        s.client(&mysql_packet(1, b"handshake response"), &log);
        s.client(&mysql_packet(0, b"\x03START TRANSACTION"), &log);
        s.server(&mysql_packet(1, b"\x00\x00\x00"));
        s.client(&mysql_packet(0, b"\x16SELECT ?"), &log);
        s.server(&mysql_packet(1, b"\x00\x07\x00\x00\x00\x01\x00"));
        s.server(&mysql_packet(2, b"column definition"));
        s.client(&mysql_packet(0, b"\x17\x07\x00\x00\x00\x00"), &log);
        s.client(&mysql_packet(0, b"\x0e"), &log);
        let expected = expect(&["START TRANSACTION", "prepare SELECT ?", "SELECT ?", "ping"]);
        assert_eq!(log.into_inner().unwrap(), expected);
    }
}
