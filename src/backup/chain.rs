//! Chains of incremental backups: each incremental names its parent in
//! backup.json, down to a full backup (the root). A chain is restored whole, so
//! nothing may delete a parent while a backup built on it remains.
//!
//! These are pure functions over backup metadata.

use super::{BackupInfo, BackupStatus};

/// A chain that cannot be followed to its root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A parent named in backup.json is not among the server's backups.
    #[error("server '{server}': backup {backup_id} is built on backup {parent}, which is missing: the chain is broken")]
    MissingParent {
        server: String,
        backup_id: String,
        parent: String,
    },
    /// A parent is not DONE.
    #[error("server '{server}': backup {backup_id} is built on backup {parent}, which is {status}: only a chain of DONE backups can be used")]
    ParentNotDone {
        server: String,
        backup_id: String,
        parent: String,
        status: BackupStatus,
    },
    /// The parent links loop (a damaged repository).
    #[error("server '{server}': the parent links of backup {backup_id} loop")]
    Loop { server: String, backup_id: String },
}

/// The backups `info` is built on, its parent first and the full backup last
/// (empty for a full backup). Every one must be present and DONE.
pub fn ancestors<'a>(
    info: &BackupInfo,
    all: &'a [BackupInfo],
) -> Result<Vec<&'a BackupInfo>, ChainError> {
    let mut out: Vec<&BackupInfo> = Vec::new();
    let mut child = info;
    while let Some(parent_id) = &child.parent {
        let parent = all
            .iter()
            .find(|b| &b.backup_id == parent_id)
            .ok_or_else(|| ChainError::MissingParent {
                server: info.server.clone(),
                backup_id: child.backup_id.clone(),
                parent: parent_id.clone(),
            })?;
        if parent.status != BackupStatus::Done {
            return Err(ChainError::ParentNotDone {
                server: info.server.clone(),
                backup_id: child.backup_id.clone(),
                parent: parent_id.clone(),
                status: parent.status,
            });
        }
        if parent.backup_id == info.backup_id || out.iter().any(|b| b.backup_id == *parent_id) {
            return Err(ChainError::Loop {
                server: info.server.clone(),
                backup_id: info.backup_id.clone(),
            });
        }
        out.push(parent);
        child = parent;
    }
    Ok(out)
}

/// The id of the full backup at the root of `info`'s chain, following parent
/// links as far as they go (itself for a full backup).
pub fn root_id(info: &BackupInfo, all: &[BackupInfo]) -> String {
    let mut id = info.backup_id.clone();
    let mut child = info;
    for _ in 0..all.len() {
        let Some(parent) = child
            .parent
            .as_ref()
            .and_then(|p| all.iter().find(|b| &b.backup_id == p))
        else {
            break;
        };
        id = parent.backup_id.clone();
        child = parent;
    }
    id
}

/// Every backup built on `backup_id`, directly or through others, newest first.
pub fn descendants<'a>(backup_id: &str, all: &'a [BackupInfo]) -> Vec<&'a BackupInfo> {
    let mut out: Vec<&BackupInfo> = Vec::new();
    let mut frontier = vec![backup_id.to_string()];
    while let Some(id) = frontier.pop() {
        for b in all
            .iter()
            .filter(|b| b.parent.as_deref() == Some(id.as_str()))
        {
            if b.backup_id != backup_id && !out.iter().any(|o| o.backup_id == b.backup_id) {
                out.push(b);
                frontier.push(b.backup_id.clone());
            }
        }
    }
    out.sort_by(|a, b| b.backup_id.cmp(&a.backup_id));
    out
}

/// How many backups the chain ending at `info` holds (1 for a full backup).
pub fn length(info: &BackupInfo, all: &[BackupInfo]) -> usize {
    1 + ancestors(info, all).map(|a| a.len()).unwrap_or(0)
}

/// Stored bytes of the whole chain ending at `info` (what a restore reads at most).
pub fn stored_bytes(info: &BackupInfo, all: &[BackupInfo]) -> u64 {
    info.stored_bytes
        + ancestors(info, all)
            .map(|a| a.iter().map(|b| b.stored_bytes).sum())
            .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn b(id: &str, parent: Option<&str>, status: BackupStatus) -> BackupInfo {
        BackupInfo {
            status,
            parent: parent.map(str::to_string),
            stored_bytes: 10,
            ..BackupInfo::new(id, "pg", Utc::now())
        }
    }

    #[test]
    fn follows_parents_to_the_root() {
        use BackupStatus::*;
        let all = vec![
            b("1", None, Done),
            b("2", Some("1"), Done),
            b("3", Some("2"), Done),
            b("4", Some("1"), Failed),
            b("5", None, Done),
        ];
        let a: Vec<&str> = ancestors(&all[2], &all)
            .unwrap()
            .iter()
            .map(|b| b.backup_id.as_str())
            .collect();
        assert_eq!(a, ["2", "1"]);
        assert_eq!(root_id(&all[2], &all), "1");
        assert_eq!(root_id(&all[4], &all), "5");
        assert_eq!(length(&all[2], &all), 3);
        assert_eq!(stored_bytes(&all[2], &all), 30);
        let d: Vec<&str> = descendants("1", &all)
            .iter()
            .map(|b| b.backup_id.as_str())
            .collect();
        assert_eq!(d, ["4", "3", "2"]);
        assert!(descendants("3", &all).is_empty());
    }

    #[test]
    fn a_missing_or_unfinished_parent_breaks_the_chain() {
        use BackupStatus::*;
        let all = vec![b("2", Some("1"), Done)];
        assert!(matches!(
            ancestors(&all[0], &all),
            Err(ChainError::MissingParent { .. })
        ));
        let all = vec![b("1", None, Failed), b("2", Some("1"), Done)];
        assert!(matches!(
            ancestors(&all[1], &all),
            Err(ChainError::ParentNotDone { .. })
        ));
        let all = vec![b("1", Some("2"), Done), b("2", Some("1"), Done)];
        assert!(matches!(
            ancestors(&all[1], &all),
            Err(ChainError::Loop { .. })
        ));
    }
}
