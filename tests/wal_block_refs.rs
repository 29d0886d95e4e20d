//! The WAL block-reference decoder against real WAL: a PostgreSQL 15 cluster runs
//! pgbench's load, updates, and creates, truncates, drops and vacuum-truncates tables;
//! its completed segments, decoded straight from `pg_wal`, must give exactly the
//! records and block references `pg_waldump --bkp-details` prints, and the smgr and
//! commit events must name the relations the SQL touched. On PostgreSQL 17 and 18 (which
//! Debian's 15 pg_waldump cannot read) decoding must succeed and show the same
//! events and the blocks the updates wrote.

mod common;
use common::{pg_command, Cluster, ClusterOptions};
use pgbk::wal::block_refs::{Decoder, Fork, RelEvent, RelFileLocator, WalRecord};
use pgbk::wal::{Lsn, TimeLineId, WalSegment};
use std::collections::BTreeSet;
use std::fs;

/// `pg_default`'s oid, the tablespace of every relation here.
const DEFAULT_TABLESPACE: u32 = 1663;

/// The relfilenodes the workload touched.
struct Touched {
    db_oid: u32,
    created: u32,
    truncated_old: u32,
    truncated_new: u32,
    dropped: u32,
    vacuumed: u32,
    vacuumed_blocks: u32,
    accounts: u32,
    /// Heap blocks of pgbench_accounts holding the updated rows' new versions.
    updated_blocks: BTreeSet<u32>,
    /// What `pg_switch_wal()` returned: the end of the last completed segment's WAL.
    switch_end: Lsn,
}

fn filenode(c: &Cluster, table: &str) -> u32 {
    c.psql(&format!("select pg_relation_filenode('{table}')"))
        .parse()
        .expect("a relfilenode")
}

/// Generates the WAL of the test and switches to a new segment.
fn workload(c: &Cluster) -> Touched {
    let db_oid = c
        .psql("select oid from pg_database where datname = 'postgres'")
        .parse()
        .expect("database oid");
    c.pgbench_init(3);
    c.psql("update pgbench_accounts set abalance = abalance + 1 where aid % 997 = 0");
    let updated_blocks = c
        .psql(
            "select distinct (ctid::text::point)[0]::int from pgbench_accounts where aid % 997 = 0",
        )
        .lines()
        .map(|l| l.parse().expect("block number"))
        .collect();
    c.psql("create table created_t (id int, v text)");
    c.psql("create table trunc_t as select g from generate_series(1, 5000) g");
    let truncated_old = filenode(c, "trunc_t");
    c.psql("truncate trunc_t");
    let truncated_new = filenode(c, "trunc_t");
    c.psql("create table drop_t as select g from generate_series(1, 100) g");
    let dropped = filenode(c, "drop_t");
    c.psql("drop table drop_t");
    c.psql(
        "create table vac_t as select g, repeat('x', 200) v from generate_series(1, 20000) g;\n\
         delete from vac_t where g > 100;",
    );
    c.psql("vacuum vac_t");
    let vacuumed_blocks = c
        .psql("select pg_relation_size('vac_t') / 8192")
        .parse()
        .expect("block count");
    Touched {
        db_oid,
        created: filenode(c, "created_t"),
        truncated_old,
        truncated_new,
        dropped,
        vacuumed: filenode(c, "vac_t"),
        vacuumed_blocks,
        accounts: filenode(c, "pgbench_accounts"),
        updated_blocks,
        switch_end: c.psql("select pg_switch_wal()").parse().expect("an LSN"),
    }
}

