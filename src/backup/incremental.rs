//! Choosing what an incremental backup is built on, and whether it can be taken
//! at all. PostgreSQL 17's `BASE_BACKUP ... INCREMENTAL`: the server compares the
//! parent's `backup_manifest` with its WAL summaries, so it needs
//! `summarize_wal = on` and a parent taken by BASE_BACKUP of the same cluster and
//! major version. PostgreSQL 15 and 16: pgbk compares every streamed block with
//! the parent's block map ([`super::block_map`]), so the parent needs one.
//!
//! [`decide`] is pure: the server's facts and the server's backups in, a full or
//! an incremental backup (with its parent) out, or a refusal.

use super::{chain, BackupInfo, BackupStatus};
use crate::wal::{Lsn, SystemId, TimeLineId};

/// The oldest server version with incremental BASE_BACKUP; older servers get
/// pgbk's block-map incrementals.
pub const MIN_INCREMENTAL_VERSION: u32 = 170000;

/// What the user asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncrementalPlan {
    /// The parent named on the command line (id, name, `latest`); `None` picks
    /// the newest backup that can be one.
    pub parent: Option<String>,
    /// Asked for by `backup_type = incremental` rather than `--incremental`: with
    /// no possible parent, or a chain already `full_backup_every` long, a full
    /// backup is taken instead, with a notice.
    pub from_config: bool,
    /// `full_backup_every`: a chain holds at most this many backups.
    pub full_backup_every: Option<u32>,
    /// `incremental_fallback = full`: a server that cannot take an incremental
    /// backup gets a full one, with a notice, instead of a refusal.
    pub fallback_full: bool,
    /// `incremental_read = sql`: on PostgreSQL 15 and 16, read only the changed
    /// blocks over SQL when the WAL archive and the role's grants allow it.
    pub sql_read: bool,
}

/// What the server says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSide {
    /// `server_version_num`.
    pub version: u32,
    /// `summarize_wal` (`None` before PostgreSQL 17).
    pub summarize_wal: Option<bool>,
    pub system_id: SystemId,
    /// The server's current timeline.
    pub timeline: TimeLineId,
}

/// What to take.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A full backup; the notice says why an incremental one was not taken.
    Full(Option<String>),
    /// An incremental backup built on this parent.
    Incremental(Box<BackupInfo>),
}

/// Why `parent` cannot be the parent of an incremental backup of this server.
pub fn unfit_parent(parent: &BackupInfo, server: &ServerSide) -> Option<String> {
    let id = &parent.backup_id;
    if parent.status != BackupStatus::Done {
        return Some(format!("backup {id} is {}, not DONE", parent.status));
    }
    if parent.system_id != server.system_id {
        return Some(format!(
            "backup {id} is of another cluster (system id {}, the server's is {})",
            parent.system_id, server.system_id
        ));
    }
    if server.version < MIN_INCREMENTAL_VERSION {
        if parent.method != "postgres" || parent.block_map.is_none() {
            return Some(format!(
                "backup {id} has no block map (method {}; streamed backups of PostgreSQL 15 and 16 record one)",
                parent.method
            ));
        }
    } else if parent.method != "postgres" || !parent.has_manifest {
        return Some(format!(
            "backup {id} has no backup_manifest from BASE_BACKUP (method {})",
            parent.method
        ));
    }
    if parent.server_version / 10000 != server.version / 10000 {
        return Some(format!(
            "backup {id} was taken from PostgreSQL {}, the server runs {}",
            parent.server_version / 10000,
            server.version / 10000
        ));
    }
    let tli = parent.end_timeline.unwrap_or(parent.timeline);
    if tli != server.timeline {
        return Some(format!(
            "backup {id} ended on timeline {tli}, the server is on timeline {}",
            server.timeline
        ));
    }
    None
}

