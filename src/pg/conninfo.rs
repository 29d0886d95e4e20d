//! libpq connection strings: `key=value` lists and `postgresql://` URIs, with
//! libpq's environment fallbacks (`PGHOST`, `PGPORT`, ...).
//!
//! Parsing follows libpq's `conninfo_parse` and `conninfo_uri_parse` closely, so a
//! string that works with `psql` works here, and an unknown key is an error naming
//! the key. Only the explicit pairs are stored; the `host()`, `port()`... accessors
//! resolve the environment at the time they are called, through an [`Env`] that tests
//! replace with a fixed map so the process environment never leaks into them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::PgError;

/// libpq's default Unix socket directory on Debian-family systems.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// PostgreSQL's default port.
pub const DEFAULT_PORT: u16 = 5432;

/// Every connection option libpq knows (PostgreSQL 15 to 17). Options pgbk does not
/// act on are accepted and ignored, as libpq ignores options of features it lacks.
const KNOWN_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "sslmode",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "require_auth",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
];

/// Keys whose value is a secret and is masked in every rendering.
const SECRET_KEYS: &[&str] = &["password", "sslpassword"];

/// The environment variable libpq reads when a key is absent.
fn env_var_for(key: &str) -> Option<&'static str> {
    Some(match key {
        "host" => "PGHOST",
        "hostaddr" => "PGHOSTADDR",
        "port" => "PGPORT",
        "dbname" => "PGDATABASE",
        "user" => "PGUSER",
        "password" => "PGPASSWORD",
        "passfile" => "PGPASSFILE",
        "channel_binding" => "PGCHANNELBINDING",
        "connect_timeout" => "PGCONNECT_TIMEOUT",
        "client_encoding" => "PGCLIENTENCODING",
        "options" => "PGOPTIONS",
        "application_name" => "PGAPPNAME",
        "sslmode" => "PGSSLMODE",
        "sslcert" => "PGSSLCERT",
        "sslkey" => "PGSSLKEY",
        "sslrootcert" => "PGSSLROOTCERT",
        "sslcrl" => "PGSSLCRL",
        "target_session_attrs" => "PGTARGETSESSIONATTRS",
        "gssencmode" => "PGGSSENCMODE",
        "require_auth" => "PGREQUIREAUTH",
        _ => return None,
    })
}

/// Where environment fallbacks come from: the process environment, or a fixed map
/// (tests, and callers that must not depend on the caller's environment).
#[derive(Clone, Debug, Default)]
pub enum Env {
    /// `std::env::var`.
    #[default]
    Process,
    /// Only these variables exist.
    Fixed(Arc<BTreeMap<String, String>>),
}

impl Env {
    /// The value of `name`; an empty value counts as unset.
    pub fn get(&self, name: &str) -> Option<String> {
        let v = match self {
            Env::Process => std::env::var(name).ok(),
            Env::Fixed(map) => map.get(name).cloned(),
        };
        v.filter(|v| !v.is_empty())
    }
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first; TLS only if the server refuses the plain connection.
    Allow,
    /// TLS if the server offers it, plain otherwise (libpq's default).
    #[default]
    Prefer,
    /// TLS or fail; any certificate is accepted (unless `sslrootcert` is given,
    /// which makes it behave like `verify-ca`, as in libpq).
    Require,
    /// TLS with a certificate chain that verifies against `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = PgError;
    fn from_str(s: &str) -> Result<Self, PgError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return Err(PgError::Config(format!("invalid sslmode value: \"{s}\""))),
        })
    }
}

/// A parsed connection string: the explicit `(key, value)` pairs in the order
/// given, plus where to look for environment fallbacks.
#[derive(Clone, Default)]
pub struct ConnInfo {
    pairs: Vec<(String, String)>,
    env: Env,
}

impl PartialEq for ConnInfo {
    fn eq(&self, other: &Self) -> bool {
        self.pairs == other.pairs
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnInfo({})", self.masked())
    }
}

impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl FromStr for ConnInfo {
    type Err = PgError;
    fn from_str(s: &str) -> Result<Self, PgError> {
        ConnInfo::parse(s)
    }
}

impl ConnInfo {
    /// Parses a libpq connection string: `key=value` pairs (values optionally
    /// single-quoted with `\'` and `\\` escapes, spaces allowed around `=`) or a
    /// `postgresql://` / `postgres://` URI.
    pub fn parse(s: &str) -> Result<ConnInfo, PgError> {
        let trimmed = s.trim_start();
        let pairs = if let Some(rest) = trimmed
            .strip_prefix("postgresql://")
            .or_else(|| trimmed.strip_prefix("postgres://"))
        {
            parse_uri(rest)?
        } else {
            parse_key_value(s)?
        };
        let mut info = ConnInfo::default();
        for (k, v) in pairs {
            check_key(&k)?;
            info.set(&k, &v);
        }
        if let Some(mode) = info.get("sslmode") {
            SslMode::from_str(mode)?;
        }
        if let Some(port) = info.get("port") {
            if !port.is_empty() {
                parse_port(port)?;
            }
        }
        Ok(info)
    }

    /// Resolves environment fallbacks from `vars` instead of the process environment.
    pub fn with_env<I, K, V>(mut self, vars: I) -> ConnInfo
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let map = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self.env = Env::Fixed(Arc::new(map));
        self
    }

    /// The environment this connection string resolves fallbacks from.
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// The explicit value of `key`, if the connection string has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` (replacing an earlier value in place, or appending).
    pub fn set(&mut self, key: &str, value: &str) {
        match self.pairs.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = value.to_string(),
            None => self.pairs.push((key.to_string(), value.to_string())),
        }
    }

    /// Removes `key` from the explicit pairs.
    pub fn remove(&mut self, key: &str) {
        self.pairs.retain(|(k, _)| k != key);
    }

    /// The explicit pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The `key=value` form with every password replaced by `********`.
    pub fn masked(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.pairs {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(k);
            out.push('=');
            if SECRET_KEYS.contains(&k.as_str()) {
                out.push_str("'********'");
            } else {
                out.push_str(&quote_value(v));
            }
        }
        out
    }

    /// The value of `key` as libpq resolves it: the explicit value (even empty),
    /// else the environment variable libpq reads for it. Empty results are `None`.
    pub fn resolve(&self, key: &str) -> Option<String> {
        match self.get(key) {
            Some(v) => Some(v.to_string()).filter(|v| !v.is_empty()),
            None => env_var_for(key).and_then(|var| self.env.get(var)),
        }
    }

    /// The host: `host`, `PGHOST`, else `hostaddr`, else the default socket directory
    /// `/var/run/postgresql`. A value starting with `/` is a Unix socket directory.
    pub fn host(&self) -> String {
        self.resolve("host")
            .or_else(|| self.hostaddr())
            .unwrap_or_else(|| DEFAULT_SOCKET_DIR.to_string())
    }

    /// The numeric address to connect to instead of resolving `host` (`hostaddr`, `PGHOSTADDR`).
    pub fn hostaddr(&self) -> Option<String> {
        self.resolve("hostaddr")
    }

    /// True when the host is a Unix socket directory.
    pub fn is_unix_socket(&self) -> bool {
        self.hostaddr().is_none() && self.host().starts_with('/')
    }

    /// The port: `port`, `PGPORT`, else 5432 (also for an invalid value, which
    /// [`ConnInfo::validate`] reports).
    pub fn port(&self) -> u16 {
        self.resolve("port")
            .and_then(|p| parse_port(&p).ok())
            .unwrap_or(DEFAULT_PORT)
    }

    /// The user: `user`, `PGUSER`, else the operating-system user name.
    pub fn user(&self) -> String {
        self.resolve("user")
            .or_else(os_user_name)
            .or_else(|| self.env.get("USER"))
            .unwrap_or_default()
    }

    /// True for a physical replication connection string (`replication=true|on|yes|1`).
    pub fn is_replication(&self) -> bool {
        matches!(
            self.resolve("replication").as_deref(),
            Some("true" | "on" | "yes" | "1")
        )
    }

    /// The database: `dbname`, `PGDATABASE`, else the user name; `None` for physical
    /// replication connections, which are not connected to a database.
    pub fn dbname(&self) -> Option<String> {
        if self.is_replication() {
            return None;
        }
        Some(self.resolve("dbname").unwrap_or_else(|| self.user()))
    }

    /// The explicit password: `password`, else `PGPASSWORD` (the password file is
    /// consulted at connection time, see [`super::pgpass`]).
    pub fn password(&self) -> Option<String> {
        self.resolve("password")
    }

    /// The password file: `passfile`, `PGPASSFILE`, else `$HOME/.pgpass`.
    pub fn passfile(&self) -> Option<PathBuf> {
        if let Some(p) = self.resolve("passfile") {
            return Some(PathBuf::from(p));
        }
        let home = self.env.get("HOME").or_else(os_home_dir)?;
        Some(PathBuf::from(home).join(".pgpass"))
    }

    /// `sslmode` or `PGSSLMODE`; `prefer` when unset (or invalid, which
    /// [`ConnInfo::validate`] reports).
    pub fn sslmode(&self) -> SslMode {
        self.resolve("sslmode")
            .and_then(|m| SslMode::from_str(&m).ok())
            .unwrap_or_default()
    }

    /// The application name: `application_name`, `PGAPPNAME`, else `fallback_application_name`.
    pub fn application_name(&self) -> Option<String> {
        self.resolve("application_name")
            .or_else(|| self.resolve("fallback_application_name"))
    }

    /// `connect_timeout` / `PGCONNECT_TIMEOUT` in seconds; `None` (wait forever) when
    /// unset or zero. Like libpq, values below 2 seconds count as 2.
    pub fn connect_timeout(&self) -> Option<Duration> {
        let secs: i64 = self.resolve("connect_timeout")?.trim().parse().ok()?;
        (secs > 0).then(|| Duration::from_secs(secs.max(2) as u64))
    }

    /// Checks the resolved values that `parse` cannot see (they may come from the
    /// environment): `sslmode`, `port`, `connect_timeout`, `channel_binding`, and
    /// options pgbk does not support.
    pub fn validate(&self) -> Result<(), PgError> {
        if let Some(m) = self.resolve("sslmode") {
            SslMode::from_str(&m)?;
        }
        if let Some(p) = self.resolve("port") {
            parse_port(&p)?;
        }
        if let Some(t) = self.resolve("connect_timeout") {
            t.trim().parse::<i64>().map_err(|_| {
                PgError::Config(format!(
                    "invalid integer value \"{t}\" for connection option \"connect_timeout\""
                ))
            })?;
        }
        if let Some(cb) = self.resolve("channel_binding") {
            match cb.as_str() {
                "disable" | "prefer" => {}
                "require" => {
                    return Err(PgError::Config(
                        "channel_binding=require is not supported by pgbk".to_string(),
                    ))
                }
                _ => {
                    return Err(PgError::Config(format!(
                        "invalid channel_binding value: \"{cb}\""
                    )))
                }
            }
        }
        if self.get("service").is_some() || self.env.get("PGSERVICE").is_some() {
            return Err(PgError::Config(
                "connection services (service, PGSERVICE) are not supported by pgbk".to_string(),
            ));
        }
        let host = self.host();
        if host.contains(',') || self.get("port").is_some_and(|p| p.contains(',')) {
            return Err(PgError::Config(format!(
                "multiple hosts are not supported (host \"{host}\")"
            )));
        }
        Ok(())
    }
}

