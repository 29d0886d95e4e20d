//! [`SshTarget`]: where an OpenSSH-style command line (`ssh -p 2222 -i key
//! -o UserKnownHostsFile=/x postgres@pg1`) connects, parsed once so every SSH user
//! in pgbk (recover, rsync backups, checks) reads the same options.

use super::SshError;
use std::path::PathBuf;
use std::time::Duration;

/// What to do with a host key that `known_hosts` does not hold. A key that differs
/// from the recorded one is always refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictHostKeyChecking {
    /// Refuse an unknown host (OpenSSH's `yes` and `ask`; pgbk never asks).
    Yes,
    /// Accept an unknown host (`no`, `off`, `accept-new`); it is not recorded.
    No,
}

/// A parsed `ssh` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// Remote user (`user@`, `-l`, `-o User=`; default: the local user).
    pub user: String,
    /// Host name or address.
    pub host: String,
    /// TCP port (default 22).
    pub port: u16,
    /// Private keys to try, in order (`-i`, `-o IdentityFile=`).
    pub identity_files: Vec<PathBuf>,
    /// `-o UserKnownHostsFile=` (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// `-o StrictHostKeyChecking=`.
    pub strict: StrictHostKeyChecking,
    /// `-o ConnectTimeout=` (seconds; default 30 s).
    pub connect_timeout: Option<Duration>,
}

/// Flags of `ssh` that take no argument and change nothing pgbk relies on.
const HARMLESS_FLAGS: &str = "46CTnqx";

/// `-o` options accepted and ignored (they only tune an interactive OpenSSH).
const IGNORED_OPTIONS: &[&str] = &[
    "batchmode",
    "serveraliveinterval",
    "serveralivecountmax",
    "compression",
    "loglevel",
    "passwordauthentication",
    "kbdinteractiveauthentication",
    "preferredauthentications",
    "identitiesonly",
    "addkeystoagent",
    "tcpkeepalive",
    "checkhostip",
    "hashknownhosts",
];

impl SshTarget {
    /// `user@host:port`, as errors name the target.
    pub fn display(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }

    /// Parses an OpenSSH command line: `ssh [options] [user@]host`. Quotes and
    /// backslashes are read as a POSIX shell would. Flags and `-o` options pgbk does
    /// not understand are refused, naming them, rather than silently ignored.
    pub fn parse(command: &str) -> Result<SshTarget, SshError> {
        let bad = |m: String| SshError::Parse(format!("ssh command '{command}': {m}"));
        let words = split_shell(command).map_err(bad)?;
        let mut it = words.into_iter();
        match it.next() {
            Some(w) if w == "ssh" || w.ends_with("/ssh") => {}
            Some(w) => return Err(bad(format!("must start with ssh, not '{w}'"))),
            None => return Err(bad("is empty".into())),
        }
        let mut user: Option<String> = None;
        let mut port: Option<u16> = None;
        let mut identity_files = Vec::new();
        let mut known_hosts = None;
        let mut strict = StrictHostKeyChecking::Yes;
        let mut connect_timeout = None;
        let mut destination: Option<String> = None;
        let parse_port = |v: &str| {
            v.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(format!("invalid port '{v}'")))
        };
        while let Some(word) = it.next() {
            if destination.is_some() {
                return Err(bad(format!(
                    "'{word}' after the host: a remote command cannot be part of the ssh command"
                )));
            }
            let Some(flags) = word.strip_prefix('-').filter(|f| !f.is_empty()) else {
                destination = Some(word);
                continue;
            };
            for (i, c) in flags.char_indices() {
                if HARMLESS_FLAGS.contains(c) {
                    continue;
                }
                if !"pilo".contains(c) {
                    return Err(bad(format!("unsupported option -{c}")));
                }
                let rest = &flags[i + c.len_utf8()..];
                let value = if rest.is_empty() {
                    it.next()
                        .ok_or_else(|| bad(format!("option -{c} needs a value")))?
                } else {
                    rest.to_string()
                };
                match c {
                    'p' => port = Some(parse_port(&value)?),
                    'i' => identity_files.push(expand_home(&value)),
                    'l' => user = Some(value),
                    _ => {
                        let (key, val) = match value.split_once('=') {
                            Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
                            None => match value.trim().split_once(char::is_whitespace) {
                                Some((k, v)) => (k.to_string(), v.trim().to_string()),
                                None => match it.next() {
                                    Some(v) => (value.trim().to_string(), v),
                                    None => return Err(bad(format!("-o {value} needs a value"))),
                                },
                            },
                        };
                        match key.to_ascii_lowercase().as_str() {
                            "port" => port = Some(parse_port(&val)?),
                            "user" => user = Some(val),
                            "identityfile" => identity_files.push(expand_home(&val)),
                            "userknownhostsfile" => known_hosts = Some(expand_home(&val)),
                            "stricthostkeychecking" => {
                                strict = match val.to_ascii_lowercase().as_str() {
                                    "yes" | "ask" => StrictHostKeyChecking::Yes,
                                    "no" | "off" | "accept-new" => StrictHostKeyChecking::No,
                                    _ => {
                                        return Err(bad(format!(
                                            "invalid StrictHostKeyChecking '{val}'"
                                        )))
                                    }
                                }
                            }
                            "connecttimeout" => {
                                let s = val
                                    .parse::<u64>()
                                    .map_err(|_| bad(format!("invalid ConnectTimeout '{val}'")))?;
                                connect_timeout = (s > 0).then(|| Duration::from_secs(s));
                            }
                            k if IGNORED_OPTIONS.contains(&k) => {}
                            _ => return Err(bad(format!("unsupported option -o {key}"))),
                        }
                    }
                }
                break;
            }
        }
        let Some(destination) = destination else {
            return Err(bad("names no host".into()));
        };
        let (url, plain) = match destination.strip_prefix("ssh://") {
            Some(rest) => (true, rest),
            None => (false, destination.as_str()),
        };
        let (dest_user, host) = match plain.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, plain),
        };
        let (host, url_port) = match host.rsplit_once(':').filter(|_| url) {
            Some((h, p)) => (h.to_string(), Some(parse_port(p)?)),
            None => (host.to_string(), None),
        };
        if host.is_empty() || dest_user.as_deref() == Some("") {
            return Err(bad(format!("invalid destination '{destination}'")));
        }
        let user = match dest_user.or(user) {
            Some(u) => u,
            None => local_user().ok_or_else(|| bad("no user given and no local user".into()))?,
        };
        Ok(SshTarget {
            user,
            host,
            port: url_port.or(port).unwrap_or(22),
            identity_files,
            known_hosts,
            strict,
            connect_timeout,
        })
    }
}

