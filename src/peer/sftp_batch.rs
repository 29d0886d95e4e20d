//! Reading many small objects at once over one SFTP channel, requests pipelined.
//!
//! libssh2's SFTP client waits for each answer before it sends the next request:
//! a small object costs three round trips (open, read, close) and a backup holds
//! about a thousand of them, so a pass spent most of its time waiting on them. This
//! speaks the SFTP protocol (version 3, what OpenSSH's sftp-server speaks) on a
//! plain `sftp` subsystem channel and keeps every object of a batch in flight at
//! once: all OPENs are sent, each HANDLE answered by a READ of the whole object,
//! each complete DATA by a CLOSE. Objects are small (at most [`MAX_OBJECT`] bytes,
//! at most [`MAX_BATCH`] of them and [`MAX_BATCH_BYTES`]), so a batch is held in
//! memory, bounded.
//!
//! A large object is read as a [`Stream`] on the same channel: READs of 255 KiB,
//! [`STREAM_DEPTH`] of them in flight, answered in order (libssh2's client asks
//! 30 kB at a time, and the largest object of a backup is a pass's critical path).
//!
//! Only the bytes travel here; each object is then written and verified by
//! [`super::transfer`] exactly as one read through libssh2's client would be.

use std::collections::HashMap;
use std::io::{self, Read, Write};

/// Largest object read through a batch.
pub const MAX_OBJECT: u64 = 1024 * 1024;
/// Objects per batch…
pub const MAX_BATCH: usize = 128;
/// …and bytes (a batch is held in memory).
pub const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Bytes asked for by one READ: OpenSSH's sftp-server answers at most 255 KiB
/// (`SFTP_MAX_READ_LENGTH`); a shorter answer is continued (batches) or makes the
/// caller read the object through libssh2 instead (streams).
const READ_SIZE: u64 = 255 * 1024;

/// Whether a batch of `count` objects and `bytes` bytes is full.
pub fn batch_full(count: usize, bytes: u64) -> bool {
    count >= MAX_BATCH || bytes >= MAX_BATCH_BYTES
}

const FXP_INIT: u8 = 1;
const FXP_VERSION: u8 = 2;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXF_READ: u32 = 1;
const FX_EOF: u32 = 1;
/// Largest answer accepted (a READ answer holds at most [`READ_SIZE`] bytes).
const MAX_PACKET: usize = 512 * 1024;

/// One object's outcome: its bytes (as many as the primary had, at most the size
/// asked for), or why it could not be read.
pub type Fetched = Result<Vec<u8>, String>;

/// An SSH channel as a [`Batcher`] uses it: libssh2 sends what is written at
/// once, and its `flush` would *discard* unread incoming data (it flushes the read
/// buffer), so flushing here does nothing.
pub struct SshChannel(pub ssh2::Channel);

impl Read for SshChannel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for SshChannel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The client side of an SFTP channel, sending many requests before it reads the
/// answers (anything that reads and writes SFTP packets).
pub struct Batcher<S: Read + Write> {
    chan: S,
    next_id: u32,
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s);
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads a big-endian u32 at `*at`, advancing it.
fn get_u32(p: &[u8], at: &mut usize) -> io::Result<u32> {
    let b = p
        .get(*at..*at + 4)
        .ok_or_else(|| bad("SFTP packet cut short"))?;
    *at += 4;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn get_str<'a>(p: &'a [u8], at: &mut usize) -> io::Result<&'a [u8]> {
    let n = get_u32(p, at)? as usize;
    let s = p
        .get(*at..*at + n)
        .ok_or_else(|| bad("SFTP packet cut short"))?;
    *at += n;
    Ok(s)
}

/// What a request in flight was for.
enum Pending {
    Open(usize),
    Read(usize),
    Close,
}

impl<S: Read + Write> Batcher<S> {
    /// Starts the SFTP session on `chan` (a channel with the `sftp` subsystem).
    pub fn new(mut chan: S) -> io::Result<Batcher<S>> {
        let mut p = Vec::new();
        put_u32(&mut p, 5);
        p.push(FXP_INIT);
        put_u32(&mut p, 3);
        chan.write_all(&p)?;
        chan.flush()?;
        let mut b = Batcher { chan, next_id: 1 };
        let reply = b.packet()?;
        if reply.first() != Some(&FXP_VERSION) {
            return Err(bad("the SFTP server did not answer its version"));
        }
        Ok(b)
    }

