//! Backend message bodies.
//!
//! Frames are split with `postgres_protocol::message::backend::Header::parse`; the
//! bodies are decoded here because `backend::Message::parse` rejects `W`
//! (CopyBothResponse) and its row and field iterators need the `fallible-iterator`
//! trait, which is not one of our dependencies. Every decoder checks lengths and
//! returns [`PgError::Protocol`] on malformed input: nothing here can panic on
//! network data.

use bytes::Bytes;
use postgres_protocol::message::backend::Header;

use super::PgError;

/// The largest backend message accepted (PostgreSQL's `MaxAllocSize` is 1 GiB).
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// One backend message: its tag and its body (after the 4-byte length).
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// The total size (tag + length + body) of the frame at the start of `buf`, once
/// the 5-byte header is there.
pub(crate) fn frame_len(buf: &[u8]) -> Result<Option<usize>, PgError> {
    match Header::parse(buf) {
        Ok(Some(h)) => {
            let len = h.len() as usize + 1;
            if len > MAX_FRAME {
                return Err(PgError::Protocol(format!(
                    "message '{}' too large ({len} bytes)",
                    char::from(h.tag())
                )));
            }
            Ok(Some(len))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(PgError::Protocol(e.to_string())),
    }
}

fn short(what: &str) -> PgError {
    PgError::Protocol(format!("truncated {what} message"))
}

/// A little cursor over a message body.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], PgError> {
        let end = self.pos.checked_add(n).ok_or_else(|| short(self.what))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| short(self.what))?;
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, PgError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16, PgError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, PgError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string, without the NUL.
    pub(crate) fn cstr(&mut self) -> Result<&'a [u8], PgError> {
        let rest = self.remaining();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| short(self.what))?;
        self.pos += nul + 1;
        Ok(&rest[..nul])
    }

    pub(crate) fn string(&mut self) -> Result<String, PgError> {
        Ok(String::from_utf8_lossy(self.cstr()?).into_owned())
    }
}

/// RowDescription (`T`): the column names.
pub(crate) fn row_description(body: &[u8]) -> Result<Vec<String>, PgError> {
    let mut r = Reader::new(body, "RowDescription");
    let n = r.i16()?;
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        cols.push(r.string()?);
        // table oid, column number, type oid, type size, type modifier, format code
        r.bytes(18)?;
    }
    Ok(cols)
}

/// DataRow (`D`): the values as slices of the frame (`None` for NULL).
pub(crate) fn data_row(body: &Bytes) -> Result<Vec<Option<Bytes>>, PgError> {
    let mut r = Reader::new(body, "DataRow");
    let n = r.i16()?;
    let mut vals = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = r.i32()?;
        if len < 0 {
            vals.push(None);
        } else {
            let start = r.pos();
            r.bytes(len as usize)?;
            vals.push(Some(body.slice(start..start + len as usize)));
        }
    }
    Ok(vals)
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Default, Clone)]
pub(crate) struct Fields {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
}

/// ErrorResponse (`E`) / NoticeResponse (`N`) fields.
pub(crate) fn fields(body: &[u8]) -> Result<Fields, PgError> {
    let mut r = Reader::new(body, "ErrorResponse");
    let mut f = Fields::default();
    let mut localized_severity = String::new();
    loop {
        let t = r.u8()?;
        if t == 0 {
            break;
        }
        let v = r.string()?;
        match t {
            b'S' => localized_severity = v,
            b'V' => f.severity = v,
            b'C' => f.code = v,
            b'M' => f.message = v,
            b'D' => f.detail = Some(v),
            _ => {}
        }
    }
    if f.severity.is_empty() {
        f.severity = localized_severity;
    }
    Ok(f)
}

/// An ErrorResponse as a [`PgError::Server`].
pub(crate) fn error_response(body: &[u8]) -> PgError {
    match fields(body) {
        Ok(f) => PgError::Server {
            severity: f.severity,
            code: f.code,
            message: f.message,
            detail: f.detail,
        },
        Err(e) => e,
    }
}

/// ParameterStatus (`S`): name and value.
pub(crate) fn parameter_status(body: &[u8]) -> Result<(String, String), PgError> {
    let mut r = Reader::new(body, "ParameterStatus");
    Ok((r.string()?, r.string()?))
}

