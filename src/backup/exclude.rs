//! What a base backup leaves out of a data directory (basebackup.c's lists), for
//! the backups pgbk lists the files of itself: rsync over SSH and the SQL path.

/// Directories whose contents a base backup leaves out, keeping the directory
/// itself (basebackup.c's `excludeDirContents`, plus `pg_wal`): recreated,
/// zeroed or useless at startup.
pub const EMPTY_DIRS: [&str; 8] = [
    "pg_wal",
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Where the tablespace links are: what is under it is taken per tablespace.
pub const TABLESPACE_LINKS: &str = "pg_tblspc";

/// Files of the data directory's top level a base backup leaves out
/// (basebackup.c's `excludeFiles`; `backup_label` and `tablespace_map` come from
/// pg_backup_stop instead).
const EXCLUDED_TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "backup_manifest",
    "current_logfiles",
    "current_logfiles.tmp",
    "postgresql.auto.conf.tmp",
];

/// Whether a temporary relation file (`t<backend>_<relfilenode>[_fork][.seg]`).
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && rest.as_bytes().get(digits) == Some(&b'_')
}

/// Whether a base backup leaves this path out. `tablespace` tells whether the path
/// is relative to a tablespace location rather than the data directory.
pub fn excluded(path: &str, tablespace: bool) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    if !tablespace {
        if parts.len() >= 2 && (EMPTY_DIRS.contains(&parts[0]) || parts[0] == TABLESPACE_LINKS) {
            return true;
        }
        if parts.len() == 1 && EXCLUDED_TOP_FILES.contains(&parts[0]) {
            return true;
        }
    }
    parts.iter().any(|p| p.starts_with("pgsql_tmp"))
        || parts
            .last()
            .is_some_and(|name| name.starts_with("pg_internal.init") || is_temp_relation(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_out_what_a_base_backup_leaves_out() {
        for p in [
            "pg_wal/000000010000000000000001",
            "pg_wal/archive_status",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "tablespace_map",
            "pg_replslot/s/state",
            "pg_stat_tmp/global.stat",
            "base/5/pg_internal.init",
            "global/pg_internal.init.123",
            "base/pgsql_tmp/pgsql_tmp12.0",
            "base/pgsql_tmp",
            "base/5/t3_16384",
            "pg_tblspc/16390",
            "current_logfiles",
        ] {
            assert!(excluded(p, false), "{p}");
        }
        for p in [
            "pg_wal",
            "pg_replslot",
            "pg_tblspc",
            "base/5/16384",
            "base/5/16384_fsm",
            "global/pg_control",
            "postgresql.auto.conf",
            "PG_VERSION",
            "base/5/t_x",
            "log/postmaster.pid",
        ] {
            assert!(!excluded(p, false), "{p}");
        }
        assert!(!excluded("pg_wal/x", true));
        assert!(excluded("PG_15_1/5/pgsql_tmp/x", true));
    }
}