    fn packet(&mut self) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.chan.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_PACKET {
            return Err(bad(format!("SFTP packet of {len} bytes")));
        }
        let mut p = vec![0u8; len];
        self.chan.read_exact(&mut p)?;
        Ok(p)
    }

    fn send(&mut self, kind: u8, body: &[u8]) -> io::Result<u32> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut p = Vec::with_capacity(body.len() + 9);
        put_u32(&mut p, (body.len() + 5) as u32);
        p.push(kind);
        put_u32(&mut p, id);
        p.extend_from_slice(body);
        self.chan.write_all(&p)?;
        Ok(id)
    }

    fn read_req(&mut self, handle: &[u8], offset: u64, len: u32) -> io::Result<u32> {
        let mut body = Vec::with_capacity(handle.len() + 16);
        put_str(&mut body, handle);
        body.extend_from_slice(&offset.to_be_bytes());
        put_u32(&mut body, len);
        self.send(FXP_READ, &body)
    }

    fn close_req(&mut self, handle: &[u8]) -> io::Result<u32> {
        let mut body = Vec::with_capacity(handle.len() + 4);
        put_str(&mut body, handle);
        self.send(FXP_CLOSE, &body)
    }

    /// Reads the objects `(path, size)` on the primary: each result holds the first
    /// `size` bytes (fewer when the file is shorter) or the server's error. An `Err`
    /// of the whole call means the channel failed (it must not be used again).
    pub fn fetch(&mut self, objects: &[(String, u64)]) -> io::Result<Vec<Fetched>> {
        let mut out: Vec<Fetched> = objects
            .iter()
            .map(|(_, size)| Ok(Vec::with_capacity(*size as usize)))
            .collect();
        let mut handles: Vec<Option<Vec<u8>>> = vec![None; objects.len()];
        let mut pending: HashMap<u32, Pending> = HashMap::new();
        for (i, (path, _)) in objects.iter().enumerate() {
            let mut body = Vec::with_capacity(path.len() + 12);
            put_str(&mut body, path.as_bytes());
            put_u32(&mut body, FXF_READ);
            put_u32(&mut body, 0); // no attributes
            let id = self.send(FXP_OPEN, &body)?;
            pending.insert(id, Pending::Open(i));
        }
        self.chan.flush()?;
        while !pending.is_empty() {
            let p = self.packet()?;
            let mut at = 1;
            let id = get_u32(&p, &mut at)?;
            let Some(what) = pending.remove(&id) else {
                return Err(bad(format!("SFTP answer to unknown request {id}")));
            };
            let status = |p: &[u8], mut at: usize| -> io::Result<(u32, String)> {
                let code = get_u32(p, &mut at)?;
                let msg = get_str(p, &mut at).unwrap_or_default();
                Ok((code, String::from_utf8_lossy(msg).into_owned()))
            };
            match (p[0], what) {
                (FXP_HANDLE, Pending::Open(i)) => {
                    let handle = get_str(&p, &mut at)?.to_vec();
                    let size = objects[i].1;
                    if size == 0 {
                        let id = self.close_req(&handle)?;
                        pending.insert(id, Pending::Close);
                    } else {
                        let id = self.read_req(&handle, 0, size.min(READ_SIZE) as u32)?;
                        pending.insert(id, Pending::Read(i));
                    }
                    handles[i] = Some(handle);
                }
                (FXP_STATUS, Pending::Open(i)) => {
                    let (code, msg) = status(&p, at)?;
                    out[i] = Err(format!("open failed (SFTP status {code}: {msg})"));
                }
                (FXP_DATA, Pending::Read(i)) => {
                    let data = get_str(&p, &mut at)?;
                    let want = objects[i].1;
                    let have = match &mut out[i] {
                        Ok(buf) => {
                            let room = (want as usize).saturating_sub(buf.len());
                            buf.extend_from_slice(&data[..data.len().min(room)]);
                            buf.len() as u64
                        }
                        Err(_) => want,
                    };
                    let handle = handles[i].clone().unwrap_or_default();
                    // A short read (allowed by the protocol) is continued.
                    if have < want && !data.is_empty() {
                        let ask = (want - have).min(READ_SIZE) as u32;
                        let id = self.read_req(&handle, have, ask)?;
                        pending.insert(id, Pending::Read(i));
                    } else {
                        let id = self.close_req(&handle)?;
                        pending.insert(id, Pending::Close);
                    }
                }
                (FXP_STATUS, Pending::Read(i)) => {
                    let (code, msg) = status(&p, at)?;
                    if code != FX_EOF {
                        out[i] = Err(format!("read failed (SFTP status {code}: {msg})"));
                    }
                    let handle = handles[i].clone().unwrap_or_default();
                    let id = self.close_req(&handle)?;
                    pending.insert(id, Pending::Close);
                }
                (FXP_STATUS, Pending::Close) => {}
                (kind, _) => {
                    return Err(bad(format!("unexpected SFTP answer of type {kind}")));
                }
            }
            self.chan.flush()?;
        }
        Ok(out)
    }

    /// Opens `path` for a streamed read of its first `size` bytes with up to
    /// [`STREAM_DEPTH`] READs of [`READ_SIZE`] in flight ([`Stream`]).
    pub fn stream(&mut self, path: &str, size: u64) -> io::Result<Stream<'_, S>> {
        let mut body = Vec::with_capacity(path.len() + 12);
        put_str(&mut body, path.as_bytes());
        put_u32(&mut body, FXF_READ);
        put_u32(&mut body, 0);
        let id = self.send(FXP_OPEN, &body)?;
        self.chan.flush()?;
        let p = self.packet()?;
        let mut at = 1;
        if get_u32(&p, &mut at)? != id {
            return Err(bad("SFTP answer out of order"));
        }
        let handle = match p[0] {
            FXP_HANDLE => get_str(&p, &mut at)?.to_vec(),
            FXP_STATUS => {
                let code = get_u32(&p, &mut at)?;
                let msg = get_str(&p, &mut at).unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "open failed (SFTP status {code}: {})",
                        String::from_utf8_lossy(msg)
                    ),
                ));
            }
            _ => return Err(bad("unexpected SFTP answer to OPEN")),
        };
        Ok(Stream {
            b: self,
            handle,
            size,
            asked: 0,
            in_flight: std::collections::VecDeque::new(),
            data: Vec::new(),
            pos: 0,
            failed: false,
        })
    }
}