/// CommandComplete (`C`): the command tag.
pub(crate) fn command_complete(body: &[u8]) -> Result<String, PgError> {
    Reader::new(body, "CommandComplete").string()
}

/// BackendKeyData (`K`): process id and secret key.
pub(crate) fn backend_key_data(body: &[u8]) -> Result<(i32, i32), PgError> {
    let mut r = Reader::new(body, "BackendKeyData");
    Ok((r.i32()?, r.i32()?))
}

/// An Authentication (`R`) request.
#[derive(Debug)]
pub(crate) enum AuthRequest {
    Ok,
    Cleartext,
    Md5([u8; 4]),
    Sasl(Vec<String>),
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    Other(i32),
}

/// Authentication (`R`).
pub(crate) fn auth_request(body: &Bytes) -> Result<AuthRequest, PgError> {
    let mut r = Reader::new(body, "Authentication");
    Ok(match r.i32()? {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            let s = r.bytes(4)?;
            AuthRequest::Md5([s[0], s[1], s[2], s[3]])
        }
        10 => {
            let mut mechs = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechs.push(String::from_utf8_lossy(m).into_owned());
            }
            AuthRequest::Sasl(mechs)
        }
        11 => AuthRequest::SaslContinue(body.slice(4..)),
        12 => AuthRequest::SaslFinal(body.slice(4..)),
        n => AuthRequest::Other(n),
    })
}

/// The parts of `server_version` as `server_version_num`: "15.18 (Debian ...)" →
/// 150018, "9.6.24" → 90624, "16beta1" → 160000.
pub fn parse_server_version(v: &str) -> Option<u32> {
    let v = v.trim();
    let end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let mut parts = v[..end].split('.').filter(|p| !p.is_empty());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    if major >= 10 {
        major.checked_mul(10000)?.checked_add(minor)
    } else {
        let patch: u32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        Some(major * 10000 + minor * 100 + patch)
    }
}

/// A size setting as `SHOW` prints it ("16MB", "512kB", "1GB", "8192") in bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" | "k" | "K" => 1 << 10,
        "MB" | "M" => 1 << 20,
        "GB" | "G" => 1 << 30,
        "TB" | "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-1.pgdg120+1)"),
            Some(150018)
        );
        assert_eq!(parse_server_version("15.2"), Some(150002));
        assert_eq!(parse_server_version("16beta1"), Some(160000));
        assert_eq!(parse_server_version("17devel"), Some(170000));
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("10.23"), Some(100023));
        assert_eq!(parse_server_version("garbage"), None);
        assert_eq!(parse_server_version(""), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MB"), Some(16 * 1024 * 1024));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("512kB"), Some(512 * 1024));
        assert_eq!(parse_size("8192"), Some(8192));
        assert_eq!(parse_size("64 MB"), Some(64 << 20));
        assert_eq!(parse_size("16XB"), None);
        assert_eq!(parse_size("MB"), None);
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        assert!(row_description(&[0, 1, b'a']).is_err());
        assert!(data_row(&Bytes::from_static(&[0, 1, 0, 0, 0, 9, b'x'])).is_err());
        assert!(
            data_row(&Bytes::from_static(&[0, 1, 0xff, 0xff, 0xff, 0xff])).unwrap()[0].is_none()
        );
        assert!(fields(b"Sx").is_err());
        assert!(auth_request(&Bytes::from_static(&[0, 0, 0, 5, 1])).is_err());
        assert!(frame_len(&[b'D', 0, 0, 0, 1]).is_err());
        assert!(frame_len(&[b'D', 0x7f, 0xff, 0xff, 0xff]).is_err());
        assert_eq!(frame_len(&[b'D', 0, 0, 0, 4]).unwrap(), Some(5));
        assert_eq!(frame_len(&[b'D', 0, 0]).unwrap(), None);
    }

    #[test]
    fn error_fields_prefer_unlocalized_severity() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0\0";
        let e = error_response(body);
        assert_eq!(e.code(), Some("28P01"));
        assert_eq!(
            e.to_string(),
            "FATAL: password authentication failed for user \"x\""
        );
        let body = b"SFEHLER\0VERROR\0C42710\0Mschon da\0Ddetail\0\0";
        let e = error_response(body);
        assert_eq!(e.to_string(), "ERROR: schon da (detail)");
    }
}
