//! [`SshSession`]: one authenticated SSH connection (ssh2, blocking) whose host key
//! was checked against `known_hosts` before anything else happened, and exec
//! channels on it.

use super::target::{home_dir, StrictHostKeyChecking};
use super::{SshError, SshTarget};
use ssh2::{CheckResult, KnownHostFileKind, MethodType, Session};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default TCP connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a remote command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit status (-1 when it ended without one, e.g. killed by a signal).
    pub status: i32,
    /// Everything it wrote on stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote on stderr.
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// The last non-empty line of stderr (what a one-line error quotes).
    pub fn stderr_line(&self) -> String {
        String::from_utf8_lossy(&self.stderr)
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .to_string()
    }
}

/// An authenticated connection to a [`SshTarget`].
pub struct SshSession {
    session: Session,
    target: SshTarget,
    /// The TCP socket libssh2 owns (for [`SshSession::acking`]).
    fd: RawFd,
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSession")
            .field("target", &self.target.display())
            .finish()
    }
}

/// The ciphers pgbk puts first for its sessions: AES-GCM ahead of libssh2's
/// default order (which starts with chacha20-poly1305), every default cipher still
/// allowed after it, so any server still negotiates. With the AES instructions every
/// server CPU has, AES-GCM costs a third of the CPU per byte on both ends, which is
/// what a replicate copy of a large backup waits on. (rsync backups give OpenSSH the
/// same preference: `FAST_CIPHERS` in src/backup/rsync_copy.rs.)
pub const FAST_CIPHERS: [&str; 2] = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"];

/// The cipher list a session offers, both directions: [`FAST_CIPHERS`] that this
/// libssh2 supports, then the rest of its `supported` list in its own order.
pub fn cipher_preference(supported: &[&str]) -> String {
    let fast = FAST_CIPHERS.iter().filter(|c| supported.contains(c));
    let rest = supported.iter().filter(|c| !FAST_CIPHERS.contains(c));
    fast.chain(rest).copied().collect::<Vec<_>>().join(",")
}

/// Applies [`cipher_preference`] to a session before its handshake.
fn prefer_fast_ciphers(session: &Session) -> Result<(), ssh2::Error> {
    for method in [MethodType::CryptCs, MethodType::CryptSc] {
        let supported = session.supported_algs(method)?;
        if supported.is_empty() {
            continue;
        }
        session.method_pref(method, &cipher_preference(&supported))?;
    }
    Ok(())
}

impl SshSession {
    /// The cipher negotiated for data sent to the server (`aes128-gcm@openssh.com`…).
    pub fn cipher(&self) -> Option<String> {
        self.session
            .methods(MethodType::CryptCs)
            .map(str::to_string)
    }

