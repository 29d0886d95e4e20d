//! One connection to PostgreSQL: transport (TCP, Unix socket, TLS), startup and
//! authentication, the simple-query protocol, and the frame reader that the
//! replication stream builds on.
//!
//! Cancel safety: the read buffer and the write buffer live in the [`Connection`].
//! A read that is dropped (by `tokio::select!`) loses no bytes, a write that is
//! dropped leaves its unsent bytes queued for the next call, and a command whose
//! future is dropped half-way leaves the connection in a state that the next
//! command first drains (`Busy`, `Copy`), so the protocol never desynchronises.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::conninfo::{ConnInfo, SslMode};
use super::message::{self, AuthRequest, Frame};
use super::{pgpass, tls, PgError};

/// How to open a connection, beyond the connection string.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Open a physical replication connection (`replication=true`, no database).
    pub replication: bool,
    /// The `application_name` to report; overrides the connection string's.
    pub application_name: Option<String>,
    /// Give up connecting (transport, TLS and authentication) after this long;
    /// overrides the connection string's `connect_timeout`.
    pub connect_timeout: Option<Duration>,
}

/// One row of a simple-query result, in text format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The column names of the result set this row belongs to.
    pub columns: Arc<Vec<String>>,
    /// The values, `None` for SQL NULL.
    pub values: Vec<Option<String>>,
}

impl Row {
    /// The value of the first column named `column` (`None` if NULL or no such column).
    pub fn get(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.get_idx(i)
    }

    /// The value of column `i` (`None` if NULL or out of range).
    pub fn get_idx(&self, i: usize) -> Option<&str> {
        self.values.get(i).and_then(|v| v.as_deref())
    }
}

/// The byte stream under a connection.
enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where the conversation with the server stands.
#[derive(Debug)]
pub(crate) enum State {
    /// ReadyForQuery seen: a command may be sent.
    Idle,
    /// A command was sent; its answers up to ReadyForQuery are not all read yet.
    Busy,
    /// In COPY BOTH mode (a replication stream).
    Copy(CopyState),
    /// Unusable (I/O or protocol error, or the server went away): the reason.
    Broken(String),
}

/// Progress through the end of a COPY BOTH stream.
#[derive(Debug, Default)]
pub(crate) struct CopyState {
    /// We sent CopyDone.
    pub client_done: bool,
    /// The server sent CopyDone.
    pub server_done: bool,
    /// The `(next_tli, next_tli_startpos)` row after the server's CopyDone.
    pub next_timeline: Option<(crate::types::TimeLineId, crate::types::Lsn)>,
}

/// An open connection to a PostgreSQL server (ordinary or replication).
pub struct Connection {
    transport: Transport,
    rbuf: BytesMut,
    wbuf: BytesMut,
    params: HashMap<String, String>,
    backend_pid: i32,
    secret_key: i32,
    target: String,
    cancel_addr: CancelAddr,
    pub(crate) state: State,
}

/// Where a connection's server listens, for cancel requests.
#[derive(Clone, Debug)]
enum CancelAddr {
    Tcp(SocketAddr),
    Unix(String),
    Unknown,
}

/// Cancels the command running on a [`Connection`] (libpq's `PQcancel`): a
/// CancelRequest on a new, plain transport to the same server.
#[derive(Clone, Debug)]
pub struct CancelToken {
    pid: i32,
    secret_key: i32,
    addr: CancelAddr,
}

impl CancelToken {
    /// Sends the cancel request. Success means it was delivered, not that a
    /// command was cancelled (the server never says).
    pub async fn cancel(&self) -> Result<(), PgError> {
        let mut buf = BytesMut::new();
        frontend::cancel_request(self.pid, self.secret_key, &mut buf);
        let (target, result) = match &self.addr {
            CancelAddr::Tcp(a) => (
                a.to_string(),
                match TcpStream::connect(a).await {
                    Ok(s) => send_cancel(s, &buf).await,
                    Err(e) => Err(e),
                },
            ),
            CancelAddr::Unix(path) => (
                path.clone(),
                match UnixStream::connect(path).await {
                    Ok(s) => send_cancel(s, &buf).await,
                    Err(e) => Err(e),
                },
            ),
            CancelAddr::Unknown => {
                return Err(PgError::Protocol(
                    "the server address for a cancel request is unknown".to_string(),
                ))
            }
        };
        result.map_err(|source| PgError::Connect { target, source })
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("target", &self.target)
            .field("backend_pid", &self.backend_pid)
            .field("state", &self.state)
            .finish()
    }
}

