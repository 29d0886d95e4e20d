//! The S3 backend: any S3-compatible endpoint, requests signed with SigV4
//! (`rusty-s3` builds and signs them, `ureq` sends them: pgbk's writers are
//! synchronous rayon pipelines, so a blocking client fits them without a runtime
//! bridge, and create-only puts, checksums and retries stay in this one file).
//!
//! - Create-only puts send `If-None-Match: *`; a 412 compares the stored object's
//!   BLAKE3 (kept in its metadata, else read back) with ours.
//! - Every body carries `Content-MD5`, which the store verifies, and the ETag it
//!   answers is checked against it.
//! - 5xx, 408, 429, timeouts and connection failures are retried with backoff for
//!   at most the retry bound; then the error names the object.
//! - Objects above [`PART_SIZE`] go up as multipart uploads, one part in memory at
//!   a time; listings are paged.

use super::s3_settings::{S3Settings, UrlStyle};
use super::{check_key, check_prefix, ObjectMeta, PutMode, PutOutcome, Store, StoreError};
use base64::Engine as _;
use md5::{Digest, Md5};
use rusty_s3::actions::{ObjectIdentifier, S3Action};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::time::{Duration, Instant, SystemTime};
use url::Url;

/// Size of one part of a multipart upload (and the largest single PUT).
pub const PART_SIZE: usize = 8 << 20;
/// How long a signed request stays valid.
const SIGN_FOR: Duration = Duration::from_secs(3600);
/// The metadata header holding the BLAKE3 of a single-PUT object's bytes.
const META_BLAKE3: &str = "x-amz-meta-pgbk-blake3";
/// Keys per DeleteObjects request (S3's limit).
const DELETE_BATCH: usize = 1000;
/// Default bound on retrying one request.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(60);

/// A bucket (and prefix) holding the repository.
pub struct S3Store {
    settings: S3Settings,
    bucket: rusty_s3::Bucket,
    creds: rusty_s3::Credentials,
    agent: ureq::Agent,
    retry_for: Duration,
    page_size: usize,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
}

impl Method {
    fn name(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

type Response = ureq::http::Response<ureq::Body>;

fn md5_base64(data: &[u8]) -> (String, String) {
    let sum = Md5::digest(data);
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    (base64::engine::general_purpose::STANDARD.encode(sum), hex)
}

/// `Code: Message` of an S3 error document, or the body's first line.
fn error_text(status: u16, body: &str) -> String {
    let tag = |t: &str| {
        let start = body.find(&format!("<{t}>"))? + t.len() + 2;
        let end = body[start..].find(&format!("</{t}>"))? + start;
        Some(body[start..end].to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("HTTP {status} {c}: {m}"),
        (Some(c), None) => format!("HTTP {status} {c}"),
        _ => {
            let first = body.lines().next().unwrap_or("").trim();
            if first.is_empty() {
                format!("HTTP {status}")
            } else {
                format!(
                    "HTTP {status}: {}",
                    first.chars().take(200).collect::<String>()
                )
            }
        }
    }
}

fn retryable_status(s: u16) -> bool {
    s >= 500 || s == 408 || s == 429
}

fn retryable_error(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::BodyStalled
    )
}

/// Reads up to `buf.len()` bytes, fewer only at the end of the stream.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl S3Store {
    /// Connects nothing yet: builds the signer and the HTTP client. Errors name the
    /// option at fault.
    pub fn new(settings: S3Settings) -> Result<S3Store, String> {
        let endpoint = settings.endpoint_url();
        let url: Url = endpoint
            .parse()
            .map_err(|e| format!("s3_endpoint '{endpoint}' does not parse: {e}"))?;
        let style = match settings.url_style {
            UrlStyle::Path => rusty_s3::UrlStyle::Path,
            UrlStyle::Virtual => rusty_s3::UrlStyle::VirtualHost,
        };
        let bucket =
            rusty_s3::Bucket::new(url, style, settings.bucket.clone(), settings.region.clone())
                .map_err(|e| format!("s3_endpoint '{endpoint}': {e}"))?;
        let c = settings.credentials()?;
        let creds = match c.token {
            Some(t) => rusty_s3::Credentials::new_with_token(c.key, c.secret, t),
            None => rusty_s3::Credentials::new(c.key, c.secret),
        };
        let mut tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .disable_verification(!settings.verify_tls);
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("s3_ca_file {}: {e}", ca.display()))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(format!(
                    "s3_ca_file {}: no PEM certificate in it",
                    ca.display()
                ));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_send_body(Some(Duration::from_secs(300)))
            .tls_config(tls.build())
            .build();
        Ok(S3Store {
            settings,
            bucket,
            creds,
            agent: ureq::Agent::new_with_config(config),
            retry_for: DEFAULT_RETRY_FOR,
            page_size: 1000,
        })
    }