    /// Connects (with a timeout), checks the host key against `known_hosts` (an
    /// unknown key is refused unless `StrictHostKeyChecking=no`, a changed key is
    /// always refused) and authenticates: the identity files given, else the agent,
    /// else `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`.
    pub fn connect(target: &SshTarget) -> Result<SshSession, SshError> {
        let who = target.display();
        let fail = |msg: String| SshError::Connect {
            target: who.clone(),
            msg,
        };
        let timeout = target.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
        let addrs: Vec<_> = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| fail(format!("cannot resolve {}: {e}", target.host)))?
            .collect();
        let mut last = None;
        let mut tcp = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            fail(match last {
                Some(e) => e.to_string(),
                None => format!("{} resolves to no address", target.host),
            })
        })?;
        let _ = tcp.set_nodelay(true);
        let fd = tcp.as_raw_fd();
        let mut session = Session::new().map_err(|e| fail(e.message().to_string()))?;
        prefer_fast_ciphers(&session).map_err(|e| fail(e.message().to_string()))?;
        session.set_tcp_stream(tcp);
        session.set_timeout(timeout.as_millis().min(u32::MAX as u128) as u32);
        session
            .handshake()
            .map_err(|e| fail(format!("SSH handshake failed: {}", e.message())))?;
        check_host_key(&session, target)?;
        authenticate(&session, target)?;
        // Long transfers must not time out; the TCP connection does.
        session.set_timeout(0);
        session.set_keepalive(true, 60);
        Ok(SshSession {
            session,
            target: target.clone(),
            fd,
        })
    }

    /// The target this session is connected to.
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    fn channel_err(&self, cmd: &str, e: impl std::fmt::Display) -> SshError {
        SshError::Channel {
            target: self.target.display(),
            msg: format!("running '{}': {e}", first_line(cmd)),
        }
    }

    /// Runs a command (through the remote user's shell) and collects its output.
    pub fn exec(&self, cmd: &str) -> Result<ExecOutput, SshError> {
        let mut ch = self.open(cmd)?;
        let mut stdout = Vec::new();
        ch.read_to_end(&mut stdout)
            .map_err(|e| self.channel_err(cmd, e))?;
        let mut stderr = Vec::new();
        ch.stderr()
            .read_to_end(&mut stderr)
            .map_err(|e| self.channel_err(cmd, e))?;
        finish(self, cmd, ch, stdout, stderr)
    }

    /// Starts a command whose stdin is the returned writer (e.g. `tar -x -f -`);
    /// [`RemoteStdin::finish`] closes it and waits for the command's end.
    pub fn exec_stdin(&self, cmd: &str) -> Result<RemoteStdin<'_>, SshError> {
        let ch = self.open(cmd)?;
        Ok(RemoteStdin {
            session: self,
            cmd: cmd.to_string(),
            channel: Some(ch),
        })
    }

    /// Bounds every blocking operation of this session (a peer that vanished without
    /// closing the connection then fails instead of hanging); zero means no limit.
    pub fn set_timeout(&self, timeout: Duration) {
        self.session
            .set_timeout(timeout.as_millis().min(u32::MAX as u128) as u32);
    }

    /// Opens an SFTP channel on this session (to read files of the remote host).
    pub fn sftp(&self) -> Result<ssh2::Sftp, SshError> {
        self.acking(|| self.session.sftp())
            .map_err(|e| SshError::Channel {
                target: self.target.display(),
                msg: format!("opening SFTP: {}", e.message()),
            })
    }

    /// Opens a channel running the `sftp` subsystem, for a client that speaks the
    /// protocol itself (pipelined reads of many small files: src/peer/sftp_batch.rs).
    pub fn sftp_channel(&self) -> Result<ssh2::Channel, SshError> {
        let fail = |e: ssh2::Error| SshError::Channel {
            target: self.target.display(),
            msg: format!("opening SFTP: {}", e.message()),
        };
        let mut ch = self
            .acking(|| self.session.channel_session())
            .map_err(fail)?;
        self.acking(|| ch.subsystem("sftp")).map_err(fail)?;
        Ok(ch)
    }

    fn open(&self, cmd: &str) -> Result<ssh2::Channel, SshError> {
        let mut ch = self
            .acking(|| self.session.channel_session())
            .map_err(|e| self.channel_err(cmd, e.message()))?;
        self.acking(|| ch.exec(cmd))
            .map_err(|e| self.channel_err(cmd, e.message()))?;
        Ok(ch)
    }

    /// Runs a libssh2 call that waits for the server's answer with the session
    /// non-blocking, acknowledging at once whatever arrives meanwhile. sshd leaves
    /// Nagle's algorithm on for exec and subsystem sessions, so when it writes two
    /// small packets in a row (the host keys it announces after authentication,
    /// then the channel's confirmation) the second waits for the ACK of the first,
    /// which Linux delays by 40 ms: every channel opened this way cost 40 ms.
    fn acking<T>(&self, mut op: impl FnMut() -> Result<T, ssh2::Error>) -> Result<T, ssh2::Error> {
        let limit = match self.session.timeout() {
            0 => None,
            ms => Some(Instant::now() + Duration::from_millis(ms.into())),
        };
        self.session.set_blocking(false);
        let result = loop {
            match op() {
                Err(e) if e.code() == ssh2::ErrorCode::Session(LIBSSH2_ERROR_EAGAIN) => {
                    quick_ack(self.fd);
                    let left = limit.map(|l| l.saturating_duration_since(Instant::now()));
                    if left == Some(Duration::ZERO) {
                        break Err(ssh2::Error::new(
                            ssh2::ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT),
                            "timed out waiting for the server",
                        ));
                    }
                    wait_socket(self.fd, self.session.block_directions(), left);
                }
                other => break other,
            }
        };
        self.session.set_blocking(true);
        result
    }
}