/// Splits a command line into words as a POSIX shell would (single quotes, double
/// quotes with `\` escapes, backslashes); no expansion.
pub fn split_shell(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => cur.push(c),
                    None => return Err("trailing backslash".into()),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// The home directory of the user pgbk runs as (`$HOME`, else the password database).
pub fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    passwd_field(|pw| pw.pw_dir)
}

fn local_user() -> Option<String> {
    passwd_field(|pw| pw.pw_name)
        .map(|p| p.to_string_lossy().into_owned())
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
}

fn passwd_field(field: impl Fn(&libc::passwd) -> *mut libc::c_char) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r with a valid passwd struct, buffer and length; the result
    // points into `pw`/`buf`, which outlive its use below.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return None;
    }
    let p = field(&pw);
    if p.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string inside `buf`.
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(s.to_bytes())))
}

/// `~/x` → `<home>/x`.
fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openssh_command_lines() {
        let t = SshTarget::parse(
            "ssh -p 2222 -i /k/id -o StrictHostKeyChecking=no -o 'UserKnownHostsFile=/x y' -oConnectTimeout=5 -q postgres@db1",
        )
        .unwrap();
        assert_eq!(t.user, "postgres");
        assert_eq!(t.host, "db1");
        assert_eq!(t.port, 2222);
        assert_eq!(t.identity_files, [PathBuf::from("/k/id")]);
        assert_eq!(t.known_hosts, Some(PathBuf::from("/x y")));
        assert_eq!(t.strict, StrictHostKeyChecking::No);
        assert_eq!(t.connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(t.display(), "postgres@db1:2222");

        let t = SshTarget::parse("/usr/bin/ssh -o Port 2200 -o User=pg -p2201 -l other h").unwrap();
        assert_eq!((t.user.as_str(), t.port), ("other", 2201));
        assert_eq!(t.strict, StrictHostKeyChecking::Yes);
        let t = SshTarget::parse("ssh -l admin h").unwrap();
        assert_eq!(t.user, "admin");
        let t = SshTarget::parse("ssh u@h -p 3").unwrap_err();
        assert!(t.to_string().contains("after the host"), "{t}");
        let t = SshTarget::parse("ssh ssh://u@h:2022").unwrap();
        assert_eq!((t.user.as_str(), t.host.as_str(), t.port), ("u", "h", 2022));
    }

    #[test]
    fn refuses_what_it_does_not_understand_in_one_line() {
        for (cmd, needle) in [
            ("ssh -J jump u@h", "-J"),
            ("ssh -o ProxyCommand=nc u@h", "ProxyCommand"),
            ("ssh -p 99999 u@h", "99999"),
            ("ssh -p", "needs a value"),
            ("ssh", "no host"),
            ("rsync u@h", "must start with ssh"),
            ("ssh 'u@h", "quote"),
            ("ssh -o StrictHostKeyChecking=maybe h", "maybe"),
        ] {
            let e = SshTarget::parse(cmd).unwrap_err().to_string();
            assert!(e.contains(needle), "{cmd}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split_shell(r#"a 'b c' "d \"e\" \q" f\ g"#).unwrap(),
            ["a", "b c", r#"d "e" \q"#, "f g"]
        );
        assert_eq!(split_shell("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_shell("''").unwrap(), [""]);
    }
}
