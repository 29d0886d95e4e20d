//! [`Sshd`]: a real OpenSSH server on a free loopback port, for the SSH tests
//! (remote recovery, rsync backups, put-wal through archive_command).
//!
//! It runs `/usr/sbin/sshd -D -e -f <config>` as root with a generated ed25519
//! host key, one authorised client key (also generated) and a `known_hosts` holding
//! the host key under `[127.0.0.1]:PORT`. `UsePAM yes` lets a key in to Debian's
//! locked `postgres` account. Killed on drop. A machine without sshd fails the test
//! with a clear message (CI installs openssh-server): SSH tests never skip silently.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{file_tail, free_port, keep_dirs, run_checked, scratch_dir};

/// The OpenSSH server binary.
pub const SSHD: &str = "/usr/sbin/sshd";

/// A running test sshd.
pub struct Sshd {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The client's private key (authorised for every user).
    pub client_key: PathBuf,
    /// A known_hosts file holding the server's host key.
    pub known_hosts: PathBuf,
    /// sshd's log (stderr, `-e`).
    pub log: PathBuf,
    /// The folder holding keys, config and log.
    pub root: PathBuf,
    child: Option<Child>,
    dir: Option<TempDir>,
}

/// `ssh-keygen -t ed25519 -N '' -f <path>`; returns the public key line.
pub fn keygen(path: &Path) -> String {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", "pgbk-test", "-f"])
        .arg(path);
    run_checked(&mut cmd, String::new);
    let mut public = path.as_os_str().to_owned();
    public.push(".pub");
    fs::read_to_string(PathBuf::from(public))
        .expect("read generated public key")
        .trim()
        .to_string()
}

impl Sshd {
    /// Generates the keys, writes the configuration, starts sshd and waits until it
    /// accepts connections.
    pub fn start() -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} not found: the SSH tests need OpenSSH's server (apt-get install openssh-server)"
        );
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the SSH tests start sshd and must run as root"
        );
        fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        let dir = scratch_dir("pgbk-sshd-");
        let root = dir.path().to_path_buf();
        let host_key = root.join("host_key");
        let host_pub = keygen(&host_key);
        let client_key = root.join("client_key");
        let client_pub = keygen(&client_key);
        let authorized = root.join("authorized_keys");
        fs::write(&authorized, format!("{client_pub}\n")).expect("write authorized_keys");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&authorized, fs::Permissions::from_mode(0o644))
            .expect("chmod authorized_keys");
        let log = root.join("sshd.log");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = free_port();
            let config = root.join("sshd_config");
            fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                     UsePAM yes\nPidFile {}\nStrictModes no\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                     PubkeyAuthentication yes\nLogLevel VERBOSE\n\
                     Subsystem sftp internal-sftp\n",
                    host_key.display(),
                    authorized.display(),
                    root.join("sshd.pid").display()
                ),
            )
            .expect("write sshd_config");
            let log_file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("open sshd.log");
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("dup log"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("could not start {SSHD}: {e}"));
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut exited = None;
            while Instant::now() < deadline {
                if let Ok(Some(st)) = child.try_wait() {
                    exited = Some(st);
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let known_hosts = root.join("known_hosts");
                    fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}\n"))
                        .expect("write known_hosts");
                    return Sshd {
                        port,
                        client_key,
                        known_hosts,
                        log,
                        root,
                        child: Some(child),
                        dir: Some(dir),
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            if attempts >= 3 {
                panic!(
                    "sshd did not start ({}):\n{}",
                    exited.map_or("no connection after 15 s".into(), |s| s.to_string()),
                    file_tail(&log, 30)
                );
            }
        }
    }

    /// The OpenSSH command line pgbk is given to reach `user` on this sshd, with the
    /// test's key and known_hosts.
    pub fn ssh_command(&self, user: &str) -> String {
        self.ssh_command_with(user, &self.known_hosts)
    }

    /// Like [`Sshd::ssh_command`] with another known_hosts file.
    pub fn ssh_command_with(&self, user: &str, known_hosts: &Path) -> String {
        format!(
            "ssh -p {} -i {} -o UserKnownHostsFile={} {user}@127.0.0.1",
            self.port,
            self.client_key.display(),
            known_hosts.display()
        )
    }

    /// A known_hosts file that records ANOTHER key for this server (as after a
    /// reinstall, or a man in the middle).
    pub fn wrong_known_hosts(&self) -> PathBuf {
        let other = self.root.join("other_host_key");
        let public = if other.exists() {
            let mut p = other.as_os_str().to_owned();
            p.push(".pub");
            fs::read_to_string(PathBuf::from(p))
                .expect("read key")
                .trim()
                .to_string()
        } else {
            keygen(&other)
        };
        let path = self.root.join("known_hosts.wrong");
        fs::write(&path, format!("[127.0.0.1]:{} {public}\n", self.port))
            .expect("write known_hosts");
        path
    }

    /// The last lines of sshd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log, lines)
    }

    /// Stops sshd as a dead host would: the listener AND every session process it
    /// forked (stopping the listener alone leaves established connections running).
    /// [`Sshd::start_again`] restarts it on the same port with the same keys.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let mut pids = vec![child.id() as i32];
        let mut i = 0;
        while i < pids.len() {
            let parent = pids[i];
            pids.extend(children_of(parent));
            i += 1;
        }
        // Sessions first (deepest last found), then the listener.
        for pid in pids.iter().rev() {
            // SAFETY: kill has no memory preconditions; these are our sshd's processes.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "sshd still listening after stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts sshd again after [`Sshd::stop`]: same port, configuration and keys.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "sshd is running");
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open sshd.log");
        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.root.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {SSHD}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("sshd exited on restart ({st}):\n{}", self.log_tail(30));
            }
            assert!(
                Instant::now() < deadline,
                "sshd not listening 15 s after restart:\n{}",
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- sshd log ({}) ---\n{}",
                self.log.display(),
                self.log_tail(40)
            );
        }
        if let Some(d) = self.dir.take() {
            if keep_dirs() {
                let _ = d.keep();
            }
        }
    }
}