fn check_key(key: &str) -> Result<(), PgError> {
    if KNOWN_KEYS.contains(&key) {
        Ok(())
    } else {
        Err(PgError::Config(format!(
            "invalid connection option \"{key}\""
        )))
    }
}

fn parse_port(p: &str) -> Result<u16, PgError> {
    match p.trim().parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(PgError::Config(format!("invalid port number: \"{p}\""))),
    }
}

/// Quotes a value for the `key=value` syntax when needed.
fn quote_value(v: &str) -> String {
    let needs = v.is_empty()
        || v.chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if !needs {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// libpq's `conninfo_parse`.
fn parse_key_value(s: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(PgError::Config(format!(
                "missing \"=\" after \"{key}\" in connection info string"
            )));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    None => {
                        return Err(PgError::Config(
                            "unterminated quoted string in connection info string".to_string(),
                        ))
                    }
                    Some('\\') => {
                        if let Some(c) = it.next() {
                            value.push(c);
                        }
                    }
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(c) = it.next() {
                        value.push(c);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Decodes `%XX` sequences (libpq's `conninfo_uri_decode`).
fn percent_decode(s: &str) -> Result<String, PgError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    PgError::Config(format!("invalid percent-encoded token: \"{s}\""))
                })?;
            if hex == 0 {
                return Err(PgError::Config(format!(
                    "forbidden value %00 in percent-encoded value: \"{s}\""
                )));
            }
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| PgError::Config(format!("percent-encoded value is not UTF-8: \"{s}\"")))
}

/// libpq's `conninfo_uri_parse_options`, for the part after `postgresql://`.
fn parse_uri(rest: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut out = Vec::new();
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    // Credentials: up to an '@' before the first '/'.
    let mut hostpart = main;
    let slash = main.find('/').unwrap_or(main.len());
    if let Some(at) = main[..slash].rfind('@') {
        let creds = &main[..at];
        hostpart = &main[at + 1..];
        let (user, password) = match creds.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (creds, None),
        };
        if !user.is_empty() {
            out.push(("user".to_string(), percent_decode(user)?));
        }
        if let Some(p) = password {
            out.push(("password".to_string(), percent_decode(p)?));
        }
    }
    let (hostport, path) = match hostpart.find('/') {
        Some(i) => (&hostpart[..i], Some(&hostpart[i + 1..])),
        None => (hostpart, None),
    };
    if hostport.contains(',') {
        return Err(PgError::Config(
            "multiple hosts are not supported".to_string(),
        ));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(|| {
            PgError::Config(format!(
                "missing \"]\" in IPv6 host address in URI: \"{hostport}\""
            ))
        })?;
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => {
                return Err(PgError::Config(format!(
                    "unexpected character after IPv6 host address in URI: \"{hostport}\""
                )))
            }
        };
        (&v6[..end], port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        out.push(("host".to_string(), percent_decode(host)?));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        out.push(("port".to_string(), percent_decode(p)?));
    }
    if let Some(db) = path.filter(|d| !d.is_empty()) {
        out.push(("dbname".to_string(), percent_decode(db)?));
    }
    if let Some(q) = query {
        for param in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = param.split_once('=').ok_or_else(|| {
                PgError::Config(format!(
                    "missing key/value separator \"=\" in URI query parameter: \"{param}\""
                ))
            })?;
            let k = percent_decode(k)?;
            let v = percent_decode(v)?;
            if k == "ssl" && v == "true" {
                out.push(("sslmode".to_string(), "require".to_string()));
                continue;
            }
            if !KNOWN_KEYS.contains(&k.as_str()) {
                return Err(PgError::Config(format!(
                    "invalid URI query parameter: \"{k}\""
                )));
            }
            out.push((k, v));
        }
    }
    Ok(out)
}