/// The completed segments in `pg_wal`, up to the one `pg_switch_wal()` ended, in order.
fn completed_segments(c: &Cluster, t: &Touched) -> Vec<(WalSegment, String)> {
    let seg_size = 16 << 20;
    let last = WalSegment::containing(TimeLineId(1), t.switch_end, seg_size).name();
    let mut names: Vec<String> = fs::read_dir(c.pg_wal())
        .expect("read pg_wal")
        .map(|e| {
            e.expect("pg_wal entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.len() == 24 && n.chars().all(|ch| ch.is_ascii_hexdigit()))
        .filter(|n| *n <= last)
        .collect();
    names.sort();
    assert!(names.len() >= 2, "expected several segments, got {names:?}");
    names
        .into_iter()
        .map(|n| (WalSegment::parse(&n, seg_size).expect("segment name"), n))
        .collect()
}

fn decode_all(c: &Cluster, segments: &[(WalSegment, String)]) -> Vec<WalRecord> {
    let mut decoder = Decoder::new();
    let mut records = Vec::new();
    for (seg, name) in segments {
        let file = fs::File::open(c.pg_wal().join(name)).expect("open segment");
        let got = decoder
            .feed(seg, file)
            .unwrap_or_else(|e| panic!("decoding {name}: {e}"));
        records.extend(got);
    }
    records
}

/// (record LSN, spc/db/rel, fork, block) as `pg_waldump` prints them.
type Ref = (String, String, String, u32);

/// Record LSNs and block references from `pg_waldump --bkp-details` output.
fn parse_waldump(out: &str) -> (BTreeSet<String>, BTreeSet<Ref>) {
    let mut lsns = BTreeSet::new();
    let mut refs = BTreeSet::new();
    let mut lsn = String::new();
    for line in out.lines() {
        if line.starts_with("rmgr:") {
            let rest = line.split("lsn: ").nth(1).expect("lsn in a record line");
            lsn = rest.split(',').next().expect("lsn").trim().to_string();
            lsns.insert(lsn.clone());
        }
        for part in line.split("blkref #").skip(1) {
            let words: Vec<&str> = part
                .split(|ch: char| ch.is_whitespace() || ch == ',')
                .filter(|w| !w.is_empty())
                .collect();
            // "N:" "rel" "S/D/R" ["fork" "F"] "blk" "B"
            assert_eq!(words.get(1), Some(&"rel"), "blkref line: {line}");
            let rel = words[2].to_string();
            let (fork, blk_at) = if words[3] == "fork" {
                (words[4].to_string(), 5)
            } else {
                ("main".to_string(), 3)
            };
            assert_eq!(words[blk_at], "blk", "blkref line: {line}");
            let blk = words[blk_at + 1].parse().expect("block number");
            refs.insert((lsn.clone(), rel, fork, blk));
        }
    }
    (lsns, refs)
}

fn decoded_refs(records: &[WalRecord]) -> (BTreeSet<String>, BTreeSet<Ref>) {
    let lsns = records.iter().map(|r| r.lsn.to_string()).collect();
    let refs = records
        .iter()
        .flat_map(|r| {
            r.blocks.iter().map(move |b| {
                (
                    r.lsn.to_string(),
                    format!("{}/{}/{}", b.rel.spc_oid, b.rel.db_oid, b.rel.rel_number),
                    b.fork.name().to_string(),
                    b.block,
                )
            })
        })
        .collect();
    (lsns, refs)
}

/// `pg_waldump` prints LSNs as `X/XXXXXXXX` (8 digits after the slash); ours are
/// `X/X` like `pg_current_wal_lsn()`: bring both to one form.
fn normalise(lsn: &str) -> String {
    let (hi, lo) = lsn.split_once('/').expect("an LSN");
    format!(
        "{:X}/{:X}",
        u32::from_str_radix(hi, 16).expect("hex"),
        u32::from_str_radix(lo, 16).expect("hex")
    )
}

fn check_events(records: &[WalRecord], t: &Touched) {
    let rel = |n: u32| RelFileLocator {
        spc_oid: DEFAULT_TABLESPACE,
        db_oid: t.db_oid,
        rel_number: n,
    };
    let events: Vec<&RelEvent> = records.iter().flat_map(|r| &r.events).collect();
    let has = |e: RelEvent| events.contains(&&e);
    for created in [t.created, t.truncated_new] {
        assert!(
            has(RelEvent::Create {
                rel: rel(created),
                fork: Fork::Main
            }),
            "no XLOG_SMGR_CREATE of {created}"
        );
    }
    for dropped in [t.truncated_old, t.dropped] {
        assert!(
            has(RelEvent::Drop { rel: rel(dropped) }),
            "no commit dropping {dropped}"
        );
    }
    let vac = events.iter().find_map(|e| match e {
        RelEvent::Truncate {
            rel: r,
            blocks,
            forks,
        } if *r == rel(t.vacuumed) => Some((*blocks, forks.main)),
        _ => None,
    });
    assert_eq!(
        vac,
        Some((t.vacuumed_blocks, true)),
        "vacuum's XLOG_SMGR_TRUNCATE of vac_t ({})",
        t.vacuumed
    );
    assert!(t.vacuumed_blocks > 0, "vacuum left some blocks");
    // The blocks holding the updated rows' new versions are referenced.
    let account_blocks: BTreeSet<u32> = records
        .iter()
        .flat_map(|r| &r.blocks)
        .filter(|b| b.rel == rel(t.accounts) && b.fork == Fork::Main)
        .map(|b| b.block)
        .collect();
    assert!(!t.updated_blocks.is_empty());
    assert!(
        t.updated_blocks.is_subset(&account_blocks),
        "updated blocks {:?} not all referenced",
        t.updated_blocks
    );
}

#[test]
fn decoded_block_references_match_pg_waldump_on_postgresql_15() {
    let c = Cluster::new(ClusterOptions::default());
    let touched = workload(&c);
    let segments = completed_segments(&c, &touched);
    let records = decode_all(&c, &segments);
    let seg_size = segments[0].0.seg_size;
    assert!(
        records
            .iter()
            .any(|r| r.lsn.segno(seg_size) != Lsn(r.end.0 - 1).segno(seg_size)),
        "no record runs from one segment into the next"
    );

    let first = c.pg_wal().join(&segments[0].1);
    let last = c.pg_wal().join(&segments[segments.len() - 1].1);
    let out = pg_command("pg_waldump")
        .arg("--bkp-details")
        .arg(&first)
        .arg(&last)
        .output()
        .expect("run pg_waldump");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (lsns, refs) = parse_waldump(&stdout);
    let lsns: BTreeSet<String> = lsns.iter().map(|l| normalise(l)).collect();
    let refs: BTreeSet<Ref> = refs
        .into_iter()
        .map(|(l, r, f, b)| (normalise(&l), r, f, b))
        .collect();
    assert!(
        lsns.len() > 1000,
        "pg_waldump printed {} records; stderr: {}",
        lsns.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    let (our_lsns, our_refs) = decoded_refs(&records);
    assert_eq!(
        our_lsns
            .symmetric_difference(&lsns)
            .take(10)
            .collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "record LSNs differ from pg_waldump's ({} ours, {} theirs)",
        our_lsns.len(),
        lsns.len()
    );
    assert_eq!(
        our_refs
            .symmetric_difference(&refs)
            .take(10)
            .collect::<Vec<_>>(),
        Vec::<&Ref>::new(),
        "block references differ from pg_waldump's ({} ours, {} theirs)",
        our_refs.len(),
        refs.len()
    );
    eprintln!(
        "{} records, {} block references, equal to pg_waldump's",
        our_lsns.len(),
        our_refs.len()
    );
    check_events(&records, &touched);
}

#[test]
fn decodes_postgresql_17_wal() {
    decodes_wal_of(17);
}

#[test]
fn decodes_postgresql_18_wal() {
    decodes_wal_of(18);
}

fn decodes_wal_of(major: u32) {
    let c = Cluster::new(ClusterOptions {
        major: Some(major),
        ..Default::default()
    });
    let touched = workload(&c);
    let segments = completed_segments(&c, &touched);
    let records = decode_all(&c, &segments);
    assert!(records.len() > 1000, "{} records", records.len());
    check_events(&records, &touched);
}
