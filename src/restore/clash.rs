//! Settings a recovered copy inherits from the source that would clash with it when
//! the copy starts on the same host (its port and socket directory), reach back to
//! production (`primary_conninfo`), or point outside the copy (`data_directory`,
//! `hba_file`, `ident_file`, `config_file`): warned about after a local recovery, as
//! Barman does, with `--port` / `--set KEY=VALUE` to override them.

use super::RecoverRequest;
use std::collections::BTreeMap;
use std::path::Path;

/// The settings `postgresql.conf` and then `postgresql.auto.conf` leave in force
/// (the last assignment wins; `include` files are not followed).
pub fn effective_settings(dest: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for file in ["postgresql.conf", "postgresql.auto.conf"] {
        let Ok(text) = std::fs::read_to_string(dest.join(file)) else {
            continue;
        };
        for line in text.lines() {
            if let Some((k, v)) = parse_line(line) {
                out.insert(k, v);
            }
        }
    }
    out
}

/// `name = value` or `name value`, a `#` comment stripped outside quotes, the value
/// unquoted; `None` for blank, comment and malformed lines.
fn parse_line(line: &str) -> Option<(String, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(line.len());
    let key = line[..end].to_ascii_lowercase();
    if key.is_empty() {
        return None;
    }
    let rest = line[end..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    let value = if let Some(q) = rest.strip_prefix('\'') {
        let mut v = String::new();
        let mut chars = q.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    v.push('\'');
                }
                '\'' => break,
                '\\' => {
                    if let Some(n) = chars.next() {
                        v.push(n);
                    }
                }
                c => v.push(c),
            }
        }
        v
    } else {
        rest.split('#').next().unwrap_or("").trim().to_string()
    };
    Some((key, value))
}

fn is_local(host: &str) -> bool {
    host.is_empty()
        || host.starts_with('/')
        || host == "localhost"
        || host.starts_with("127.")
        || host == "::1"
}

/// The warnings for a recovered copy in `dest` (settings given with `--port` or
/// `--set` are not warned about).
pub fn warnings(dest: &Path, req: &RecoverRequest) -> Vec<String> {
    let settings = effective_settings(dest);
    let overridden = |k: &str| req.overrides.iter().any(|(o, _)| o.eq_ignore_ascii_case(k));
    let mut out = Vec::new();
    let local_source = req.source.as_ref().filter(|(h, _)| is_local(h));
    if let Some((_, source_port)) = local_source {
        let port: u16 = settings
            .get("port")
            .and_then(|p| p.parse().ok())
            .unwrap_or(5432);
        if port == *source_port && !overridden("port") {
            out.push(format!(
                "port = {port} is the source server's port on this host: start the copy elsewhere or recover with --port N"
            ));
        }
        if let Some(dirs) = settings.get("unix_socket_directories") {
            if !overridden("unix_socket_directories") && !dirs.is_empty() {
                out.push(format!(
                    "unix_socket_directories = '{dirs}' is shared with the source server: with the same port the copy cannot start; recover with --set unix_socket_directories=DIR"
                ));
            }
        }
    }
    if let Some(v) = settings.get("primary_conninfo").filter(|v| !v.is_empty()) {
        if !overridden("primary_conninfo") {
            let shown = crate::pg::ConnInfo::parse(v)
                .map(|c| c.masked())
                .unwrap_or_else(|_| "(set)".into());
            out.push(format!(
                "primary_conninfo = '{shown}' would connect the copy to a production server; recover with --set primary_conninfo= to clear it"
            ));
        }
    }
    for key in ["data_directory", "hba_file", "ident_file", "config_file"] {
        let Some(v) = settings.get(key).filter(|v| !v.is_empty()) else {
            continue;
        };
        if overridden(key) || Path::new(v).starts_with(dest) || !Path::new(v).is_absolute() {
            continue;
        }
        out.push(format!(
            "{key} = '{v}' points outside {}: the copy would use the source's file; recover with --set {key}=PATH",
            dest.display()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgresql_conf_lines() {
        assert_eq!(
            parse_line("port = 5433  # comment"),
            Some(("port".into(), "5433".into()))
        );
        assert_eq!(
            parse_line("primary_conninfo = 'host=x password=''p#w'''"),
            Some(("primary_conninfo".into(), "host=x password='p#w'".into()))
        );
        assert_eq!(
            parse_line("unix_socket_directories '/tmp'"),
            Some(("unix_socket_directories".into(), "/tmp".into()))
        );
        assert_eq!(parse_line("# port = 1"), None);
        assert_eq!(parse_line("   "), None);
    }
}