/// READs in flight per streamed object.
pub const STREAM_DEPTH: usize = 16;

/// One object read in order with pipelined READs. Reading it to its end closes the
/// file; a stream dropped early or failed leaves the channel out of step (the owner
/// must not use the [`Batcher`] again: [`Stream::reusable`]).
pub struct Stream<'a, S: Read + Write> {
    b: &'a mut Batcher<S>,
    handle: Vec<u8>,
    size: u64,
    asked: u64,
    in_flight: std::collections::VecDeque<(u32, u64)>,
    data: Vec<u8>,
    pos: usize,
    failed: bool,
}

impl<S: Read + Write> Stream<'_, S> {
    /// Whether the channel can serve another request (the object was read to its
    /// end and closed).
    pub fn reusable(&self) -> bool {
        !self.failed && self.in_flight.is_empty() && self.handle.is_empty()
    }

    fn fill(&mut self) -> io::Result<()> {
        while self.in_flight.len() < STREAM_DEPTH && self.asked < self.size {
            let len = (self.size - self.asked).min(READ_SIZE);
            let id = self.b.read_req(&self.handle, self.asked, len as u32)?;
            self.in_flight.push_back((id, len));
            self.asked += len;
        }
        self.b.chan.flush()?;
        let Some((want_id, want_len)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let p = self.b.packet()?;
        let mut at = 1;
        if get_u32(&p, &mut at)? != want_id {
            return Err(bad("SFTP answer out of order"));
        }
        match p[0] {
            FXP_DATA => {
                let d = get_str(&p, &mut at)?;
                if (d.len() as u64) != want_len {
                    // A short read in the middle: this simple reader does not
                    // re-ask; the caller reads the object another way.
                    return Err(bad("short SFTP read"));
                }
                self.data.clear();
                self.data.extend_from_slice(d);
                self.pos = 0;
                Ok(())
            }
            FXP_STATUS => Err(bad("the object ended before its recorded size")),
            _ => Err(bad("unexpected SFTP answer to READ")),
        }
    }

    fn close(&mut self) -> io::Result<()> {
        let handle = std::mem::take(&mut self.handle);
        let id = self.b.close_req(&handle)?;
        self.b.chan.flush()?;
        let p = self.b.packet()?;
        let mut at = 1;
        if p[0] != FXP_STATUS || get_u32(&p, &mut at)? != id {
            return Err(bad("unexpected SFTP answer to CLOSE"));
        }
        Ok(())
    }
}

