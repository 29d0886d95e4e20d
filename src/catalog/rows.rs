//! A server's rows replaced at once (`rebuild-catalog`) and counted (`diagnose`).

use super::{BackupRecord, Catalog, CatalogError, WalRecord};
use crate::types::SystemId;
use rusqlite::params;
use std::collections::BTreeMap;

/// What a server's part of the catalog is rebuilt from.
pub struct ServerRows<'a, B: BackupRecord> {
    /// System identifier and segment size, when the repository shows them.
    pub identity: Option<(SystemId, u64)>,
    /// Every backup.json.
    pub backups: &'a [B],
    /// Every archived WAL file.
    pub wal: &'a [WalRecord],
}

impl Catalog {
    /// Replaces a server's identity, backups and WAL rows in one transaction; other
    /// servers' rows and the measurements are left as they are.
    pub fn replace_server_rows(
        &self,
        server: &str,
        rows: &ServerRows<impl BackupRecord>,
    ) -> Result<(), CatalogError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.sql_err(e))?;
        for table in [
            "DELETE FROM servers WHERE name = ?1",
            "DELETE FROM wal_files WHERE server = ?1",
            "DELETE FROM backups WHERE server = ?1",
        ] {
            tx.execute(table, params![server])
                .map_err(|e| self.sql_err(e))?;
        }
        if let Some((id, seg)) = rows.identity {
            self.check_server_identity(server, id, seg)?;
        }
        for b in rows.backups {
            self.upsert_backup(b)?;
        }
        for w in rows.wal {
            self.insert_wal(server, w)?;
        }
        tx.commit().map_err(|e| self.sql_err(e))
    }

    /// Rows per table (servers, wal_files, backups, measurements).
    pub fn row_counts(&self) -> Result<BTreeMap<String, i64>, CatalogError> {
        let mut out = BTreeMap::new();
        for table in ["servers", "wal_files", "backups", "measurements"] {
            let n: i64 = self
                .conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .map_err(|e| self.sql_err(e))?;
            out.insert(table.to_string(), n);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    /// A backup record as small as the catalog allows (the tests below store none).
    #[derive(serde::Serialize, serde::Deserialize)]
    struct NoBackup;

    impl BackupRecord for NoBackup {
        fn server(&self) -> &str {
            ""
        }
        fn backup_id(&self) -> &str {
            ""
        }
        fn name(&self) -> Option<&str> {
            None
        }
        fn status(&self) -> &str {
            ""
        }
        fn begin_time(&self) -> DateTime<Utc> {
            DateTime::default()
        }
    }

    #[test]
    fn replacing_a_servers_rows_leaves_the_others_alone() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        cat.insert_wal(
            "pg1",
            &WalRecord::test_segment("000000010000000000000001", 1),
        )
        .unwrap();
        cat.insert_wal(
            "pg2",
            &WalRecord::test_segment("000000010000000000000001", 1),
        )
        .unwrap();
        cat.check_server_identity("pg1", SystemId(7), 16 << 20)
            .unwrap();
        let rows = [
            WalRecord::test_segment("000000010000000000000005", 5),
            WalRecord::test_segment("000000010000000000000006", 6),
        ];
        cat.replace_server_rows(
            "pg1",
            &ServerRows {
                identity: Some((SystemId(9), 16 << 20)),
                backups: &[] as &[NoBackup],
                wal: &rows,
            },
        )
        .unwrap();
        let names: Vec<String> = cat
            .wal_files("pg1")
            .unwrap()
            .into_iter()
            .map(|w| w.name)
            .collect();
        assert_eq!(
            names,
            ["000000010000000000000005", "000000010000000000000006"]
        );
        assert_eq!(cat.wal_files("pg2").unwrap().len(), 1);
        assert_eq!(
            cat.server_identity("pg1").unwrap(),
            Some((SystemId(9), 16 << 20))
        );
        assert_eq!(cat.row_counts().unwrap()["wal_files"], 3);
    }
}
