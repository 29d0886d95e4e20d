//! The replication state machine against a scripted fake walsender on a Unix
//! socket: the sequences of PG-PROTOCOL.md §1.2 (timeline switch inside the stream
//! and at the start point, shutdown), cancel safety and buffered reads.

use super::*;
use crate::pg::{ConnInfo, ConnectOptions, Connection};
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn row_desc(cols: &[&str]) -> Vec<u8> {
    let mut b = (cols.len() as i16).to_be_bytes().to_vec();
    for c in cols {
        b.extend_from_slice(c.as_bytes());
        b.push(0);
        b.extend_from_slice(&[0u8; 18]);
    }
    msg(b'T', &b)
}

fn data_row(vals: &[Option<&str>]) -> Vec<u8> {
    let mut b = (vals.len() as i16).to_be_bytes().to_vec();
    for v in vals {
        match v {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(s) => {
                b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                b.extend_from_slice(s.as_bytes());
            }
        }
    }
    msg(b'D', &b)
}

fn complete(tag: &str) -> Vec<u8> {
    let mut b = tag.as_bytes().to_vec();
    b.push(0);
    msg(b'C', &b)
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn copy_both() -> Vec<u8> {
    msg(b'W', &[0, 0, 0])
}

fn xlog(start: u64, data: &[u8]) -> Vec<u8> {
    let mut b = vec![b'w'];
    b.extend_from_slice(&start.to_be_bytes());
    b.extend_from_slice(&(start + data.len() as u64).to_be_bytes());
    b.extend_from_slice(&7i64.to_be_bytes());
    b.extend_from_slice(data);
    msg(b'd', &b)
}

fn keepalive(end: u64, reply: bool) -> Vec<u8> {
    let mut b = vec![b'k'];
    b.extend_from_slice(&end.to_be_bytes());
    b.extend_from_slice(&9i64.to_be_bytes());
    b.push(u8::from(reply));
    msg(b'd', &b)
}

fn error(code: &str, text: &str) -> Vec<u8> {
    let b = format!("SERROR\0VERROR\0C{code}\0M{text}\0\0");
    msg(b'E', b.as_bytes())
}

/// Reads one frontend message (tag, body).
async fn read_msg(s: &mut UnixStream) -> (u8, Vec<u8>) {
    let tag = s.read_u8().await.expect("tag");
    let len = s.read_i32().await.expect("len");
    let mut body = vec![0u8; len as usize - 4];
    s.read_exact(&mut body).await.expect("body");
    (tag, body)
}

async fn expect_query(s: &mut UnixStream) -> String {
    let (tag, body) = read_msg(s).await;
    assert_eq!(tag, b'Q');
    String::from_utf8(body[..body.len() - 1].to_vec()).expect("utf8")
}

/// Starts a fake server that accepts trust logins and then runs `script`, and
/// returns a replication connection to it.
async fn fake<F, Fut>(script: F) -> (Connection, tokio::task::JoinHandle<()>, tempfile::TempDir)
where
    F: FnOnce(UnixStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = UnixListener::bind(dir.path().join(".s.PGSQL.5432")).expect("bind");
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let len = s.read_i32().await.expect("startup len");
        let mut body = vec![0u8; len as usize - 4];
        s.read_exact(&mut body).await.expect("startup");
        assert_eq!(&body[..4], &[0, 3, 0, 0]);
        assert!(body.windows(12).any(|w| w == b"replication\0"));
        let mut out = msg(b'R', &0i32.to_be_bytes());
        out.extend(msg(b'S', b"server_version\x0015.18 (Debian 15.18-1)\0"));
        out.extend(msg(b'K', &[0, 0, 0, 42, 0, 0, 0, 1]));
        out.extend(ready());
        s.write_all(&out).await.expect("write");
        script(s).await;
    });
    let info = ConnInfo::parse(&format!("host={} user=u", dir.path().display()))
        .expect("conninfo")
        .with_env(Vec::<(String, String)>::new());
    let opts = ConnectOptions {
        replication: true,
        ..Default::default()
    };
    let conn = Connection::connect(&info, &opts).await.expect("connect");
    assert_eq!(conn.backend_pid(), 42);
    assert_eq!(conn.server_version_num(), Some(150018));
    (conn, server, dir)
}

