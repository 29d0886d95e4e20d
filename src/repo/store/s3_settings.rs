//! What an S3 repository is configured with: `repository = s3://BUCKET/PREFIX` and
//! the `s3_*` options, and where its credentials come from (the options, else the
//! standard AWS environment variables, else a profile of `~/.aws/credentials`).

use std::path::PathBuf;

/// Path-style (`endpoint/bucket/key`) or virtual-host (`bucket.endpoint/key`) URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlStyle {
    /// `http://host:port/bucket/key`: what most S3-compatible stores serve.
    Path,
    /// `https://bucket.host/key`: AWS's default.
    Virtual,
}

/// An S3 repository's settings, as validated from the configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// The bucket.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// `s3_endpoint` (`None`: AWS, `https://s3.<region>.amazonaws.com`).
    pub endpoint: Option<String>,
    /// `s3_region`.
    pub region: String,
    /// `s3_url_style`.
    pub url_style: UrlStyle,
    /// `s3_access_key_id`.
    pub access_key_id: Option<String>,
    /// `s3_secret_access_key` (never printed).
    pub secret_access_key: Option<String>,
    /// `s3_profile` of `~/.aws/credentials`.
    pub profile: Option<String>,
    /// `s3_verify_tls`.
    pub verify_tls: bool,
    /// `s3_ca_file`: extra trusted CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("url_style", &self.url_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "********"),
            )
            .field("profile", &self.profile)
            .field("verify_tls", &self.verify_tls)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Credentials to sign requests with.
#[derive(Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub key: String,
    /// Secret access key.
    pub secret: String,
    /// Session token of temporary credentials.
    pub token: Option<String>,
    /// Where they came from, for messages (`s3_access_key_id`, `AWS_ACCESS_KEY_ID`,
    /// `~/.aws/credentials [default]`).
    pub source: String,
}

/// Splits `s3://BUCKET/PREFIX` into bucket and prefix, checking the bucket name as
/// S3 does (3 to 63 of a-z, 0-9, `.` and `-`, starting and ending with a letter or
/// digit) and the prefix as a key.
pub fn parse_repository_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("'{url}' is not an s3://BUCKET/PREFIX URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_end_matches('/');
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !bucket.chars().all(ok_char)
        || !edge(bucket.chars().next())
        || !edge(bucket.chars().last())
    {
        return Err(format!(
            "'{bucket}' in '{url}' is not a valid bucket name (3 to 63 of a-z, 0-9, '.', '-')"
        ));
    }
    if !prefix.is_empty() && super::check_key(prefix).is_err() {
        return Err(format!("'{prefix}' in '{url}' is not a valid key prefix"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// A profile's `aws_access_key_id`, `aws_secret_access_key` and
/// `aws_session_token` from the text of a credentials file.
fn profile_from(text: &str, profile: &str) -> Option<(String, String, Option<String>)> {
    let mut in_profile = false;
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some((key?, secret?, token))
}

impl S3Settings {
    /// `s3://bucket/prefix`, as the repository is shown (no secret).
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// The endpoint requests go to.
    pub fn endpoint_url(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", self.region))
    }

    /// The credentials: the options, else `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` (`AWS_SESSION_TOKEN`), else the profile (`s3_profile`,
    /// `AWS_PROFILE` or `default`) of `AWS_SHARED_CREDENTIALS_FILE` or
    /// `~/.aws/credentials`.
    pub fn credentials(&self) -> Result<S3Credentials, String> {
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(k), Some(s)) => {
                return Ok(S3Credentials {
                    key: k.clone(),
                    secret: s.clone(),
                    token: None,
                    source: "s3_access_key_id".into(),
                })
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "s3_access_key_id and s3_secret_access_key must be given together".into(),
                )
            }
            (None, None) => {}
        }
        if self.profile.is_none() {
            if let (Ok(k), Ok(s)) = (
                std::env::var("AWS_ACCESS_KEY_ID"),
                std::env::var("AWS_SECRET_ACCESS_KEY"),
            ) {
                return Ok(S3Credentials {
                    key: k,
                    secret: s,
                    token: std::env::var("AWS_SESSION_TOKEN").ok(),
                    source: "AWS_ACCESS_KEY_ID".into(),
                });
            }
        }
        let profile = self
            .profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok())
            .unwrap_or_else(|| "default".into());
        let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials"))
            });
        let Some(file) = file else {
            return Err("no S3 credentials: set s3_access_key_id and s3_secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into());
        };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            format!(
                "no S3 credentials: not in the configuration nor the environment, and {}: {e}",
                file.display()
            )
        })?;
        let (key, secret, token) = profile_from(&text, &profile).ok_or_else(|| {
            format!(
                "no S3 credentials: profile [{profile}] of {} has no aws_access_key_id and aws_secret_access_key",
                file.display()
            )
        })?;
        Ok(S3Credentials {
            key,
            secret,
            token,
            source: format!("{} [{profile}]", file.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_urls_parse_or_say_why_not() {
        assert_eq!(
            parse_repository_url("s3://pgbk/prod/eu").unwrap(),
            ("pgbk".to_string(), "prod/eu".to_string())
        );
        assert_eq!(
            parse_repository_url("s3://pgbk-1/").unwrap(),
            ("pgbk-1".to_string(), String::new())
        );
        for bad in [
            "pgbk/x",
            "s3://Pgbk/x",
            "s3://ab",
            "s3://-ab/x",
            "s3://pgbk/../x",
            "http://pgbk",
        ] {
            assert!(parse_repository_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn profiles_are_read_from_a_credentials_file() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n[lab]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=T\n";
        assert_eq!(
            profile_from(text, "default"),
            Some(("A".into(), "B".into(), None))
        );
        assert_eq!(
            profile_from(text, "lab"),
            Some(("C".into(), "D".into(), Some("T".into())))
        );
        assert_eq!(profile_from(text, "none"), None);
    }
}