impl<S: Read + Write> Read for Stream<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(bad("SFTP stream failed before"));
        }
        if self.pos >= self.data.len() {
            if self.asked >= self.size && self.in_flight.is_empty() {
                if !self.handle.is_empty() {
                    if let Err(e) = self.close() {
                        self.failed = true;
                        return Err(e);
                    }
                }
                return Ok(0);
            }
            if let Err(e) = self.fill() {
                self.failed = true;
                return Err(e);
            }
        }
        let n = buf.len().min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory SFTP server: answers what the client wrote, from `files`; it
    /// answers READs in pieces of at most 1000 bytes (short reads).
    struct Fake {
        files: HashMap<String, Vec<u8>>,
        handles: Vec<String>,
        input: Vec<u8>,
        output: Vec<u8>,
        read_at: usize,
    }

    impl Fake {
        fn answer(&mut self) {
            while self.input.len() >= 4 {
                let len = u32::from_be_bytes(self.input[..4].try_into().unwrap()) as usize;
                if self.input.len() < 4 + len {
                    return;
                }
                let p: Vec<u8> = self.input.drain(..4 + len).skip(4).collect();
                let mut at = 1;
                let reply = |kind: u8, body: &[u8], out: &mut Vec<u8>| {
                    put_u32(out, (body.len() + 1) as u32);
                    out.push(kind);
                    out.extend_from_slice(body);
                };
                if p[0] == FXP_INIT {
                    reply(FXP_VERSION, &3u32.to_be_bytes(), &mut self.output);
                    continue;
                }
                let id = get_u32(&p, &mut at).unwrap();
                let mut body = id.to_be_bytes().to_vec();
                match p[0] {
                    FXP_OPEN => {
                        let path = String::from_utf8(get_str(&p, &mut at).unwrap().to_vec());
                        let path = path.unwrap();
                        if self.files.contains_key(&path) {
                            self.handles.push(path);
                            put_str(&mut body, (self.handles.len() - 1).to_string().as_bytes());
                            reply(FXP_HANDLE, &body, &mut self.output);
                        } else {
                            put_u32(&mut body, 2);
                            put_str(&mut body, b"No such file");
                            put_str(&mut body, b"");
                            reply(FXP_STATUS, &body, &mut self.output);
                        }
                    }
                    FXP_READ => {
                        let h = get_str(&p, &mut at).unwrap();
                        let h: usize = std::str::from_utf8(h).unwrap().parse().unwrap();
                        let off = u64::from_be_bytes(p[at..at + 8].try_into().unwrap()) as usize;
                        at += 8;
                        let len = get_u32(&p, &mut at).unwrap() as usize;
                        let data = &self.files[&self.handles[h]];
                        if off >= data.len() {
                            put_u32(&mut body, FX_EOF);
                            put_str(&mut body, b"EOF");
                            put_str(&mut body, b"");
                            reply(FXP_STATUS, &body, &mut self.output);
                        } else {
                            let end = data.len().min(off + len.min(1000));
                            put_str(&mut body, &data[off..end]);
                            reply(FXP_DATA, &body, &mut self.output);
                        }
                    }
                    FXP_CLOSE => {
                        put_u32(&mut body, 0);
                        put_str(&mut body, b"");
                        put_str(&mut body, b"");
                        reply(FXP_STATUS, &body, &mut self.output);
                    }
                    other => panic!("request {other}"),
                }
            }
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.input.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.answer();
            Ok(())
        }
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.output.len() - self.read_at);
            buf[..n].copy_from_slice(&self.output[self.read_at..self.read_at + n]);
            self.read_at += n;
            Ok(n)
        }
    }

    #[test]
    fn pipelined_reads_return_each_object_or_its_error() {
        let big: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let files: HashMap<String, Vec<u8>> = [
            ("/a".to_string(), big.clone()),
            ("/b".to_string(), b"hello".to_vec()),
            ("/empty".to_string(), Vec::new()),
            ("/short".to_string(), b"abc".to_vec()),
        ]
        .into();
        let fake = Fake {
            files,
            handles: Vec::new(),
            input: Vec::new(),
            output: Vec::new(),
            read_at: 0,
        };
        let mut b = Batcher::new(fake).unwrap();
        let got = b
            .fetch(&[
                ("/a".into(), 5000),
                ("/b".into(), 4),
                ("/missing".into(), 10),
                ("/empty".into(), 0),
                ("/short".into(), 10),
            ])
            .unwrap();
        assert_eq!(got[0].as_deref().unwrap(), &big[..]);
        // Only the size asked for is read.
        assert_eq!(got[1].as_deref().unwrap(), b"hell");
        assert!(got[2].as_ref().unwrap_err().contains("No such file"));
        assert!(got[3].as_ref().unwrap().is_empty());
        assert_eq!(got[4].as_deref().unwrap(), b"abc");
        // The channel serves the next batch.
        let again = b.fetch(&[("/b".into(), 5)]).unwrap();
        assert_eq!(again[0].as_deref().unwrap(), b"hello");
    }
}