#[tokio::test]
async fn end_of_timeline_inside_the_stream() {
    let (mut conn, server, _dir) = fake(|mut s| async move {
        let q = expect_query(&mut s).await;
        assert_eq!(
            q,
            "START_REPLICATION SLOT \"my slot\" PHYSICAL 0/6000000 TIMELINE 1"
        );
        let mut out = copy_both();
        out.extend(xlog(0x600_0000, &[0x10, 0xd1, 1, 2]));
        out.extend(xlog(0x600_0004, &[3]));
        out.extend(msg(b'c', b""));
        s.write_all(&out).await.unwrap();
        assert_eq!(read_msg(&mut s).await.0, b'c');
        let mut out = row_desc(&["next_tli", "next_tli_startpos"]);
        out.extend(data_row(&[Some("2"), Some("0/6025A50")]));
        out.extend(complete("START_STREAMING"));
        out.extend(complete("START_REPLICATION"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        assert_eq!(expect_query(&mut s).await, "SHOW wal_segment_size");
        let mut out = row_desc(&["wal_segment_size"]);
        out.extend(data_row(&[Some("16MB")]));
        out.extend(complete("SHOW"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
    })
    .await;
    let start = conn
        .start_physical_replication(Some("my slot"), Lsn(0x600_0000), TimeLineId(1))
        .await
        .unwrap();
    let StartReplication::Streaming(mut stream) = start else {
        panic!("expected a stream")
    };
    match stream.next_message().await.unwrap() {
        ReplicationMessage::XLogData {
            wal_start,
            wal_end,
            send_time,
            data,
        } => {
            assert_eq!(wal_start, Lsn(0x600_0000));
            assert_eq!(wal_end, Lsn(0x600_0004));
            assert_eq!(send_time, 7);
            assert_eq!(&data[..], &[0x10, 0xd1, 1, 2]);
        }
        m => panic!("unexpected {m:?}"),
    }
    assert!(matches!(
        stream.next_message().await.unwrap(),
        ReplicationMessage::XLogData { .. }
    ));
    assert_eq!(
        stream.next_message().await.unwrap(),
        ReplicationMessage::EndOfTimeline {
            next_tli: TimeLineId(2),
            next_start: Lsn(0x602_5A50)
        }
    );
    assert_eq!(conn.wal_segment_size().await.unwrap(), 16 << 20);
    server.await.unwrap();
}

#[tokio::test]
async fn start_exactly_at_the_switch_point_gives_no_stream() {
    let (mut conn, server, _dir) = fake(|mut s| async move {
        expect_query(&mut s).await;
        let mut out = row_desc(&["next_tli", "next_tli_startpos"]);
        out.extend(data_row(&[Some("2"), Some("0/6025A50")]));
        out.extend(complete("START_STREAMING"));
        out.extend(complete("START_REPLICATION"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
    })
    .await;
    match conn
        .start_physical_replication(None, Lsn(0x602_5A50), TimeLineId(1))
        .await
        .unwrap()
    {
        StartReplication::TimelineEnded {
            next_tli,
            next_start,
        } => {
            assert_eq!(next_tli, TimeLineId(2));
            assert_eq!(next_start, Lsn(0x602_5A50));
        }
        StartReplication::Streaming(_) => panic!("expected the end of the timeline"),
    }
    server.await.unwrap();
}

#[tokio::test]
async fn shutdown_is_command_complete_without_copy_done() {
    let (mut conn, server, _dir) = fake(|mut s| async move {
        expect_query(&mut s).await;
        let mut out = copy_both();
        out.extend(keepalive(0x100, true));
        out.extend(complete("COPY 0"));
        s.write_all(&out).await.unwrap();
    })
    .await;
    let StartReplication::Streaming(mut stream) = conn
        .start_physical_replication(None, Lsn(0), TimeLineId(1))
        .await
        .unwrap()
    else {
        panic!("expected a stream")
    };
    assert_eq!(
        stream.next_message().await.unwrap(),
        ReplicationMessage::Keepalive {
            wal_end: Lsn(0x100),
            send_time: 9,
            reply_requested: true
        }
    );
    assert_eq!(
        stream.next_message().await.unwrap(),
        ReplicationMessage::ServerShutdown
    );
    assert!(stream.next_message().await.is_err());
    assert!(conn.identify_system().await.is_err());
    server.await.unwrap();
}

#[tokio::test]
async fn dropped_reads_lose_nothing_and_buffered_reads_need_no_io() {
    let (mut conn, server, _dir) = fake(|mut s| async move {
        expect_query(&mut s).await;
        s.write_all(&copy_both()).await.unwrap();
        let frame = xlog(0x1000, &[9; 100]);
        s.write_all(&frame[..40]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(&frame[40..]).await.unwrap();
        let mut out = xlog(0x1064, &[1]);
        out.extend(xlog(0x1065, &[2]));
        out.extend(xlog(0x1066, &[3]));
        s.write_all(&out).await.unwrap();
        // The status update.
        let (tag, body) = read_msg(&mut s).await;
        assert_eq!(tag, b'd');
        assert_eq!(body.len(), 34);
        assert_eq!(body[0], b'r');
        assert_eq!(&body[1..9], &0x1067u64.to_be_bytes());
        assert_eq!(&body[9..17], &0x1067u64.to_be_bytes());
        assert_eq!(&body[17..25], &[0u8; 8]);
        assert_eq!(body[33], 1);
        // stop(): CopyDone, then the server's end of stream.
        assert_eq!(read_msg(&mut s).await.0, b'c');
        let mut out = xlog(0x1067, &[4]);
        out.extend(msg(b'c', b""));
        out.extend(complete("START_STREAMING"));
        out.extend(complete("START_REPLICATION"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        assert_eq!(expect_query(&mut s).await, "IDENTIFY_SYSTEM");
        let mut out = row_desc(&["systemid", "timeline", "xlogpos", "dbname"]);
        out.extend(data_row(&[
            Some("7711827834336953114"),
            Some("1"),
            Some("0/1500800"),
            None,
        ]));
        out.extend(complete("IDENTIFY_SYSTEM"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
    })
    .await;
    let StartReplication::Streaming(mut stream) = conn
        .start_physical_replication(None, Lsn(0x1000), TimeLineId(1))
        .await
        .unwrap()
    else {
        panic!("expected a stream")
    };
    // Half a frame arrives, the read is dropped by the timer, nothing is lost.
    let mut timeouts = 0;
    let first = loop {
        tokio::select! {
            m = stream.next_message() => break m.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(50)) => timeouts += 1,
        }
    };
    assert!(timeouts >= 2, "{timeouts}");
    match first {
        ReplicationMessage::XLogData {
            wal_start, data, ..
        } => {
            assert_eq!(wal_start, Lsn(0x1000));
            assert_eq!(&data[..], &[9; 100]);
        }
        m => panic!("unexpected {m:?}"),
    }
    let second = stream.next_message().await.unwrap();
    assert!(matches!(
        second,
        ReplicationMessage::XLogData {
            wal_start: Lsn(0x1064),
            ..
        }
    ));
    // The rest came in the same write; give it a moment, then read without I/O.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut buffered = Vec::new();
    while let Some(m) = stream.try_next_buffered().unwrap() {
        buffered.push(m);
    }
    assert!(buffered.len() <= 2);
    while buffered.len() < 2 {
        buffered.push(stream.next_message().await.unwrap());
    }
    assert!(matches!(
        buffered[1],
        ReplicationMessage::XLogData {
            wal_start: Lsn(0x1066),
            ..
        }
    ));
    assert_eq!(stream.try_next_buffered().unwrap(), None);
    stream
        .send_status(Lsn(0x1067), Lsn(0x1067), Lsn::INVALID, true)
        .await
        .unwrap();
    stream.stop().await.unwrap();
    let id = conn.identify_system().await.unwrap();
    assert_eq!(id.system_id, SystemId(7711827834336953114));
    assert_eq!(id.timeline, TimeLineId(1));
    assert_eq!(id.xlogpos, Lsn(0x150_0800));
    assert_eq!(id.dbname, None);
    server.await.unwrap();
}

#[tokio::test]
async fn abandoned_stream_and_errors_leave_the_connection_usable() {
    let (mut conn, server, _dir) = fake(|mut s| async move {
        expect_query(&mut s).await;
        let mut out = copy_both();
        out.extend(xlog(0, &[1]));
        s.write_all(&out).await.unwrap();
        // The stream is dropped; the next command ends the COPY first.
        assert_eq!(read_msg(&mut s).await.0, b'c');
        let mut out = msg(b'c', b"");
        out.extend(complete("START_REPLICATION"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        assert_eq!(
            expect_query(&mut s).await,
            "CREATE_REPLICATION_SLOT \"s\" PHYSICAL (RESERVE_WAL)"
        );
        let mut out = error("42710", "replication slot \"s\" already exists");
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        assert_eq!(expect_query(&mut s).await, "READ_REPLICATION_SLOT \"s\"");
        let mut out = row_desc(&["slot_type", "restart_lsn", "restart_tli"]);
        out.extend(data_row(&[None, None, None]));
        out.extend(complete("READ_REPLICATION_SLOT"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        assert_eq!(expect_query(&mut s).await, "READ_REPLICATION_SLOT \"s\"");
        let mut out = row_desc(&["slot_type", "restart_lsn", "restart_tli"]);
        out.extend(data_row(&[Some("physical"), Some("0/1500718"), Some("1")]));
        out.extend(complete("READ_REPLICATION_SLOT"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        assert_eq!(expect_query(&mut s).await, "TIMELINE_HISTORY 2");
        let mut out = row_desc(&["filename", "content"]);
        out.extend(data_row(&[
            Some("00000002.history"),
            Some("1\t0/6025A50\tno recovery target specified\n"),
        ]));
        out.extend(complete("TIMELINE_HISTORY"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        assert_eq!(
            expect_query(&mut s).await,
            "DROP_REPLICATION_SLOT \"s\" WAIT"
        );
        let mut out = complete("DROP_REPLICATION_SLOT");
        out.extend(ready());
        s.write_all(&out).await.unwrap();
    })
    .await;
    {
        let StartReplication::Streaming(mut stream) = conn
            .start_physical_replication(None, Lsn(0), TimeLineId(1))
            .await
            .unwrap()
        else {
            panic!("expected a stream")
        };
        stream.next_message().await.unwrap();
    }
    let e = conn.create_physical_slot("s", true).await.unwrap_err();
    assert_eq!(e.code(), Some("42710"));
    assert_eq!(conn.read_replication_slot("s").await.unwrap(), None);
    assert_eq!(
        conn.read_replication_slot("s").await.unwrap(),
        Some(SlotInfo {
            restart_lsn: Some(Lsn(0x150_0718)),
            restart_tli: Some(TimeLineId(1))
        })
    );
    let h = conn.timeline_history(TimeLineId(2)).await.unwrap();
    assert_eq!(h.filename, "00000002.history");
    assert_eq!(h.content, b"1\t0/6025A50\tno recovery target specified\n");
    conn.drop_slot("s", true).await.unwrap();
    server.await.unwrap();
}

#[test]
fn copy_data_decoding() {
    let mut w = vec![b'w'];
    w.extend_from_slice(&0x1_0000_0000u64.to_be_bytes());
    w.extend_from_slice(&0x1_0000_0010u64.to_be_bytes());
    w.extend_from_slice(&(-5i64).to_be_bytes());
    w.extend_from_slice(b"abc");
    assert_eq!(
        parse_copy_data(Bytes::from(w)).unwrap(),
        ReplicationMessage::XLogData {
            wal_start: Lsn(0x1_0000_0000),
            wal_end: Lsn(0x1_0000_0010),
            send_time: -5,
            data: Bytes::from_static(b"abc"),
        }
    );
    assert!(parse_copy_data(Bytes::from_static(b"w123")).is_err());
    assert!(parse_copy_data(Bytes::from_static(b"k123")).is_err());
    assert!(parse_copy_data(Bytes::from_static(b"x")).is_err());
    assert!(parse_copy_data(Bytes::new()).is_err());
}

#[test]
fn identifiers_are_quoted() {
    assert_eq!(quote_ident("pgbk").unwrap(), "\"pgbk\"");
    assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
    assert!(quote_ident("").is_err());
    assert!(quote_ident("a\0b").is_err());
}

#[test]
fn pg_clock_is_after_2020() {
    // 2020-01-01 is 631,152,000 s after 2000-01-01.
    assert!(pg_now_micros() > 631_152_000 * 1_000_000);
}

#[test]
fn next_timeline_row_is_checked() {
    let ok = [
        Some(Bytes::from_static(b"2")),
        Some(Bytes::from_static(b"0/6025A50")),
    ];
    assert_eq!(
        parse_next_timeline(&ok).unwrap(),
        (TimeLineId(2), Lsn(0x602_5A50))
    );
    let bad = [
        Some(Bytes::from_static(b"0")),
        Some(Bytes::from_static(b"0/1")),
    ];
    assert!(parse_next_timeline(&bad).is_err());
    assert!(parse_next_timeline(&[None, None]).is_err());
    assert!(parse_next_timeline(&ok[..1]).is_err());
}

#[tokio::test]
async fn connect_timeout_bounds_a_silent_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = UnixListener::bind(dir.path().join(".s.PGSQL.5432")).expect("bind");
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    });
    let info = ConnInfo::parse(&format!("host={} user=u", dir.path().display()))
        .expect("conninfo")
        .with_env(Vec::<(String, String)>::new());
    let opts = ConnectOptions {
        connect_timeout: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let e = Connection::connect(&info, &opts)
        .await
        .expect_err("timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    match &e {
        PgError::Connect { target, source } => {
            assert!(target.ends_with("/.s.PGSQL.5432"), "{target}");
            assert_eq!(source.kind(), std::io::ErrorKind::TimedOut);
        }
        other => panic!("unexpected {other:?}"),
    }
    server.abort();
}

#[tokio::test]
async fn a_server_that_hangs_up_gives_closed() {
    let (mut conn, server, _dir) = fake(|mut s| async move {
        expect_query(&mut s).await;
        s.write_all(&row_desc(&["a"])).await.unwrap();
    })
    .await;
    let e = conn.simple_query("select 1").await.expect_err("closed");
    assert!(matches!(e, PgError::Closed), "{e:?}");
    let e = conn.simple_query("select 1").await.expect_err("unusable");
    assert!(e.to_string().contains("unusable"), "{e}");
    server.await.unwrap();
}

/// Compile-time check: everything can run inside `tokio::spawn`.
#[allow(dead_code)]
fn futures_are_send(conn: &mut Connection, info: &ConnInfo) {
    fn is_send<T: Send>(_: T) {}
    is_send(Connection::connect(info, &ConnectOptions::default()));
    is_send(conn.simple_query("select 1"));
    is_send(async move {
        if let Ok(StartReplication::Streaming(mut s)) = conn
            .start_physical_replication(None, Lsn(0), TimeLineId(1))
            .await
        {
            let _ = s.next_message().await;
            let _ = s.send_status(Lsn(0), Lsn(0), Lsn(0), false).await;
            let _ = s.stop().await;
        }
    });
}

#[tokio::test]
async fn a_query_with_a_nul_byte_is_refused_without_desynchronising() {
    let (mut conn, server, _dir) = fake(|mut s| async move {
        assert_eq!(expect_query(&mut s).await, "SHOW wal_level");
        let mut out = row_desc(&["wal_level"]);
        out.extend(data_row(&[Some("replica")]));
        out.extend(complete("SHOW"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
    })
    .await;
    let e = conn.simple_query("select '\0'").await.expect_err("nul");
    assert!(matches!(e, PgError::InvalidArgument(_)), "{e:?}");
    assert!(conn.show("wal level").await.is_err());
    assert_eq!(conn.show("wal_level").await.unwrap(), "replica");
    server.await.unwrap();
}