/// Masks the password in any connection string text, for logs and error messages.
/// A string that does not parse is masked textually: everything after `password=`
/// up to the next space, and the password part of a URI's `user:password@`.
pub fn mask_conninfo(s: &str) -> String {
    if let Ok(info) = ConnInfo::parse(s) {
        return info.masked();
    }
    let mut out = s.to_string();
    // URI credentials.
    if let Some(scheme_end) = out.find("://") {
        let start = scheme_end + 3;
        let end = out[start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@') {
            let creds = &out[start..start + at];
            if let Some(colon) = creds.find(':') {
                out.replace_range(start + colon + 1..start + at, "********");
            }
        }
    }
    // password= / sslpassword= anywhere, up to the next space (or the closing quote).
    let mut from = 0;
    while let Some(i) = out[from..].find("password") {
        let key_end = from + i + "password".len();
        let rest = &out[key_end..];
        let eq = rest.len() - rest.trim_start().len();
        if !rest[eq..].starts_with('=') {
            from = key_end;
            continue;
        }
        let mut vstart = key_end + eq + 1;
        vstart += out[vstart..].len() - out[vstart..].trim_start().len();
        let vend = if out[vstart..].starts_with('\'') {
            let bytes = out.as_bytes();
            let mut j = vstart + 1;
            while j < bytes.len() && bytes[j] != b'\'' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1).min(out.len())
        } else {
            out[vstart..]
                .find(|c: char| c.is_whitespace() || c == '&')
                .map_or(out.len(), |j| vstart + j)
        };
        out.replace_range(vstart..vend, "********");
        from = vstart + "********".len();
    }
    out
}

