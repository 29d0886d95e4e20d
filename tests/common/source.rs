//! The streaming source most tests start from: a PostgreSQL 15 cluster with pgbench
//! tables, a pgbk whose server `pg1` streams from it (`immediate_checkpoint = on`),
//! and `receive-wal` running.

use super::{BackgroundPgbk, Cluster, ClusterOptions, Pgbk};

/// A source cluster with pgbench tables, pgbk streaming its WAL.
pub struct StreamingSource {
    pub cluster: Cluster,
    pub pg: Pgbk,
    /// `receive-wal pg1`, streaming.
    pub rw: BackgroundPgbk,
}

impl StreamingSource {
    /// A new cluster initialised with `pgbench -i -s <scale>`, server `pg1` streaming
    /// from it, `receive-wal` running.
    pub fn start(scale: u32) -> StreamingSource {
        let cluster = Cluster::new(ClusterOptions::default());
        cluster.pgbench_init(scale);
        let pg = Pgbk::new();
        pg.streaming_server_with("pg1", &cluster, "immediate_checkpoint = on\n");
        let rw = pg.start_receive_wal("pg1", &cluster);
        StreamingSource { cluster, pg, rw }
    }

    /// Takes a backup, checks it is DONE and returns its id.
    pub fn backup(&self) -> String {
        let info = self.pg.json(&["backup", "pg1"]);
        assert_eq!(info["status"], "DONE", "{info}");
        info["backup_id"].as_str().unwrap().to_string()
    }

    /// Closes the current segment and waits until it is archived.
    pub fn archive_now(&self) {
        self.pg.archive_now("pg1");
    }

    /// Rows in `pgbench_history`.
    pub fn history_count(&self) -> u64 {
        self.cluster
            .psql("select count(*) from pgbench_history")
            .parse()
            .unwrap()
    }

    /// Adds `n` tables of 10,000 rows (360 KiB each, above the bundle limit): as
    /// many objects of their own, so a copy takes a while.
    pub fn add_objects(&self, n: usize) {
        let sql: String = (0..n)
            .map(|i| format!("create table own{i} as select generate_series(1, 10000) g;\n"))
            .collect();
        self.cluster.psql(&sql);
    }
}