/// Writes a CancelRequest and waits for the server to hang up.
async fn send_cancel<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
) -> io::Result<()> {
    s.write_all(request).await?;
    // The server closes the connection once it has read the request; its EOF (or
    // an error) is the only answer there is.
    let _ = s.read_u8().await;
    Ok(())
}

/// What startup needs, resolved once from the connection string and options.
struct Setup<'a> {
    info: &'a ConnInfo,
    user: String,
    replication: bool,
    params: Vec<(String, String)>,
}

impl<'a> Setup<'a> {
    fn new(info: &'a ConnInfo, opts: &ConnectOptions) -> Result<Self, PgError> {
        let replication = opts.replication || info.is_replication();
        let user = info.user();
        if user.is_empty() {
            return Err(PgError::Config(
                "no user name: set user in the connection string or PGUSER".to_string(),
            ));
        }
        let mut params = vec![("user".to_string(), user.clone())];
        if replication {
            params.push(("replication".to_string(), "true".to_string()));
        } else if let Some(db) = info.dbname() {
            params.push(("database".to_string(), db));
        }
        let app = opts
            .application_name
            .clone()
            .or_else(|| info.application_name());
        if let Some(app) = app {
            params.push(("application_name".to_string(), app));
        }
        if let Some(o) = info.resolve("options") {
            params.push(("options".to_string(), o));
        }
        let encoding = info
            .resolve("client_encoding")
            .unwrap_or_else(|| "UTF8".to_string());
        params.push(("client_encoding".to_string(), encoding));
        Ok(Setup {
            info,
            user,
            replication,
            params,
        })
    }

    /// The password to answer a password request with: conninfo, PGPASSWORD, pgpass.
    fn password(&self) -> Result<String, PgError> {
        if let Some(p) = self.info.password() {
            return Ok(p);
        }
        let db = if self.replication {
            "replication".to_string()
        } else {
            self.info.dbname().unwrap_or_default()
        };
        let file = self.info.passfile();
        pgpass::lookup(
            file.as_deref(),
            &self.info.host(),
            self.info.port(),
            &db,
            &self.user,
        )
        .ok_or_else(|| {
            PgError::Auth(
                "password required but none found (conninfo, PGPASSWORD or pgpass)".to_string(),
            )
        })
    }
}

/// `host:port` or the socket path, for messages.
fn describe_target(info: &ConnInfo) -> String {
    if info.is_unix_socket() {
        socket_path(info)
    } else {
        let host = info.hostaddr().unwrap_or_else(|| info.host());
        if host.contains(':') {
            format!("[{host}]:{}", info.port())
        } else {
            format!("{host}:{}", info.port())
        }
    }
}

fn socket_path(info: &ConnInfo) -> String {
    format!(
        "{}/.s.PGSQL.{}",
        info.host().trim_end_matches('/'),
        info.port()
    )
}

/// TCP keepalives and user timeout as libpq sets them (keepalives on by default).
fn configure_socket(sock: &TcpStream, info: &ConnInfo) {
    use std::os::fd::AsRawFd;
    if let Err(e) = sock.set_nodelay(true) {
        tracing::debug!("could not set TCP_NODELAY: {e}");
    }
    let fd = sock.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int, what: &str| {
        // SAFETY: `fd` is an open socket owned by `sock` for the duration of the
        // call, and `value` is a live c_int whose size is passed along.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!("could not set {what}: {}", io::Error::last_os_error());
        }
    };
    let int = |key: &str| {
        info.resolve(key)
            .and_then(|v| v.trim().parse::<libc::c_int>().ok())
    };
    let enabled = !matches!(int("keepalives"), Some(0));
    set(
        libc::SOL_SOCKET,
        libc::SO_KEEPALIVE,
        enabled as libc::c_int,
        "SO_KEEPALIVE",
    );
    #[cfg(target_os = "linux")]
    {
        if enabled {
            if let Some(v) = int("keepalives_idle").filter(|v| *v > 0) {
                set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, v, "TCP_KEEPIDLE");
            }
            if let Some(v) = int("keepalives_interval").filter(|v| *v > 0) {
                set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, v, "TCP_KEEPINTVL");
            }
            if let Some(v) = int("keepalives_count").filter(|v| *v > 0) {
                set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, v, "TCP_KEEPCNT");
            }
        }
        if let Some(v) = int("tcp_user_timeout").filter(|v| *v > 0) {
            set(
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                v,
                "TCP_USER_TIMEOUT",
            );
        }
    }
}