/// A `getpwuid_r` entry for the effective user: (name, home directory).
fn os_passwd_entry() -> Option<(String, String)> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: `passwd` is a plain C struct for which all-zero bytes are valid.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized storage owned here.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name and pw_dir point to NUL-terminated strings in `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    let dir = if pwd.pw_dir.is_null() {
        String::new()
    } else {
        // SAFETY: as above.
        unsafe { std::ffi::CStr::from_ptr(pwd.pw_dir) }
            .to_string_lossy()
            .into_owned()
    };
    Some((name, dir))
}

/// The effective user's name, from the password database.
pub(crate) fn os_user_name() -> Option<String> {
    os_passwd_entry().map(|(n, _)| n).filter(|n| !n.is_empty())
}

/// The effective user's home directory, from the password database.
pub(crate) fn os_home_dir() -> Option<String> {
    os_passwd_entry().map(|(_, d)| d).filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(s: &str) -> ConnInfo {
        ConnInfo::parse(s)
            .unwrap()
            .with_env(Vec::<(String, String)>::new())
    }

    #[test]
    fn key_value_with_quotes_escapes_and_spaces() {
        let c = ConnInfo::parse(
            r"host = db1  port=5433 dbname='my db' password='it\'s \\ secret' user=a\ b",
        )
        .unwrap();
        assert_eq!(c.get("host"), Some("db1"));
        assert_eq!(c.get("port"), Some("5433"));
        assert_eq!(c.get("dbname"), Some("my db"));
        assert_eq!(c.get("password"), Some(r"it's \ secret"));
        assert_eq!(c.get("user"), Some("a b"));
        let keys: Vec<&str> = c.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["host", "port", "dbname", "password", "user"]);
    }

    #[test]
    fn key_value_errors_are_libpq_like() {
        let e = ConnInfo::parse("host=a bogus=1").unwrap_err().to_string();
        assert!(e.contains("invalid connection option \"bogus\""), "{e}");
        let e = ConnInfo::parse("host").unwrap_err().to_string();
        assert!(e.contains("missing \"=\" after \"host\""), "{e}");
        let e = ConnInfo::parse("password='abc").unwrap_err().to_string();
        assert!(e.contains("unterminated quoted string"), "{e}");
        assert!(!e.contains("abc"));
        assert!(ConnInfo::parse("sslmode=sometimes").is_err());
        assert!(ConnInfo::parse("port=99999").is_err());
        assert_eq!(ConnInfo::parse("").unwrap().iter().count(), 0);
        assert_eq!(ConnInfo::parse("  ").unwrap().iter().count(), 0);
    }

    #[test]
    fn later_values_replace_earlier_ones() {
        let mut c = ConnInfo::parse("host=a port=1 host=b").unwrap();
        assert_eq!(c.get("host"), Some("b"));
        c.set("port", "2");
        c.set("user", "u");
        assert_eq!(c.masked(), "host=b port=2 user=u");
        c.remove("port");
        assert_eq!(c.masked(), "host=b user=u");
    }

    #[test]
    fn empty_quoted_value_and_libpq_greedy_value() {
        let c = ConnInfo::parse("host='' port=5432").unwrap();
        assert_eq!(c.get("host"), Some(""));
        // libpq reads the next token as the value after "= ".
        let c = ConnInfo::parse("application_name= port=5432").unwrap();
        assert_eq!(c.get("application_name"), Some("port=5432"));
    }

    #[test]
    fn uri_full_form() {
        let c = ConnInfo::parse(
            "postgresql://bob:s%40cr%3At@db.example.com:6543/my%20db?sslmode=require&application_name=pgbk",
        )
        .unwrap();
        assert_eq!(c.get("user"), Some("bob"));
        assert_eq!(c.get("password"), Some("s@cr:t"));
        assert_eq!(c.get("host"), Some("db.example.com"));
        assert_eq!(c.get("port"), Some("6543"));
        assert_eq!(c.get("dbname"), Some("my db"));
        assert_eq!(c.sslmode(), SslMode::Require);
        assert_eq!(c.get("application_name"), Some("pgbk"));
    }

    #[test]
    fn uri_variants() {
        let c = no_env("postgres://");
        assert_eq!(c.iter().count(), 0);
        assert_eq!(c.host(), DEFAULT_SOCKET_DIR);
        let c = ConnInfo::parse("postgresql://[::1]:5433/db").unwrap();
        assert_eq!(c.get("host"), Some("::1"));
        assert_eq!(c.get("port"), Some("5433"));
        let c = ConnInfo::parse("postgresql://%2Ftmp%2Fsock/db?user=x&ssl=true").unwrap();
        assert_eq!(c.get("host"), Some("/tmp/sock"));
        assert_eq!(c.get("user"), Some("x"));
        assert_eq!(c.get("sslmode"), Some("require"));
        let c = ConnInfo::parse("postgresql://u@h").unwrap();
        assert_eq!(c.get("user"), Some("u"));
        assert_eq!(c.get("host"), Some("h"));
        assert_eq!(c.get("password"), None);
        let c = ConnInfo::parse("postgresql:///db?host=/run/pg&replication=true").unwrap();
        assert_eq!(c.get("host"), Some("/run/pg"));
        assert!(c.is_replication());
        assert_eq!(c.dbname(), None);
        let e = ConnInfo::parse("postgresql://h/db?frobnicate=1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid URI query parameter: \"frobnicate\""),
            "{e}"
        );
        assert!(ConnInfo::parse("postgresql://a,b/db").is_err());
        assert!(ConnInfo::parse("postgresql://h/%zz").is_err());
        assert!(ConnInfo::parse("postgresql://h/a%00b").is_err());
    }

    #[test]
    fn masking_never_shows_the_password() {
        let c = ConnInfo::parse("host=h password=hunter2 user='a b'").unwrap();
        assert_eq!(c.masked(), "host=h password='********' user='a b'");
        assert_eq!(c.to_string(), c.masked());
        assert!(!format!("{c:?}").contains("hunter2"));
        let m = mask_conninfo("postgresql://u:hunter2@h/db");
        assert!(!m.contains("hunter2"), "{m}");
        assert!(m.contains("password='********'"), "{m}");
        // Unparseable text is masked textually.
        let m = mask_conninfo("host=h bogus=1 password=hunter2 port=1");
        assert_eq!(m, "host=h bogus=1 password=******** port=1");
        let m = mask_conninfo("bogus=1 password = 'hun ter2' port=1");
        assert_eq!(m, "bogus=1 password = ******** port=1");
        let m = mask_conninfo("postgresql://u:hunter2@h/db?bogus=1");
        assert!(!m.contains("hunter2"), "{m}");
        assert_eq!(mask_conninfo("host=h"), "host=h");
    }

    #[test]
    fn quoting_round_trips() {
        let mut c = ConnInfo::default();
        c.set("application_name", r"it's a \ test");
        c.set("options", "");
        let back = ConnInfo::parse(&c.masked()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn environment_fallbacks() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "verify-full"),
            ("PGAPPNAME", "envapp"),
            ("PGCONNECT_TIMEOUT", "1"),
            ("PGPASSFILE", "/x/pgpass"),
        ];
        let c = ConnInfo::parse("").unwrap().with_env(env);
        assert_eq!(c.host(), "envhost");
        assert_eq!(c.port(), 6000);
        assert_eq!(c.user(), "envuser");
        assert_eq!(c.dbname().as_deref(), Some("envdb"));
        assert_eq!(c.password().as_deref(), Some("envpw"));
        assert_eq!(c.sslmode(), SslMode::VerifyFull);
        assert_eq!(c.application_name().as_deref(), Some("envapp"));
        assert_eq!(c.connect_timeout(), Some(Duration::from_secs(2)));
        assert_eq!(c.passfile(), Some(PathBuf::from("/x/pgpass")));
        // Explicit values win, even empty ones (libpq does not consult the env then).
        let c = ConnInfo::parse("host=h port=7 user=u dbname=d password='' sslmode=disable")
            .unwrap()
            .with_env(env);
        assert_eq!(c.host(), "h");
        assert_eq!(c.port(), 7);
        assert_eq!(c.user(), "u");
        assert_eq!(c.dbname().as_deref(), Some("d"));
        assert_eq!(c.password(), None);
        assert_eq!(c.sslmode(), SslMode::Disable);
    }

    #[test]
    fn defaults_without_environment() {
        let c = no_env("");
        assert_eq!(c.host(), DEFAULT_SOCKET_DIR);
        assert!(c.is_unix_socket());
        assert_eq!(c.port(), 5432);
        assert_eq!(c.sslmode(), SslMode::Prefer);
        assert_eq!(c.connect_timeout(), None);
        assert_eq!(c.password(), None);
        let user = c.user();
        assert!(!user.is_empty());
        assert_eq!(c.dbname(), Some(user));
        let c = no_env("hostaddr=127.0.0.1");
        assert_eq!(c.host(), "127.0.0.1");
        assert!(!c.is_unix_socket());
        let c = no_env("host=h fallback_application_name=fb");
        assert_eq!(c.application_name().as_deref(), Some("fb"));
        let c = no_env("connect_timeout=0");
        assert_eq!(c.connect_timeout(), None);
        let c = no_env("connect_timeout=10");
        assert_eq!(c.connect_timeout(), Some(Duration::from_secs(10)));
    }

    #[test]
    fn validate_checks_environment_values() {
        let c = ConnInfo::parse("")
            .unwrap()
            .with_env([("PGSSLMODE", "bogus")]);
        assert!(c.validate().is_err());
        let c = ConnInfo::parse("").unwrap().with_env([("PGPORT", "x")]);
        assert!(c.validate().is_err());
        assert!(no_env("channel_binding=require").validate().is_err());
        assert!(no_env("service=foo").validate().is_err());
        assert!(no_env("host=a,b").validate().is_err());
        assert!(no_env("host=a channel_binding=prefer").validate().is_ok());
    }
}