    /// Retries a failing request for at most `d` (tests shorten it).
    pub fn with_retry_bound(mut self, d: Duration) -> S3Store {
        self.retry_for = d;
        self
    }

    /// Lists `n` keys per page (tests use small pages to exercise paging).
    pub fn with_page_size(mut self, n: usize) -> S3Store {
        self.page_size = n.clamp(1, 1000);
        self
    }

    /// Checks that the bucket exists and the credentials may use it (HeadBucket):
    /// what `check` and every writer ask before their first object.
    pub fn check_bucket(&self) -> Result<(), StoreError> {
        let url = self.bucket.head_bucket(Some(&self.creds)).sign(SIGN_FOR);
        let resp = self.send(Method::Head, "(bucket)", &url, &[], None)?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            404 => Err(self.remote(
                "HEAD",
                "(bucket)",
                Some(404),
                format!("bucket '{}' does not exist", self.settings.bucket),
            )),
            403 => Err(self.remote(
                "HEAD",
                "(bucket)",
                Some(403),
                "access denied: check s3_access_key_id and s3_secret_access_key".into(),
            )),
            s => Err(self.remote("HEAD", "(bucket)", Some(s), format!("HTTP {s}"))),
        }
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    fn full_key(&self, key: &str) -> String {
        if self.settings.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.settings.prefix)
        }
    }

    fn remote(
        &self,
        op: &'static str,
        key: &str,
        status: Option<u16>,
        message: String,
    ) -> StoreError {
        StoreError::Remote {
            location: self.location(),
            operation: op,
            key: key.to_string(),
            message,
            status,
        }
    }

    /// Sends one request, retrying transient failures within the retry bound.
    fn send(
        &self,
        method: Method,
        key: &str,
        url: &Url,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<Response, StoreError> {
        let start = Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            let u = url.as_str();
            let result = match method {
                Method::Get | Method::Head | Method::Delete => {
                    let mut r = match method {
                        Method::Get => self.agent.get(u),
                        Method::Head => self.agent.head(u),
                        _ => self.agent.delete(u),
                    };
                    for (k, v) in headers {
                        r = r.header(*k, v.as_str());
                    }
                    r.call()
                }
                Method::Put | Method::Post => {
                    let mut r = match method {
                        Method::Put => self.agent.put(u),
                        _ => self.agent.post(u),
                    };
                    for (k, v) in headers {
                        r = r.header(*k, v.as_str());
                    }
                    r.send(body.unwrap_or(&[]))
                }
            };
            let retry_why = match result {
                Ok(resp) if !retryable_status(resp.status().as_u16()) => return Ok(resp),
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    (Some(status), error_text(status, &text))
                }
                Err(e) if retryable_error(&e) => (None, e.to_string()),
                Err(e) => return Err(self.remote(method.name(), key, None, e.to_string())),
            };
            if start.elapsed() + wait > self.retry_for {
                let (status, why) = retry_why;
                return Err(self.remote(
                    method.name(),
                    key,
                    status,
                    format!(
                        "{why} (gave up after retrying for {} s)",
                        start.elapsed().as_secs()
                    ),
                ));
            }
            tracing::debug!(key, why = %retry_why.1, "S3 request failed, retrying");
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// Turns a non-success answer into an error (404 into NotFound).
    fn check(
        &self,
        op: &'static str,
        key: &str,
        mut resp: Response,
    ) -> Result<Response, StoreError> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        // A missing object is NotFound; a missing bucket (NoSuchBucket) is an error.
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status == 404 && (op == "HEAD" || text.contains("<Code>NoSuchKey</Code>")) {
            return Err(StoreError::NotFound {
                key: key.to_string(),
                location: self.location(),
            });
        }
        Err(self.remote(op, key, Some(status), error_text(status, &text)))
    }

    /// The BLAKE3 of the stored object: its metadata, else its bytes read back.
    fn stored_hash(&self, key: &str) -> Result<String, StoreError> {
        let full = self.full_key(key);
        let url = self
            .bucket
            .head_object(Some(&self.creds), &full)
            .sign(SIGN_FOR);
        let resp = self.send(Method::Head, key, &url, &[], None)?;
        let resp = self.check("HEAD", key, resp)?;
        if let Some(h) = resp
            .headers()
            .get(META_BLAKE3)
            .and_then(|v| v.to_str().ok())
        {
            return Ok(h.to_string());
        }
        let mut h = blake3::Hasher::new();
        io::copy(&mut self.get(key)?, &mut h)
            .map_err(|e| self.remote("GET", key, None, e.to_string()))?;
        Ok(h.finalize().to_hex().to_string())
    }

    /// What a 412 on a create-only put means: the same bytes, or a refusal.
    fn settle_conflict(&self, key: &str, ours: &str) -> Result<PutOutcome, StoreError> {
        if self.stored_hash(key)? == ours {
            Ok(PutOutcome::AlreadyIdentical)
        } else {
            Err(StoreError::Conflict {
                key: key.to_string(),
                location: self.location(),
            })
        }
    }

    fn put_single(&self, key: &str, data: &[u8], mode: PutMode) -> Result<PutOutcome, StoreError> {
        let full = self.full_key(key);
        let (md5_b64, md5_hex) = md5_base64(data);
        let hash = super::content_hash(data);
        let mut action = self.bucket.put_object(Some(&self.creds), &full);
        let mut headers = vec![("content-md5", md5_b64), (META_BLAKE3, hash.clone())];
        if mode == PutMode::Create {
            headers.push(("if-none-match", "*".to_string()));
        }
        for (k, v) in &headers {
            action.headers_mut().insert(*k, v.clone());
        }
        let url = action.sign(SIGN_FOR);
        let resp = self.send(Method::Put, key, &url, &headers, Some(data))?;
        if resp.status().as_u16() == 412 && mode == PutMode::Create {
            return self.settle_conflict(key, &hash);
        }
        let resp = self.check("PUT", key, resp)?;
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|e| e.trim_matches('"').to_ascii_lowercase());
        match etag {
            Some(e) if e == md5_hex => Ok(PutOutcome::Stored),
            other => Err(StoreError::Integrity {
                key: key.to_string(),
                detail: format!(
                    "the store acknowledged ETag {} for content with MD5 {md5_hex}",
                    other.unwrap_or_else(|| "(none)".into())
                ),
            }),
        }
    }

    /// A multipart upload of `first` and the rest of `reader`; aborted on failure.
    fn put_multipart(
        &self,
        key: &str,
        first: Vec<u8>,
        reader: &mut dyn Read,
        mode: PutMode,
    ) -> Result<PutOutcome, StoreError> {
        let full = self.full_key(key);
        if mode == PutMode::Create && self.stat(key)?.is_some() {
            // Hash what we would have written and compare with what is there.
            let mut h = blake3::Hasher::new();
            h.update(&first);
            io::copy(reader, &mut h).map_err(|e| self.remote("PUT", key, None, e.to_string()))?;
            return self.settle_conflict(key, &h.finalize().to_hex());
        }
        let url = self
            .bucket
            .create_multipart_upload(Some(&self.creds), &full)
            .sign(SIGN_FOR);
        let resp = self.send(Method::Post, key, &url, &[], None)?;
        let mut resp = self.check("POST", key, resp)?;
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.remote("POST", key, None, e.to_string()))?;
        let created =
            rusty_s3::actions::CreateMultipartUpload::parse_response(&text).map_err(|e| {
                self.remote(
                    "POST",
                    key,
                    None,
                    format!("CreateMultipartUpload answer: {e}"),
                )
            })?;
        let upload_id = created.upload_id().to_string();
        let result = self.upload_parts(key, &full, &upload_id, first, reader, mode);
        if result.is_err() {
            let url = self
                .bucket
                .abort_multipart_upload(Some(&self.creds), &full, &upload_id)
                .sign(SIGN_FOR);
            let _ = self.send(Method::Delete, key, &url, &[], None);
        }
        result
    }

    fn upload_parts(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        first: Vec<u8>,
        reader: &mut dyn Read,
        mode: PutMode,
    ) -> Result<PutOutcome, StoreError> {
        let mut etags: Vec<String> = Vec::new();
        let mut buf = first;
        let mut hasher = blake3::Hasher::new();
        loop {
            let number = u16::try_from(etags.len() + 1)
                .map_err(|_| self.remote("PUT", key, None, "more than 65535 parts".into()))?;
            hasher.update(&buf);
            let (md5_b64, md5_hex) = md5_base64(&buf);
            let mut action = self
                .bucket
                .upload_part(Some(&self.creds), full, number, upload_id);
            action.headers_mut().insert("content-md5", md5_b64.clone());
            let url = action.sign(SIGN_FOR);
            let resp = self.send(
                Method::Put,
                key,
                &url,
                &[("content-md5", md5_b64)],
                Some(&buf),
            )?;
            let resp = self.check("PUT", key, resp)?;
            let etag = resp
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if etag.trim_matches('"').to_ascii_lowercase() != md5_hex {
                return Err(StoreError::Integrity {
                    key: key.to_string(),
                    detail: format!("part {number}: ETag {etag}, content MD5 {md5_hex}"),
                });
            }
            etags.push(etag);
            buf.resize(PART_SIZE, 0);
            let n = read_full(reader, &mut buf)
                .map_err(|e| self.remote("PUT", key, None, e.to_string()))?;
            buf.truncate(n);
            if n == 0 {
                break;
            }
        }
        let mut action = self.bucket.complete_multipart_upload(
            Some(&self.creds),
            full,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let mut headers = Vec::new();
        if mode == PutMode::Create {
            headers.push(("if-none-match", "*".to_string()));
            action.headers_mut().insert("if-none-match", "*");
        }
        let url = action.sign(SIGN_FOR);
        let body = action.body();
        let resp = self.send(Method::Post, key, &url, &headers, Some(body.as_bytes()))?;
        if resp.status().as_u16() == 412 && mode == PutMode::Create {
            return self.settle_conflict(key, &hasher.finalize().to_hex());
        }
        let mut resp = self.check("POST", key, resp)?;
        // S3 may answer 200 with an error document to a CompleteMultipartUpload.
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if text.contains("<Error>") {
            return Err(self.remote("POST", key, Some(200), error_text(200, &text)));
        }
        Ok(PutOutcome::Stored)
    }

    /// One page of a listing.
    fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        delimited: bool,
    ) -> Result<ListPage, StoreError> {
        let full = self.full_key(prefix);
        let full = if prefix.is_empty() {
            if self.settings.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", self.settings.prefix)
            }
        } else {
            full
        };
        let mut action = self.bucket.list_objects_v2(Some(&self.creds));
        action.with_prefix(full.clone());
        action.with_max_keys(self.page_size);
        if delimited {
            action.with_delimiter("/");
        }
        if let Some(t) = token {
            action.with_continuation_token(t.to_string());
        }
        let url = action.sign(SIGN_FOR);
        let resp = self.send(Method::Get, prefix, &url, &[], None)?;
        let mut resp = self.check("LIST", prefix, resp)?;
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| self.remote("LIST", prefix, None, e.to_string()))?;
        let page = rusty_s3::actions::ListObjectsV2::parse_response(&text).map_err(|e| {
            self.remote("LIST", prefix, None, format!("listing does not parse: {e}"))
        })?;
        let strip = if self.settings.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.settings.prefix)
        };
        let mut out = Vec::with_capacity(page.contents.len());
        for c in page.contents {
            // Never trust a listing: every key must be one we could have written.
            let key = c
                .key
                .strip_prefix(strip.as_str())
                .ok_or_else(|| StoreError::InvalidKey(c.key.clone()))?
                .to_string();
            check_key(&key)?;
            let modified = chrono::DateTime::parse_from_rfc3339(&c.last_modified)
                .ok()
                .map(SystemTime::from);
            out.push(ObjectMeta {
                key,
                size: c.size,
                modified,
            });
        }
        let mut folders = Vec::with_capacity(page.common_prefixes.len());
        for c in page.common_prefixes {
            let name = c
                .prefix
                .strip_prefix(full.as_str())
                .and_then(|n| n.strip_suffix('/'))
                .filter(|n| !n.is_empty() && !n.contains('/'))
                .ok_or_else(|| StoreError::InvalidKey(c.prefix.clone()))?;
            check_key(name)?;
            folders.push(name.to_string());
        }
        Ok(ListPage {
            objects: out,
            folders,
            next: page.next_continuation_token,
        })
    }
}