/// Decides between a full and an incremental backup of `server_name`.
pub fn decide(
    server_name: &str,
    plan: &IncrementalPlan,
    server: &ServerSide,
    existing: &[BackupInfo],
) -> Result<Decision, String> {
    let refuse_or_full = |why: String| {
        if plan.fallback_full {
            Ok(Decision::Full(Some(format!(
                "{why}; taking a full backup (incremental_fallback = full)"
            ))))
        } else {
            Err(format!("server '{server_name}': {why}"))
        }
    };
    if server.version >= MIN_INCREMENTAL_VERSION && server.summarize_wal != Some(true) {
        return refuse_or_full(
            "incremental backups need summarize_wal = on on the server \
             (ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf(); then take a full backup to build on)"
                .to_string(),
        );
    }
    let named = plan
        .parent
        .as_deref()
        .filter(|w| !matches!(*w, "latest" | "last"));
    let parent = match named {
        Some(wanted) => {
            let p = existing
                .iter()
                .find(|b| b.backup_id == wanted || b.name.as_deref() == Some(wanted))
                .ok_or_else(|| format!("server '{server_name}': no backup '{wanted}'"))?;
            if let Some(why) = unfit_parent(p, server) {
                return Err(format!(
                    "server '{server_name}': an incremental backup cannot be built on it: {why}"
                ));
            }
            p
        }
        None => {
            let newest = existing
                .iter()
                .filter(|b| unfit_parent(b, server).is_none())
                .max_by(|a, b| (a.end_lsn, &a.backup_id).cmp(&(b.end_lsn, &b.backup_id)));
            match newest {
                Some(p) => p,
                None if plan.from_config => {
                    return Ok(Decision::Full(Some(
                        "no earlier DONE backup to build an incremental on: taking a full backup"
                            .to_string(),
                    )))
                }
                None => {
                    return Err(format!(
                        "server '{server_name}': no DONE backup of this cluster (timeline {}, \
                         streamed by BASE_BACKUP) to build an incremental on; take a full backup first",
                        server.timeline
                    ))
                }
            }
        }
    };
    if let Some(every) = plan.full_backup_every.filter(|_| plan.from_config) {
        let len = chain::length(parent, existing);
        if len >= every as usize {
            return Ok(Decision::Full(Some(format!(
                "the chain of backup {} holds {len} backups (full_backup_every = {every}): taking a full backup",
                parent.backup_id
            ))));
        }
    }
    if let Err(e) = chain::ancestors(parent, existing) {
        return refuse_or_full(e.to_string());
    }
    Ok(Decision::Incremental(Box::new(parent.clone())))
}

/// The query finding, among the WAL summaries from `from` (the parent's start)
/// to `to` (the new backup's), a relation fork truncated to a length above zero
/// in one summary and written at or past that length in a later one.
///
/// PostgreSQL 17 and 18 (`PrepareForIncrementalBackup`) merge the summaries in
/// the order `GetWalSummaries` lists them, the directory's and not the LSNs',
/// and apply each one's limit block (`BlockRefTableSetLimitBlock`, which forgets
/// the modified blocks at or past it) before marking its blocks: an older
/// truncation merged after a newer re-extension forgets the re-extended blocks,
/// and the INCREMENTAL file misses them while its truncation length keeps them,
/// so they are rebuilt from the parent. A limit of 0 (created or dropped) sends
/// the file whole whatever the order, and a later truncation legitimately
/// forgets older writes, so only this pattern is a hazard. The row: tablespace,
/// database, relfilenode, fork, limit block, and the relation's name when it
/// is in the connection's database.
pub fn summary_hazard_query(from: Lsn, to: Lsn) -> String {
    format!(
        "WITH s AS (SELECT tli, start_lsn, end_lsn FROM pg_available_wal_summaries() \
                    WHERE end_lsn > '{from}'::pg_lsn AND start_lsn < '{to}'::pg_lsn), \
              c AS (SELECT s.start_lsn, w.* FROM s, \
                    pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn) w), \
              l AS (SELECT * FROM c WHERE is_limit_block AND relblocknumber > 0) \
         SELECT l.reltablespace, l.reldatabase, l.relfilenode, l.relforknumber, l.relblocknumber, \
                CASE WHEN l.reldatabase = d.oid THEN pg_filenode_relation( \
                  CASE WHEN l.reltablespace = d.dattablespace THEN 0 ELSE l.reltablespace END, \
                  l.relfilenode)::regclass::text END \
         FROM l, (SELECT oid, dattablespace FROM pg_database \
                  WHERE datname = current_database()) d \
         WHERE EXISTS (SELECT 1 FROM c WHERE c.reltablespace = l.reltablespace \
                AND c.reldatabase = l.reldatabase AND c.relfilenode = l.relfilenode \
                AND c.relforknumber = l.relforknumber AND c.start_lsn > l.start_lsn \
                AND NOT c.is_limit_block AND c.relblocknumber >= l.relblocknumber) \
         LIMIT 1"
    )
}