#[cfg(test)]
mod real_server {
    use super::*;
    use std::path::Path;
    use std::process::{ChildStdin, ChildStdout, Command, Stdio};

    struct Pipe(ChildStdout, ChildStdin);
    impl Read for Pipe {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Pipe {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.1.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.1.flush()
        }
    }

    /// Against OpenSSH's own sftp-server (when installed), over pipes.
    #[test]
    fn reads_files_from_openssh_sftp_server() {
        let server = "/usr/lib/openssh/sftp-server";
        if !Path::new(server).exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut objects = Vec::new();
        let mut want = Vec::new();
        for i in 0..300u32 {
            let data: Vec<u8> = (0..(i * 3677 % 1_000_000))
                .map(|j| (j % 251) as u8)
                .collect();
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, &data).unwrap();
            objects.push((p.to_string_lossy().to_string(), data.len() as u64));
            want.push(data);
        }
        let mut child = Command::new(server)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pipe = Pipe(child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let mut b = Batcher::new(pipe).unwrap();
        for chunk in objects.chunks(40).zip(want.chunks(40)) {
            let got = b.fetch(chunk.0).unwrap();
            for (g, w) in got.iter().zip(chunk.1) {
                assert_eq!(g.as_deref().unwrap(), &w[..]);
            }
        }
        drop(b);
        let _ = child.wait();
    }

    #[test]
    fn streams_a_large_file_in_order() {
        let server = "/usr/lib/openssh/sftp-server";
        if !Path::new(server).exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5_000_003u32).map(|j| (j % 241) as u8).collect();
        let p = dir.path().join("big");
        std::fs::write(&p, &data).unwrap();
        let mut child = Command::new(server)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pipe = Pipe(child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let mut b = Batcher::new(pipe).unwrap();
        let name = p.to_string_lossy().to_string();
        let mut got = Vec::new();
        let mut st = b.stream(&name, data.len() as u64).unwrap();
        st.read_to_end(&mut got).unwrap();
        assert!(st.reusable());
        assert_eq!(got, data);
        // The channel serves the next request; a recorded size beyond the file's
        // end is an error.
        let mut st = b.stream(&name, data.len() as u64 + 10).unwrap();
        assert!(st.read_to_end(&mut Vec::new()).is_err());
        assert!(!st.reusable());
        assert!(b.stream("/nonexistent", 1).is_err());
        let _ = child.kill();
        let _ = child.wait();
    }
}
