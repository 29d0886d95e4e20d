//! The catalog's record of restore drills (`drill`): one row per drill with its
//! whole report as JSON (the `drill` module owns the report's shape; the catalog
//! only indexes it by server and time, with the figures `status` and `check` read).

use super::{Catalog, CatalogError};
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

/// One recorded drill.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillRow {
    /// The row's number (the drill's id).
    pub id: i64,
    /// Server name.
    pub server: String,
    /// When the drill started.
    pub started_at: DateTime<Utc>,
    /// The backup restored, if one was chosen.
    pub backup_id: Option<String>,
    /// Whether every check passed.
    pub ok: bool,
    /// The measured RTO (seconds), when the drill got that far.
    pub rto_secs: Option<f64>,
    /// The achieved RPO (seconds), when the drill got that far.
    pub rpo_secs: Option<f64>,
    /// The whole report, as JSON.
    pub report: String,
}

const COLUMNS: &str = "id, server, started_at, backup_id, ok, rto_secs, rpo_secs, report";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DrillRow> {
    let at: String = r.get(2)?;
    Ok(DrillRow {
        id: r.get(0)?,
        server: r.get(1)?,
        started_at: DateTime::parse_from_rfc3339(&at)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default(),
        backup_id: r.get(3)?,
        ok: r.get::<_, i64>(4)? != 0,
        rto_secs: r.get(5)?,
        rpo_secs: r.get(6)?,
        report: r.get(7)?,
    })
}

impl Catalog {
    /// Records a drill; returns its id.
    pub fn insert_drill(&self, d: &DrillRow) -> Result<i64, CatalogError> {
        self.conn
            .execute(
                "INSERT INTO drills (server, started_at, backup_id, ok, rto_secs, rpo_secs, report)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    d.server,
                    d.started_at.to_rfc3339(),
                    d.backup_id,
                    i64::from(d.ok),
                    d.rto_secs,
                    d.rpo_secs,
                    d.report
                ],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// A server's drills, oldest first.
    pub fn drills(&self, server: &str) -> Result<Vec<DrillRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM drills WHERE server = ?1 ORDER BY started_at, id"
            ))
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map(params![server], row)
            .map_err(|e| self.sql_err(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql_err(e))
    }

    /// A server's newest drill.
    pub fn last_drill(&self, server: &str) -> Result<Option<DrillRow>, CatalogError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM drills WHERE server = ?1 ORDER BY started_at DESC, id DESC LIMIT 1"
                ),
                params![server],
                row,
            )
            .optional()
            .map_err(|e| self.sql_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_drills_newest_last() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        assert_eq!(cat.last_drill("pg1").unwrap(), None);
        let mut d = DrillRow {
            id: 0,
            server: "pg1".into(),
            started_at: Utc::now() - chrono::Duration::hours(1),
            backup_id: Some("20260101T000000".into()),
            ok: false,
            rto_secs: None,
            rpo_secs: None,
            report: "{}".into(),
        };
        let first = cat.insert_drill(&d).unwrap();
        d.started_at = Utc::now();
        d.ok = true;
        d.rto_secs = Some(12.5);
        let second = cat.insert_drill(&d).unwrap();
        assert!(second > first);
        let all = cat.drills("pg1").unwrap();
        assert_eq!(all.len(), 2);
        assert!(!all[0].ok);
        let last = cat.last_drill("pg1").unwrap().unwrap();
        assert_eq!(last.id, second);
        assert_eq!(last.rto_secs, Some(12.5));
        assert!(cat.drills("pg2").unwrap().is_empty());
    }
}