/// libssh2's "would block" and "timed out" error codes.
const LIBSSH2_ERROR_EAGAIN: i32 = -37;
const LIBSSH2_ERROR_TIMEOUT: i32 = -9;

/// Sends a pending delayed ACK now (Linux sends it when TCP_QUICKACK is set).
fn quick_ack(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` for the given length; a failure only leaves
    // the ACK delayed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Waits until the socket can do what libssh2 waits for (at most `left`; at most
/// one second at a time, so a limit is checked even when nothing happens).
fn wait_socket(fd: RawFd, dirs: ssh2::BlockDirections, left: Option<Duration>) {
    let events = match dirs {
        ssh2::BlockDirections::Inbound => libc::POLLIN,
        ssh2::BlockDirections::Outbound => libc::POLLOUT,
        _ => libc::POLLIN | libc::POLLOUT,
    };
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = left.map_or(1000, |d| d.as_millis().clamp(1, 1000) as libc::c_int);
    // SAFETY: one valid pollfd.
    unsafe {
        libc::poll(&mut pfd, 1, ms);
    }
}

fn first_line(s: &str) -> &str {
    let l = s.lines().next().unwrap_or("");
    match l.char_indices().nth(120) {
        Some((i, _)) => &l[..i],
        None => l,
    }
}

fn finish(
    s: &SshSession,
    cmd: &str,
    mut ch: ssh2::Channel,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
) -> Result<ExecOutput, SshError> {
    ch.wait_close()
        .map_err(|e| s.channel_err(cmd, e.message()))?;
    let status = ch
        .exit_status()
        .map_err(|e| s.channel_err(cmd, e.message()))?;
    let signal = ch.exit_signal().ok().and_then(|x| x.exit_signal);
    Ok(ExecOutput {
        status: if signal.is_some() { -1 } else { status },
        stdout,
        stderr,
    })
}

/// The stdin of a running remote command.
pub struct RemoteStdin<'a> {
    session: &'a SshSession,
    cmd: String,
    channel: Option<ssh2::Channel>,
}

impl RemoteStdin<'_> {
    /// Sends end-of-file, collects the command's output and exit status.
    pub fn finish(mut self) -> Result<ExecOutput, SshError> {
        let s = self.session;
        let cmd = std::mem::take(&mut self.cmd);
        let Some(mut ch) = self.channel.take() else {
            return Err(s.channel_err(&cmd, "already finished"));
        };
        ch.flush().map_err(|e| s.channel_err(&cmd, e))?;
        ch.send_eof()
            .map_err(|e| s.channel_err(&cmd, e.message()))?;
        let mut stdout = Vec::new();
        ch.read_to_end(&mut stdout)
            .map_err(|e| s.channel_err(&cmd, e))?;
        let mut stderr = Vec::new();
        ch.stderr()
            .read_to_end(&mut stderr)
            .map_err(|e| s.channel_err(&cmd, e))?;
        finish(s, &cmd, ch, stdout, stderr)
    }

    /// Gives up: closes the channel without waiting for the command.
    pub fn abort(mut self) {
        if let Some(mut ch) = self.channel.take() {
            let _ = ch.close();
        }
    }
}

impl Write for RemoteStdin<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.channel {
            Some(ch) => ch.write(buf),
            None => Err(io::Error::other("remote command already finished")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.channel {
            Some(ch) => ch.flush(),
            None => Ok(()),
        }
    }
}

/// The known_hosts file in use.
fn known_hosts_path(target: &SshTarget) -> Option<PathBuf> {
    target
        .known_hosts
        .clone()
        .or_else(|| home_dir().map(|h| h.join(".ssh/known_hosts")))
}

fn check_host_key(session: &Session, target: &SshTarget) -> Result<(), SshError> {
    let who = format!("{}:{}", target.host, target.port);
    let path = known_hosts_path(target);
    let shown = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.ssh/known_hosts (no home directory)".into());
    let (key, _) = session.host_key().ok_or_else(|| SshError::HostKey {
        msg: format!("{who} sent no host key"),
    })?;
    let mut kh = session.known_hosts().map_err(|e| SshError::HostKey {
        msg: format!("{who}: {}", e.message()),
    })?;
    if let Some(p) = &path {
        match std::fs::read_to_string(p) {
            Ok(text) => {
                // Line by line: libssh2 stops at the first line it cannot read (a
                // key type it does not know), which would hide the rest.
                for line in text.lines() {
                    let l = line.trim();
                    if l.is_empty() || l.starts_with('#') {
                        continue;
                    }
                    let _ = kh.read_str(l, KnownHostFileKind::OpenSSH);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SshError::HostKey {
                    msg: format!("cannot read {}: {e}", p.display()),
                })
            }
        }
    }
    match kh.check_port(&target.host, target.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => Err(SshError::HostKey {
            msg: format!(
                "the host key of {who} does not match the one recorded in {shown}: refusing to connect (if the host was reinstalled, remove its old line with ssh-keygen -R)"
            ),
        }),
        CheckResult::NotFound if target.strict == StrictHostKeyChecking::No => {
            tracing::warn!("{who} is not in {shown}; accepted (StrictHostKeyChecking=no)");
            Ok(())
        }
        CheckResult::NotFound => Err(SshError::HostKey {
            msg: format!(
                "the host key of {who} is unknown: {shown} has no entry for it (connect once with ssh, or add it with ssh-keyscan)"
            ),
        }),
        CheckResult::Failure => Err(SshError::HostKey {
            msg: format!("could not check the host key of {who} against {shown}"),
        }),
    }
}

fn try_key(session: &Session, user: &str, key: &Path) -> Result<(), String> {
    let public = {
        let mut p = key.as_os_str().to_owned();
        p.push(".pub");
        PathBuf::from(p)
    };
    let public = public.is_file().then_some(public);
    session
        .userauth_pubkey_file(user, public.as_deref(), key, None)
        .map_err(|e| format!("{}: {}", key.display(), e.message()))
}

fn authenticate(session: &Session, target: &SshTarget) -> Result<(), SshError> {
    let user = &target.user;
    let mut tried = Vec::new();
    if !target.identity_files.is_empty() {
        for key in &target.identity_files {
            if !key.is_file() {
                tried.push(format!("{}: no such file", key.display()));
                continue;
            }
            match try_key(session, user, key) {
                Ok(()) if session.authenticated() => return Ok(()),
                Ok(()) => {}
                Err(e) => tried.push(e),
            }
        }
    } else {
        if std::env::var_os("SSH_AUTH_SOCK").is_some() {
            match session.userauth_agent(user) {
                Ok(()) if session.authenticated() => return Ok(()),
                Ok(()) => {}
                Err(e) => tried.push(format!("agent: {}", e.message())),
            }
        }
        let home = home_dir();
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            let Some(key) = home.as_ref().map(|h| h.join(".ssh").join(name)) else {
                break;
            };
            if !key.is_file() {
                continue;
            }
            match try_key(session, user, &key) {
                Ok(()) if session.authenticated() => return Ok(()),
                Ok(()) => {}
                Err(e) => tried.push(e),
            }
        }
    }
    Err(SshError::Auth {
        target: target.display(),
        msg: if tried.is_empty() {
            "no key to try (no -i, no agent, no ~/.ssh/id_ed25519, id_ecdsa or id_rsa)".into()
        } else {
            format!("tried {}", tried.join("; "))
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_gcm_goes_first_and_every_other_cipher_stays_allowed() {
        let default = [
            "chacha20-poly1305@openssh.com",
            "aes256-gcm@openssh.com",
            "aes128-gcm@openssh.com",
            "aes256-ctr",
            "aes128-ctr",
        ];
        assert_eq!(
            cipher_preference(&default),
            "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-ctr,aes128-ctr"
        );
        // A libssh2 without AES-GCM keeps its own list.
        assert_eq!(
            cipher_preference(&["chacha20-poly1305@openssh.com", "aes128-ctr"]),
            "chacha20-poly1305@openssh.com,aes128-ctr"
        );
        // The libssh2 pgbk is built with has them.
        let s = Session::new().unwrap();
        let supported = s.supported_algs(MethodType::CryptCs).unwrap();
        assert!(cipher_preference(&supported).starts_with("aes128-gcm@openssh.com,"));
    }
}