/// One page of a listing: objects, the folders a delimited listing rolled up, and
/// the token of the next page.
struct ListPage {
    objects: Vec<ObjectMeta>,
    folders: Vec<String>,
    next: Option<String>,
}

/// A paged listing: one page held at a time.
struct Pages<'a> {
    store: &'a S3Store,
    prefix: String,
    page: VecDeque<ObjectMeta>,
    token: Option<String>,
    done: bool,
}

impl Iterator for Pages<'_> {
    type Item = Result<ObjectMeta, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(m) = self.page.pop_front() {
                return Some(Ok(m));
            }
            if self.done {
                return None;
            }
            match self
                .store
                .list_page(&self.prefix, self.token.as_deref(), false)
            {
                Ok(page) => {
                    self.done = page.next.is_none();
                    self.token = page.next;
                    self.page = page.objects.into();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Store for S3Store {
    fn location(&self) -> String {
        format!(
            "{} at {}",
            self.settings.url(),
            self.settings.endpoint_url()
        )
    }

    fn describe(&self, key: &str) -> String {
        format!("{}/{key}", self.settings.url())
    }

    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<PutOutcome, StoreError> {
        check_key(key)?;
        if data.len() <= PART_SIZE {
            return self.put_single(key, data, mode);
        }
        self.put_multipart(
            key,
            data[..PART_SIZE].to_vec(),
            &mut &data[PART_SIZE..],
            mode,
        )
    }

    fn put_reader(
        &self,
        key: &str,
        reader: &mut dyn Read,
        mode: PutMode,
    ) -> Result<PutOutcome, StoreError> {
        check_key(key)?;
        let mut first = vec![0u8; PART_SIZE];
        let n = read_full(reader, &mut first)
            .map_err(|e| self.remote("PUT", key, None, e.to_string()))?;
        first.truncate(n);
        let mut probe = [0u8; 1];
        let more = read_full(reader, &mut probe)
            .map_err(|e| self.remote("PUT", key, None, e.to_string()))?;
        if more == 0 {
            return self.put_single(key, &first, mode);
        }
        let mut rest = io::Cursor::new(probe).take(1).chain(reader);
        self.put_multipart(key, first, &mut rest, mode)
    }

    fn get(&self, key: &str) -> Result<Box<dyn Read + Send>, StoreError> {
        check_key(key)?;
        let full = self.full_key(key);
        let url = self
            .bucket
            .get_object(Some(&self.creds), &full)
            .sign(SIGN_FOR);
        let resp = self.send(Method::Get, key, &url, &[], None)?;
        let resp = self.check("GET", key, resp)?;
        Ok(Box::new(resp.into_body().into_reader()))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        check_key(key)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let full = self.full_key(key);
        let url = self
            .bucket
            .get_object(Some(&self.creds), &full)
            .sign(SIGN_FOR);
        let range = format!("bytes={offset}-{}", offset + len - 1);
        let resp = self.send(Method::Get, key, &url, &[("range", range)], None)?;
        if resp.status().as_u16() == 416 {
            return Ok(Vec::new());
        }
        let mut resp = self.check("GET", key, resp)?;
        let whole = resp.status().as_u16() == 200;
        let mut data = resp
            .body_mut()
            .with_config()
            .limit(len.saturating_add(if whole { offset } else { 0 }).max(1))
            .read_to_vec()
            .map_err(|e| self.remote("GET", key, None, e.to_string()))?;
        if whole {
            // A store that ignores Range sends everything: cut it here.
            let start = (offset as usize).min(data.len());
            let end = (start + len as usize).min(data.len());
            data = data[start..end].to_vec();
        }
        Ok(data)
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        check_key(key)?;
        let full = self.full_key(key);
        let url = self
            .bucket
            .head_object(Some(&self.creds), &full)
            .sign(SIGN_FOR);
        let resp = self.send(Method::Head, key, &url, &[], None)?;
        let resp = match self.check("HEAD", key, resp) {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let header = |h: &str| resp.headers().get(h).and_then(|v| v.to_str().ok());
        let size = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let modified = header("last-modified")
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
            .map(SystemTime::from);
        Ok(Some(ObjectMeta {
            key: key.to_string(),
            size,
            modified,
        }))
    }

    fn list<'a>(
        &'a self,
        prefix: &str,
    ) -> Box<dyn Iterator<Item = Result<ObjectMeta, StoreError>> + 'a> {
        if let Err(e) = check_prefix(prefix) {
            return Box::new(std::iter::once(Err(e)));
        }
        Box::new(Pages {
            store: self,
            prefix: prefix.to_string(),
            page: VecDeque::new(),
            token: None,
            done: false,
        })
    }

    fn list_folders(&self, folder: &str) -> Result<Vec<String>, StoreError> {
        check_prefix(folder)?;
        if !folder.is_empty() && !folder.ends_with('/') {
            return Err(StoreError::InvalidKey(folder.to_string()));
        }
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(folder, token.as_deref(), true)?;
            out.extend(page.folders);
            match page.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        for k in keys {
            check_key(k)?;
        }
        for chunk in keys.chunks(DELETE_BATCH) {
            let ids: Vec<ObjectIdentifier> = chunk
                .iter()
                .map(|k| ObjectIdentifier::new(self.full_key(k)))
                .collect();
            let what = chunk.first().map(String::as_str).unwrap_or("");
            let (body, md5) = self
                .bucket
                .delete_objects(Some(&self.creds), ids.iter())
                .body_with_md5();
            // The Content-MD5 header is signed, so it is set before signing.
            let mut action = self.bucket.delete_objects(Some(&self.creds), ids.iter());
            action.headers_mut().insert("content-md5", md5.clone());
            let url = action.sign(SIGN_FOR);
            let resp = self.send(
                Method::Post,
                what,
                &url,
                &[("content-md5", md5)],
                Some(body.as_bytes()),
            )?;
            let mut resp = self.check("DELETE", what, resp)?;
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            if let Ok(r) = rusty_s3::actions::DeleteObjectsResponse::parse(&text) {
                if let Some(e) = r.errors.first() {
                    return Err(self.remote(
                        "DELETE",
                        &e.key,
                        None,
                        format!("{}: {}", e.code, e.message),
                    ));
                }
            }
        }
        Ok(())
    }
}