/// A relation fork's file as the data directory names it (its first segment):
/// `base/<db>/<relfilenode>[_fsm|_vm|_init]`, `global/…` or
/// `pg_tblspc/<oid>/…/<db>/…`.
pub fn relation_path(tablespace: u32, database: u32, relfilenode: u32, fork: u32) -> String {
    let fork = match fork {
        1 => "_fsm",
        2 => "_vm",
        3 => "_init",
        _ => "",
    };
    match tablespace {
        1663 => format!("base/{database}/{relfilenode}{fork}"),
        1664 => format!("global/{relfilenode}{fork}"),
        t => format!("pg_tblspc/{t}/<version>/{database}/{relfilenode}{fork}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Lsn;
    use chrono::Utc;

    fn server(version: u32, summarize: Option<bool>) -> ServerSide {
        ServerSide {
            version,
            summarize_wal: summarize,
            system_id: SystemId(7),
            timeline: TimeLineId(1),
        }
    }

    fn backup(id: &str, parent: Option<&str>, lsn: u64) -> BackupInfo {
        BackupInfo {
            status: BackupStatus::Done,
            server_version: 170010,
            system_id: SystemId(7),
            has_manifest: true,
            end_lsn: Some(Lsn(lsn)),
            parent: parent.map(str::to_string),
            ..BackupInfo::new(id, "pg", Utc::now())
        }
    }

    fn parent_of(d: Decision) -> String {
        match d {
            Decision::Incremental(p) => p.backup_id,
            Decision::Full(n) => panic!("full: {n:?}"),
        }
    }

    #[test]
    fn relation_paths_name_the_fork_and_the_tablespace() {
        assert_eq!(relation_path(1663, 5, 16387, 0), "base/5/16387");
        assert_eq!(relation_path(1663, 5, 16387, 2), "base/5/16387_vm");
        assert_eq!(relation_path(1664, 0, 1262, 0), "global/1262");
        assert!(relation_path(16400, 5, 16401, 0).starts_with("pg_tblspc/16400/"));
        let q = summary_hazard_query(Lsn(0x1_0000_0028), Lsn(0x2_0000_0000));
        assert!(
            q.contains("'1/28'::pg_lsn") && q.contains("'2/0'::pg_lsn"),
            "{q}"
        );
    }

    #[test]
    fn picks_the_newest_fit_parent_or_the_named_one() {
        let all = vec![
            backup("1", None, 10),
            backup("2", Some("1"), 20),
            BackupInfo {
                system_id: SystemId(8),
                ..backup("3", None, 30)
            },
            BackupInfo {
                status: BackupStatus::Failed,
                ..backup("4", Some("2"), 40)
            },
        ];
        let s = server(170010, Some(true));
        let plan = IncrementalPlan::default();
        assert_eq!(parent_of(decide("pg", &plan, &s, &all).unwrap()), "2");
        let named = IncrementalPlan {
            parent: Some("1".into()),
            ..plan.clone()
        };
        assert_eq!(parent_of(decide("pg", &named, &s, &all).unwrap()), "1");
        let other = IncrementalPlan {
            parent: Some("3".into()),
            ..plan.clone()
        };
        let e = decide("pg", &other, &s, &all).unwrap_err();
        assert!(e.contains("another cluster"), "{e}");
        let gone = IncrementalPlan {
            parent: Some("9".into()),
            ..plan
        };
        assert!(decide("pg", &gone, &s, &all)
            .unwrap_err()
            .contains("no backup '9'"));
    }

    #[test]
    fn refusals_and_fallbacks() {
        let all = vec![backup("1", None, 10)];
        let plan = IncrementalPlan::default();
        // PostgreSQL 15 and 16 build on a backup with a block map, of the same major.
        let e = decide("pg", &plan, &server(150000, None), &all).unwrap_err();
        assert!(e.contains("take a full backup first"), "{e}");
        let mapped = BackupInfo {
            server_version: 150004,
            block_map: Some("ab".into()),
            ..backup("2", None, 20)
        };
        let unmapped = BackupInfo {
            server_version: 150004,
            ..backup("3", None, 30)
        };
        let both = [mapped, unmapped.clone()];
        assert_eq!(
            parent_of(decide("pg", &plan, &server(150010, None), &both).unwrap()),
            "2"
        );
        let named = IncrementalPlan {
            parent: Some("3".into()),
            ..plan.clone()
        };
        let e = decide("pg", &named, &server(150010, None), &[unmapped]).unwrap_err();
        assert!(e.contains("has no block map"), "{e}");
        let e = decide("pg", &plan, &server(170010, Some(false)), &all).unwrap_err();
        assert!(e.contains("summarize_wal = on"), "{e}");
        let fallback = IncrementalPlan {
            fallback_full: true,
            ..plan.clone()
        };
        assert!(matches!(
            decide("pg", &fallback, &server(170010, Some(false)), &all),
            Ok(Decision::Full(Some(_)))
        ));
        // Nothing to build on: refused when asked for, full when configured.
        let e = decide("pg", &plan, &server(170010, Some(true)), &[]).unwrap_err();
        assert!(e.contains("take a full backup first"), "{e}");
        let configured = IncrementalPlan {
            from_config: true,
            full_backup_every: Some(3),
            ..plan
        };
        assert!(matches!(
            decide("pg", &configured, &server(170010, Some(true)), &[]),
            Ok(Decision::Full(Some(_)))
        ));
        // full_backup_every = 3: a chain of 3 gets a new full.
        let chain = vec![
            backup("1", None, 10),
            backup("2", Some("1"), 20),
            backup("3", Some("2"), 30),
        ];
        let s = server(170010, Some(true));
        assert_eq!(
            parent_of(decide("pg", &configured, &s, &chain[..2]).unwrap()),
            "2"
        );
        assert!(matches!(
            decide("pg", &configured, &s, &chain),
            Ok(Decision::Full(Some(_)))
        ));
    }
}
