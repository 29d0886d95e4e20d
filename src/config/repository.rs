//! `repository = s3://BUCKET/PREFIX` and the `s3_*` options (in `[pgbk]` as the
//! default for every server, or in a server section), validated into
//! [`S3Settings`]; absent, the repository is the local `home` as always.

use super::{values, ConfigError, Fields};
use crate::repo::store::s3_settings::{parse_repository_url, S3Settings, UrlStyle};
use std::path::PathBuf;

/// The options that only mean something with an S3 `repository`.
pub const S3_OPTIONS: &[&str] = &[
    "s3_endpoint",
    "s3_region",
    "s3_url_style",
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_profile",
    "s3_verify_tls",
    "s3_ca_file",
];

/// The server's S3 repository, `None` for the local one; `warnings` gets a line
/// for `s3_*` options set without an S3 repository.
pub(super) fn s3_repository(
    f: &Fields<'_>,
    server: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<S3Settings>, ConfigError> {
    let Some(r) = f.text("repository") else {
        for key in S3_OPTIONS {
            if let Some(o) = f.text(key) {
                warnings.push(format!(
                    "{}:{}: server '{server}': option '{key}' ignored: the repository is the local home (set repository = s3://BUCKET/PREFIX)",
                    o.file.display(),
                    o.line
                ));
            }
        }
        return Ok(None);
    };
    let (bucket, prefix) =
        parse_repository_url(r.value.trim()).map_err(|m| f.err(r, "repository", m))?;
    let endpoint = f.parse("s3_endpoint", |s| {
        let u: url::Url = s.parse().map_err(|e| format!("'{s}' is not a URL: {e}"))?;
        match (u.scheme(), u.host_str()) {
            ("http" | "https", Some(_)) => Ok(s.trim_end_matches('/').to_string()),
            _ => Err(format!(
                "'{s}' is not an http:// or https:// URL with a host"
            )),
        }
    })?;
    let url_style = f
        .parse("s3_url_style", |s| match s.to_ascii_lowercase().as_str() {
            "path" => Ok(UrlStyle::Path),
            "virtual" => Ok(UrlStyle::Virtual),
            _ => Err(format!("expected path or virtual, got '{s}'")),
        })?
        // Most S3-compatible stores serve path-style URLs; AWS wants virtual hosts.
        .unwrap_or(if endpoint.is_some() {
            UrlStyle::Path
        } else {
            UrlStyle::Virtual
        });
    let ca_file = match f.text("s3_ca_file") {
        None => None,
        Some(c) => {
            let mut p = PathBuf::from(c.value.trim());
            if p.is_relative() {
                if let Some(dir) = c.file.parent() {
                    p = dir.join(p);
                }
            }
            if !p.is_file() {
                return Err(f.err(
                    c,
                    "s3_ca_file",
                    format!("{} is not a readable file", p.display()),
                ));
            }
            Some(p)
        }
    };
    let access_key_id = f.string("s3_access_key_id");
    let secret_access_key = f.string("s3_secret_access_key");
    if access_key_id.is_some() != secret_access_key.is_some() {
        let (key, o) = match f.text("s3_access_key_id") {
            Some(o) => ("s3_access_key_id", o),
            None => (
                "s3_secret_access_key",
                f.text("s3_secret_access_key").unwrap_or(r),
            ),
        };
        return Err(f.err(
            o,
            key,
            "s3_access_key_id and s3_secret_access_key must be set together".into(),
        ));
    }
    Ok(Some(S3Settings {
        bucket,
        prefix,
        endpoint,
        region: f
            .string("s3_region")
            .unwrap_or_else(|| "us-east-1".to_string()),
        url_style,
        access_key_id,
        secret_access_key,
        profile: f.string("s3_profile"),
        verify_tls: f
            .parse("s3_verify_tls", values::parse_bool)?
            .unwrap_or(true),
        ca_file,
    }))
}
