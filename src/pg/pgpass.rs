//! The libpq password file (`~/.pgpass`).
//!
//! Lines are `hostname:port:database:username:password`; each of the first four
//! fields may be `*`; `\:` and `\\` escape a colon and a backslash; the first
//! matching line wins. The file is ignored (with a warning) unless it is a regular
//! file without group or world permissions, as libpq does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::conninfo::os_home_dir;

/// The password for `(host, port, dbname, user)` from the password file, if any.
///
/// The file is `passfile` when given, else `$PGPASSFILE`, else `$HOME/.pgpass`.
/// A Unix socket host (a path) matches the `localhost` entries. For physical
/// replication connections pass `"replication"` as `dbname`.
pub fn lookup(
    passfile: Option<&Path>,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let path: PathBuf = match passfile {
        Some(p) => p.to_path_buf(),
        None => match std::env::var("PGPASSFILE").ok().filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => {
                let home = std::env::var("HOME")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .or_else(os_home_dir)?;
                PathBuf::from(home).join(".pgpass")
            }
        },
    };
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() {
        tracing::warn!(
            "password file \"{}\" is not a plain file; ignoring it",
            path.display()
        );
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less; ignoring it",
            path.display()
        );
        return None;
    }
    let content = match std::fs::read(&path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("could not read password file \"{}\": {e}", path.display());
            return None;
        }
    };
    find_password(&String::from_utf8_lossy(&content), host, port, dbname, user)
}

/// The first matching line's password in the text of a password file.
pub fn find_password(
    content: &str,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let host = if host.is_empty() || host.starts_with('/') {
        "localhost"
    } else {
        host
    };
    let port = port.to_string();
    let wanted = [host, port.as_str(), dbname, user];
    for line in content.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_line(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = fields[..4]
            .iter()
            .zip(wanted)
            .all(|((value, star), want)| *star || value == want);
        if matches {
            return Some(fields[4].0.clone());
        }
    }
    None
}

/// Splits a line into its five fields, unescaped; each with "was a bare `*`".
/// Colons in the password field (the fifth and last) are kept.
fn split_line(line: &str) -> Vec<(String, bool)> {
    let mut fields = Vec::with_capacity(5);
    let mut cur = String::new();
    let mut raw_star = true;
    let mut raw_len = 0;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                raw_star = false;
                raw_len += 2;
            }
            ':' if fields.len() < 4 => {
                fields.push((std::mem::take(&mut cur), raw_star && raw_len == 1));
                raw_star = true;
                raw_len = 0;
            }
            c => {
                if c != '*' {
                    raw_star = false;
                }
                cur.push(c);
                raw_len += 1;
            }
        }
    }
    fields.push((cur, false));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const FILE: &str = "\
# comment line
db1:5432:sales:alice:pw-sales
db1:5432:*:alice:pw-any-db
*:*:replication:rep:pw-rep
localhost:5433:*:bob:pw-local
host\\:with\\:colons:5432:*:carol:pa\\:ss\\\\word
db2:5432:*:*:pw:with:colons
db3:5432:*:\\*:pw-literal-star
";

    #[test]
    fn first_match_wins_with_wildcards() {
        assert_eq!(
            find_password(FILE, "db1", 5432, "sales", "alice").as_deref(),
            Some("pw-sales")
        );
        assert_eq!(
            find_password(FILE, "db1", 5432, "hr", "alice").as_deref(),
            Some("pw-any-db")
        );
        assert_eq!(find_password(FILE, "db1", 5433, "hr", "alice"), None);
        assert_eq!(
            find_password(FILE, "anything", 1, "replication", "rep").as_deref(),
            Some("pw-rep")
        );
        assert_eq!(find_password(FILE, "anything", 1, "postgres", "rep"), None);
    }

    #[test]
    fn socket_hosts_match_localhost() {
        assert_eq!(
            find_password(FILE, "/tmp", 5433, "x", "bob").as_deref(),
            Some("pw-local")
        );
        assert_eq!(
            find_password(FILE, "", 5433, "x", "bob").as_deref(),
            Some("pw-local")
        );
        assert_eq!(
            find_password(FILE, "localhost", 5433, "x", "bob").as_deref(),
            Some("pw-local")
        );
    }

    #[test]
    fn escapes_in_fields_and_password() {
        assert_eq!(
            find_password(FILE, "host:with:colons", 5432, "d", "carol").as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            find_password(FILE, "db2", 5432, "d", "x").as_deref(),
            Some("pw:with:colons")
        );
        // An escaped star is a literal star, not a wildcard.
        assert_eq!(find_password(FILE, "db3", 5432, "d", "x"), None);
        assert_eq!(
            find_password(FILE, "db3", 5432, "d", "*").as_deref(),
            Some("pw-literal-star")
        );
    }

    #[test]
    fn short_lines_are_skipped() {
        assert_eq!(
            find_password("a:b:c\n*:*:*:*:ok\n", "h", 1, "d", "u").as_deref(),
            Some("ok")
        );
    }

    #[test]
    fn file_permissions_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"*:*:*:*:secret\n").unwrap();
        drop(f);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup(Some(&path), "h", 5432, "d", "u"), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            lookup(Some(&path), "h", 5432, "d", "u").as_deref(),
            Some("secret")
        );
        assert_eq!(
            lookup(Some(&dir.path().join("missing")), "h", 5432, "d", "u"),
            None
        );
        assert_eq!(lookup(Some(dir.path()), "h", 5432, "d", "u"), None);
    }
}