impl Connection {
    /// Connects and authenticates. The whole of it (name resolution, TCP, TLS,
    /// authentication) is bounded by `opts.connect_timeout` or the connection
    /// string's `connect_timeout`.
    pub async fn connect(info: &ConnInfo, opts: &ConnectOptions) -> Result<Connection, PgError> {
        info.validate()?;
        let target = describe_target(info);
        let fut = Self::connect_any(info, opts, &target);
        match opts.connect_timeout.or_else(|| info.connect_timeout()) {
            Some(limit) => match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(PgError::Connect {
                    target,
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("timeout expired after {} s", limit.as_secs_f64()),
                    ),
                }),
            },
            None => fut.await,
        }
    }

    async fn connect_any(
        info: &ConnInfo,
        opts: &ConnectOptions,
        target: &str,
    ) -> Result<Connection, PgError> {
        let setup = Setup::new(info, opts)?;
        if info.is_unix_socket() {
            // libpq never uses TLS on Unix sockets, whatever sslmode says.
            let s = UnixStream::connect(target)
                .await
                .map_err(|source| PgError::Connect {
                    target: target.to_string(),
                    source,
                })?;
            return Self::startup(Transport::Unix(s), &setup, target).await;
        }
        let addrs = Self::resolve(info, target).await?;
        match info.sslmode() {
            SslMode::Disable => Self::attempt_plain(&addrs, &setup, target).await,
            SslMode::Allow => match Self::attempt_plain(&addrs, &setup, target).await {
                Err(first @ PgError::Server { .. }) => {
                    tracing::debug!("plain connection refused ({first}); retrying with TLS");
                    Self::attempt_tls(&addrs, &setup, target, true)
                        .await
                        .map_err(|_| first)
                }
                r => r,
            },
            SslMode::Prefer => Self::attempt_tls(&addrs, &setup, target, false).await,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                Self::attempt_tls(&addrs, &setup, target, true).await
            }
        }
    }

    async fn resolve(info: &ConnInfo, target: &str) -> Result<Vec<SocketAddr>, PgError> {
        let port = info.port();
        if let Some(a) = info.hostaddr() {
            let ip: IpAddr = a
                .parse()
                .map_err(|_| PgError::Config(format!("could not parse network address \"{a}\"")))?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let host = info.host();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| PgError::Connect {
                target: target.to_string(),
                source: io::Error::new(
                    e.kind(),
                    format!("could not translate host name \"{host}\" to address: {e}"),
                ),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(PgError::Connect {
                target: target.to_string(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("host name \"{host}\" has no address"),
                ),
            });
        }
        Ok(addrs)
    }

    /// TCP to the first address that accepts, as libpq tries them in order.
    async fn connect_tcp(
        addrs: &[SocketAddr],
        setup: &Setup<'_>,
        target: &str,
    ) -> Result<(TcpStream, SocketAddr), PgError> {
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    configure_socket(&s, setup.info);
                    return Ok((s, *addr));
                }
                Err(e) => {
                    tracing::debug!("connection to {addr} failed: {e}");
                    last = Some(e);
                }
            }
        }
        Err(PgError::Connect {
            target: target.to_string(),
            source: last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")),
        })
    }

    async fn attempt_plain(
        addrs: &[SocketAddr],
        setup: &Setup<'_>,
        target: &str,
    ) -> Result<Connection, PgError> {
        let (s, _) = Self::connect_tcp(addrs, setup, target).await?;
        Self::startup(Transport::Tcp(s), setup, target).await
    }

    /// SSLRequest, then TLS; when `required` is false (`prefer`), a refusal, a
    /// failed handshake or a refused TLS login falls back to a plain connection.
    async fn attempt_tls(
        addrs: &[SocketAddr],
        setup: &Setup<'_>,
        target: &str,
        required: bool,
    ) -> Result<Connection, PgError> {
        let info = setup.info;
        let mode = info.sslmode();
        let config = match tls::client_config(info, mode) {
            Ok(c) => c,
            Err(e) if !required => {
                tracing::debug!("TLS unavailable ({e}); connecting without it");
                return Self::attempt_plain(addrs, setup, target).await;
            }
            Err(e) => return Err(e),
        };
        let (mut s, addr) = Self::connect_tcp(addrs, setup, target).await?;
        let mut req = BytesMut::new();
        frontend::ssl_request(&mut req);
        s.write_all(&req).await?;
        // Exactly one byte: nothing may be buffered past it (CVE-2021-23222).
        let answer = s.read_u8().await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                PgError::Closed
            } else {
                PgError::Io(e)
            }
        })?;
        match answer {
            b'S' => {}
            b'N' if required => {
                return Err(PgError::Tls(format!(
                    "server does not support SSL, but sslmode={mode} requires it"
                )))
            }
            b'N' => return Self::startup(Transport::Tcp(s), setup, target).await,
            b'E' => {
                return Err(PgError::Protocol(
                    "server answered the SSL request with an error (server too old?)".to_string(),
                ))
            }
            other => {
                return Err(PgError::Protocol(format!(
                    "unexpected answer {other:#04x} to the SSL request"
                )))
            }
        }
        let level = tls::verify_level(mode, info.resolve("sslrootcert").is_some());
        let name = tls::server_name(&info.host(), addr.ip(), level)?;
        let tls_stream = match TlsConnector::from(config).connect(name, s).await {
            Ok(t) => t,
            Err(e) if !required => {
                tracing::debug!("TLS handshake failed ({e}); connecting without TLS");
                return Self::attempt_plain(addrs, setup, target).await;
            }
            Err(e) => return Err(PgError::Tls(e.to_string())),
        };
        match Self::startup(Transport::Tls(Box::new(tls_stream)), setup, target).await {
            Err(e @ PgError::Server { .. }) if !required => {
                tracing::debug!("login over TLS refused ({e}); retrying without TLS");
                Self::attempt_plain(addrs, setup, target)
                    .await
                    .map_err(|_| e)
            }
            r => r,
        }
    }

    /// StartupMessage, authentication, and the messages up to the first ReadyForQuery.
    async fn startup(
        transport: Transport,
        setup: &Setup<'_>,
        target: &str,
    ) -> Result<Connection, PgError> {
        let cancel_addr = match &transport {
            Transport::Tcp(s) => s.peer_addr().map_or(CancelAddr::Unknown, CancelAddr::Tcp),
            Transport::Tls(t) => t
                .get_ref()
                .0
                .peer_addr()
                .map_or(CancelAddr::Unknown, CancelAddr::Tcp),
            Transport::Unix(_) => CancelAddr::Unix(target.to_string()),
        };
        let mut conn = Connection {
            transport,
            cancel_addr,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(8 * 1024),
            params: HashMap::new(),
            backend_pid: 0,
            secret_key: 0,
            target: target.to_string(),
            state: State::Busy,
        };
        frontend::startup_message(
            setup.params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &mut conn.wbuf,
        )
        .map_err(|e| PgError::Config(format!("invalid startup parameter: {e}")))?;
        conn.flush().await?;
        conn.authenticate(setup).await?;
        loop {
            let f = conn.recv().await?;
            match f.tag {
                b'K' => {
                    let (pid, key) = message::backend_key_data(&f.body)?;
                    conn.backend_pid = pid;
                    conn.secret_key = key;
                }
                b'Z' => {
                    conn.state = State::Idle;
                    break;
                }
                b'E' => return Err(message::error_response(&f.body)),
                b'v' => tracing::debug!("server negotiated an older protocol minor version"),
                t => {
                    return Err(PgError::Protocol(format!(
                        "unexpected message '{}' during startup",
                        char::from(t)
                    )))
                }
            }
        }
        tracing::debug!(
            target = %conn.target,
            pid = conn.backend_pid,
            server_version = conn.parameter("server_version").unwrap_or("?"),
            "connected"
        );
        Ok(conn)
    }

    async fn authenticate(&mut self, setup: &Setup<'_>) -> Result<(), PgError> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.recv().await?;
            let req = match f.tag {
                b'R' => message::auth_request(&f.body)?,
                b'E' => return Err(message::error_response(&f.body)),
                b'v' => continue,
                t => {
                    return Err(PgError::Protocol(format!(
                        "unexpected message '{}' during authentication",
                        char::from(t)
                    )))
                }
            };
            match req {
                AuthRequest::Ok => return Ok(()),
                AuthRequest::Cleartext => {
                    let pw = setup.password()?;
                    frontend::password_message(pw.as_bytes(), &mut self.wbuf)
                        .map_err(|e| PgError::Auth(format!("invalid password: {e}")))?;
                }
                AuthRequest::Md5(salt) => {
                    let pw = setup.password()?;
                    let hash = md5_hash(setup.user.as_bytes(), pw.as_bytes(), salt);
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(|e| PgError::Auth(format!("invalid password: {e}")))?;
                }
                AuthRequest::Sasl(mechs) => {
                    if !mechs.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(PgError::Auth(format!(
                            "server offered no supported SASL mechanism ({})",
                            mechs.join(", ")
                        )));
                    }
                    let pw = setup.password()?;
                    // No channel binding ("n,,"): accepted by servers that offer -PLUS too.
                    let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)
                        .map_err(|e| PgError::Auth(e.to_string()))?;
                    scram = Some(s);
                }
                AuthRequest::SaslContinue(data) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        PgError::Protocol("SASL continue without SASL start".to_string())
                    })?;
                    s.update(&data)
                        .map_err(|e| PgError::Auth(format!("SCRAM exchange failed: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)
                        .map_err(|e| PgError::Auth(e.to_string()))?;
                }
                AuthRequest::SaslFinal(data) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        PgError::Protocol("SASL final without SASL start".to_string())
                    })?;
                    s.finish(&data).map_err(|e| {
                        PgError::Auth(format!("server signature verification failed: {e}"))
                    })?;
                    continue;
                }
                AuthRequest::Other(n) => {
                    let name = match n {
                        2 => "Kerberos V5",
                        6 => "SCM credentials",
                        7 | 8 => "GSSAPI",
                        9 => "SSPI",
                        _ => "unknown",
                    };
                    return Err(PgError::Auth(format!(
                        "authentication method {n} ({name}) is not supported"
                    )));
                }
            }
            self.flush().await?;
        }
    }

    /// Runs one simple query (`Q`) and returns all rows of all its result sets, in
    /// text format. A server error is returned once the server is ready again, so
    /// the connection stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, PgError> {
        let raw = self.simple_query_raw(sql).await?;
        Ok(raw
            .into_iter()
            .map(|(columns, values)| Row {
                columns,
                values: values
                    .into_iter()
                    .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect(),
            })
            .collect())
    }

    /// As `simple_query`, with the values as raw bytes.
    pub(crate) async fn simple_query_raw(
        &mut self,
        sql: &str,
    ) -> Result<Vec<(Arc<Vec<String>>, Vec<Option<Bytes>>)>, PgError> {
        self.send_query(sql).await?;
        let mut columns = Arc::new(Vec::new());
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let f = self.recv().await?;
            match f.tag {
                b'T' => columns = Arc::new(self.check(message::row_description(&f.body))?),
                b'D' => rows.push((columns.clone(), self.check(message::data_row(&f.body))?)),
                b'C' | b'I' | b'n' => {}
                b'E' => {
                    if error.is_none() {
                        error = Some(message::error_response(&f.body));
                    }
                }
                b'Z' => {
                    self.state = State::Idle;
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    };
                }
                b'G' => {
                    frontend::copy_fail("COPY FROM STDIN is not supported here", &mut self.wbuf)?;
                    self.flush().await?;
                }
                b'H' | b'd' | b'c' => {}
                b'W' => {
                    self.state = State::Copy(CopyState::default());
                    return Err(PgError::Protocol(
                        "the query started a replication stream; use start_physical_replication"
                            .to_string(),
                    ));
                }
                t => return Err(self.protocol(format!("unexpected message '{}'", char::from(t)))),
            }
        }
    }

    /// Sends one simple query after draining whatever an earlier, abandoned
    /// command left unread. The connection is `Busy` afterwards.
    pub(crate) async fn send_query(&mut self, sql: &str) -> Result<(), PgError> {
        self.ensure_idle().await?;
        let mark = self.wbuf.len();
        if let Err(e) = frontend::query(sql, &mut self.wbuf) {
            // Nothing half-written may stay queued.
            self.wbuf.truncate(mark);
            return Err(PgError::InvalidArgument(format!("cannot send query: {e}")));
        }
        self.state = State::Busy;
        self.flush().await
    }

    /// A server-reported parameter (ParameterStatus): `server_version`,
    /// `server_encoding`, `integer_datetimes`, `TimeZone`...
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(|s| s.as_str())
    }

    /// `server_version` as a number: "15.18 (Debian ...)" → 150018.
    pub fn server_version_num(&self) -> Option<u32> {
        self.parameter("server_version")
            .and_then(message::parse_server_version)
    }

    /// The server process id serving this connection.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// `host:port` or the Unix socket path this connection goes to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A handle that can ask the server to cancel whatever this connection is
    /// running, from another task, while the connection itself is busy.
    pub fn cancel_token(&self) -> CancelToken {
        CancelToken {
            pid: self.backend_pid,
            secret_key: self.secret_key,
            addr: self.cancel_addr.clone(),
        }
    }

    /// Says goodbye (Terminate) and closes the transport. Errors are ignored: the
    /// server treats a vanished client the same way.
    pub async fn close(mut self) {
        if !matches!(self.state, State::Broken(_)) {
            frontend::terminate(&mut self.wbuf);
            let _ = self.flush().await;
        }
        let _ = self.transport.shutdown().await;
    }

    // ----- frame I/O shared with the replication stream -------------------------

    /// Makes sure the connection is ready for a new command: flushes queued bytes
    /// and drains the answers of a command that was abandoned half-way.
    pub(crate) async fn ensure_idle(&mut self) -> Result<(), PgError> {
        if let State::Broken(why) = &self.state {
            return Err(PgError::Protocol(format!("connection is unusable: {why}")));
        }
        self.flush().await?;
        if matches!(self.state, State::Idle) {
            return Ok(());
        }
        // Errors of the abandoned command are not this command's business.
        match self.drain_to_ready().await {
            Ok(()) | Err(PgError::Server { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads until ReadyForQuery, ending a COPY in progress (CopyDone / CopyFail
    /// as needed). Returns the first server error seen on the way, after the
    /// connection is idle again.
    pub(crate) async fn drain_to_ready(&mut self) -> Result<(), PgError> {
        let mut error = None;
        loop {
            match &mut self.state {
                State::Idle => break,
                State::Broken(why) => {
                    return Err(PgError::Protocol(format!("connection is unusable: {why}")))
                }
                State::Copy(cs) if !cs.client_done => {
                    frontend::copy_done(&mut self.wbuf);
                    cs.client_done = true;
                    self.flush().await?;
                    continue;
                }
                _ => {}
            }
            let f = self.recv().await?;
            match f.tag {
                b'W' => {
                    self.state = State::Copy(CopyState::default());
                }
                b'c' => {
                    if let State::Copy(cs) = &mut self.state {
                        cs.server_done = true;
                    }
                }
                b'G' => {
                    frontend::copy_fail("cancelled by the client", &mut self.wbuf)?;
                    self.flush().await?;
                }
                b'E' => {
                    if error.is_none() {
                        error = Some(message::error_response(&f.body));
                    }
                    if matches!(self.state, State::Copy(_)) {
                        self.state = State::Busy;
                    }
                }
                b'Z' => self.state = State::Idle,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Writes every queued byte. Cancel-safe: bytes written are removed from the
    /// queue as soon as the transport takes them.
    pub(crate) async fn flush(&mut self) -> Result<(), PgError> {
        while !self.wbuf.is_empty() {
            match self.transport.write(&self.wbuf).await {
                Ok(0) => {
                    self.state = State::Broken("the server stopped reading".to_string());
                    return Err(PgError::Closed);
                }
                Ok(n) => self.wbuf.advance(n),
                Err(e) => return Err(self.io_error(e)),
            }
        }
        if let Err(e) = self.transport.flush().await {
            return Err(self.io_error(e));
        }
        Ok(())
    }

    /// The queue of bytes to send.
    pub(crate) fn wbuf(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// The next message, waiting for it if needed. Cancel-safe. NoticeResponse,
    /// ParameterStatus and NotificationResponse are handled here, never returned.
    pub(crate) async fn recv(&mut self) -> Result<Frame, PgError> {
        loop {
            if let Some(f) = self.try_recv(|_| true)? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Whether a whole message is already in the read buffer, so the next receive
    /// needs no I/O (lets a fast stream be handed on in batches).
    pub(crate) fn has_complete_frame(&self) -> bool {
        matches!(message::frame_len(&self.rbuf), Ok(Some(len)) if self.rbuf.len() >= len)
    }

    /// The next message if it is complete in the buffer and `want(tag)` holds; no
    /// I/O. Asynchronous messages in front of it are handled and skipped.
    pub(crate) fn try_recv(&mut self, want: impl Fn(u8) -> bool) -> Result<Option<Frame>, PgError> {
        loop {
            let len = match message::frame_len(&self.rbuf) {
                Ok(Some(len)) if self.rbuf.len() >= len => len,
                Ok(_) => return Ok(None),
                Err(e) => return Err(self.protocol(e.to_string())),
            };
            let tag = self.rbuf[0];
            if !matches!(tag, b'N' | b'S' | b'A') && !want(tag) {
                return Ok(None);
            }
            let mut raw = self.rbuf.split_to(len).freeze();
            raw.advance(5);
            let f = Frame { tag, body: raw };
            match f.tag {
                b'N' => match message::fields(&f.body) {
                    Ok(n) => tracing::debug!("server notice: {}: {}", n.severity, n.message),
                    Err(e) => return Err(self.protocol(e.to_string())),
                },
                b'S' => match message::parameter_status(&f.body) {
                    Ok((k, v)) => {
                        self.params.insert(k, v);
                    }
                    Err(e) => return Err(self.protocol(e.to_string())),
                },
                b'A' => tracing::debug!("ignoring asynchronous notification"),
                _ => return Ok(Some(f)),
            }
        }
    }

    /// Reads more bytes into the buffer. Cancel-safe.
    async fn fill(&mut self) -> Result<(), PgError> {
        let want = match message::frame_len(&self.rbuf) {
            // Generous reservations: a small one makes BytesMut reallocate and copy the
            // partial frame on almost every read of a fast COPY stream.
            Ok(Some(len)) => len.saturating_sub(self.rbuf.len()).max(512 * 1024),
            _ => 512 * 1024,
        };
        self.rbuf.reserve(want);
        match self.transport.read_buf(&mut self.rbuf).await {
            Ok(0) => {
                self.state = State::Broken("the server closed the connection".to_string());
                Err(PgError::Closed)
            }
            Ok(_) => Ok(()),
            Err(e) => Err(self.io_error(e)),
        }
    }

    fn io_error(&mut self, e: io::Error) -> PgError {
        self.state = State::Broken(e.to_string());
        if matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
        ) {
            PgError::Closed
        } else {
            PgError::Io(e)
        }
    }

    /// Marks the connection unusable and returns the protocol error.
    pub(crate) fn protocol(&mut self, what: String) -> PgError {
        self.state = State::Broken(what.clone());
        PgError::Protocol(what)
    }

    /// Passes a decoding result through, marking the connection broken on error.
    pub(crate) fn check<T>(&mut self, r: Result<T, PgError>) -> Result<T, PgError> {
        r.map_err(|e| match e {
            PgError::Protocol(m) => self.protocol(m),
            e => e,
        })
    }

    /// Appends a CopyData message with `payload` to the send queue.
    pub(crate) fn queue_copy_data(&mut self, payload: &[u8]) {
        self.wbuf.put_u8(b'd');
        self.wbuf.put_i32(4 + payload.len() as i32);
        self.wbuf.put_slice(payload);
    }
}
