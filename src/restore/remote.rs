//! The remote sink of `recover --remote-ssh-command`: the destination is on another
//! host, reached over ONE SSH connection (host key checked first). The destination
//! and tablespace locations are checked with remote commands before anything is
//! written; then each root (the data directory, then every tablespace location)
//! receives one tar stream into `tar -x -p -f - -C <root>`, decompressed locally as
//! it is sent, with no local staging copy and nothing but `sh` and `tar` needed on
//! the far side.
//!
//! The plan (files, tablespace relocations, WAL, settings) is the local recovery's:
//! only the writing differs. `postgresql.auto.conf` and `tablespace_map` are
//! rewritten in the stream, the signal file, `backup_manifest` and (without
//! `--get-wal`) the WAL in `pgbk_wal/` are added to it.

use super::combine::{self, Chain};
use super::files::{self, FileStats};
use super::tar_stream::TarStream;
use super::{destination, wal, RecoverPlan, RecoverRequest, RestoreError, WalSource, Written};
use crate::backup::bundle::{self, BundleReader};
use crate::backup::{FileEntry, FileKind};
use crate::error::{IoError, IoResultExt};
use crate::progress::Progress;
use crate::ssh::{shell_quote, ExecOutput, RemoteStdin, SshError, SshSession, SshTarget};
use crate::wal::history_file_name;
use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Refuses what a remote recovery cannot do (before anything else happens).
pub fn check_request(req: &RecoverRequest, target: &SshTarget) -> Result<(), RestoreError> {
    let who = target.display();
    if req.delta {
        return Err(RestoreError::Usage(format!(
            "--delta cannot be used with --remote-ssh-command (yet): recover into an empty directory on {who}"
        )));
    }
    if matches!(req.wal, WalSource::GetWal { .. }) {
        return Err(RestoreError::Usage(format!(
            "--get-wal cannot be used with --remote-ssh-command: its restore_command would need pgbk on {who}; use --no-get-wal (the WAL is copied into the destination)"
        )));
    }
    if !req.destination.is_absolute() {
        return Err(RestoreError::Usage(format!(
            "with --remote-ssh-command the destination must be an absolute path on {who}, not '{}'",
            req.destination.display()
        )));
    }
    if let Some((name, loc)) = req.tablespaces.iter().find(|(_, l)| !l.is_absolute()) {
        return Err(RestoreError::Usage(format!(
            "with --remote-ssh-command --tablespace {name}:{} must name an absolute path on {who}",
            loc.display()
        )));
    }
    Ok(())
}

fn path_str(p: &Path) -> Result<&str, RestoreError> {
    p.to_str().ok_or_else(|| {
        RestoreError::Usage(format!(
            "{}: a remote path must be valid UTF-8",
            p.display()
        ))
    })
}

fn failed(session: &SshSession, what: &str, out: &ExecOutput) -> RestoreError {
    let line = out.stderr_line();
    RestoreError::Ssh(SshError::Channel {
        target: session.target().display(),
        msg: format!(
            "{what} failed (exit status {}){}",
            out.status,
            if line.is_empty() {
                String::new()
            } else {
                format!(": {line}")
            }
        ),
    })
}

fn stream_err(session: &SshSession, what: &str, e: std::io::Error) -> RestoreError {
    RestoreError::Ssh(SshError::Channel {
        target: session.target().display(),
        msg: format!("{what}: {e}"),
    })
}

/// Refuses a destination (or tablespace location) on the remote host that is not a
/// directory, holds a data directory with `postmaster.pid`, is not empty, or cannot
/// be written; nothing is changed.
fn check_remote(session: &SshSession, plan: &RecoverPlan) -> Result<(), RestoreError> {
    let mut roots = vec![path_str(&plan.destination)?.to_string()];
    for t in &plan.tablespaces {
        roots.push(path_str(&t.location)?.to_string());
    }
    let mut script = String::from(
        "c() { if [ -e \"$2\" ] && [ ! -d \"$2\" ]; then echo \"$1 notdir\"; \
         elif [ -e \"$2/postmaster.pid\" ]; then echo \"$1 running\"; \
         elif [ -d \"$2\" ] && [ -n \"$(ls -A \"$2\" 2>/dev/null)\" ]; then echo \"$1 notempty\"; \
         elif [ -d \"$2\" ] && [ ! -w \"$2\" ]; then echo \"$1 notwritable\"; fi; }",
    );
    for (i, r) in roots.iter().enumerate() {
        script.push_str(&format!("; c {i} {}", shell_quote(r)));
    }
    let out = session.exec(&script)?;
    if !out.success() {
        return Err(failed(session, "checking the destination", &out));
    }
    let who = session.target().display();
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().next() else {
        return Ok(());
    };
    let (idx, kind) = line.split_once(' ').unwrap_or((line, ""));
    let idx: usize = idx.parse().unwrap_or(0);
    let place = match idx {
        0 => format!("destination {} on {who}", plan.destination.display()),
        i => match plan.tablespaces.get(i - 1) {
            Some(t) => format!(
                "tablespace location {} (oid {}) on {who}",
                t.location.display(),
                t.oid
            ),
            None => format!("a location on {who}"),
        },
    };
    Err(RestoreError::Refused(match kind {
        "notdir" => format!("{place} exists and is not a directory"),
        "running" => format!("{place} holds a PostgreSQL data directory (postmaster.pid): stop it and empty the directory first"),
        "notempty" => format!("{place} is not empty (--delta is not available remotely)"),
        "notwritable" => format!("{place} is not writable by {}", session.target().user),
        other => format!("{place}: unexpected check result '{other}'"),
    }))
}

/// Runs a recovery into a remote destination.
pub fn execute(
    plan: &RecoverPlan,
    target: &SshTarget,
    progress: &dyn Progress,
) -> Result<Written, RestoreError> {
    let session = SshSession::connect(target)?;
    check_remote(&session, plan)?;
    let mut mkdir = format!(
        "mkdir -p {0} && chmod 700 {0}",
        shell_quote(path_str(&plan.destination)?)
    );
    for t in &plan.tablespaces {
        mkdir.push_str(&format!(
            " && mkdir -p {0} && chmod 700 {0}",
            shell_quote(path_str(&t.location)?)
        ));
    }
    let out = session.exec(&mkdir)?;
    if !out.success() {
        return Err(failed(&session, "creating the destination", &out));
    }
    let chain = plan.chain()?;
    let total = chain
        .as_ref()
        .map_or(plan.info.size_bytes, |c| c.estimated_size(&plan.info));
    progress.start("restore", Some(total));
    let mut written = Written::default();
    let mut done = 0u64;
    let result = (|| {
        let chain = chain.as_ref();
        send_root(
            &session,
            plan,
            chain,
            None,
            &mut written,
            &mut done,
            progress,
        )?;
        for t in &plan.tablespaces {
            send_root(
                &session,
                plan,
                chain,
                Some(t.oid),
                &mut written,
                &mut done,
                progress,
            )?;
        }
        Ok::<(), RestoreError>(())
    })();
    progress.finish();
    result?;
    let mut sync = String::new();
    for r in std::iter::once(&plan.destination).chain(plan.tablespaces.iter().map(|t| &t.location))
    {
        sync.push_str(&format!(
            "sync -f {} 2>/dev/null && ",
            shell_quote(path_str(r)?)
        ));
    }
    sync.push_str("true || sync");
    let out = session.exec(&sync)?;
    if !out.success() {
        return Err(failed(&session, "sync", &out));
    }
    Ok(written)
}

type Sink<'a> = TarStream<BufWriter<RemoteStdin<'a>>>;

/// One tar stream: the data directory (`tablespace` None, with the added files) or
/// one tablespace location.
fn send_root(
    session: &SshSession,
    plan: &RecoverPlan,
    chain: Option<&Chain>,
    tablespace: Option<u32>,
    written: &mut Written,
    done: &mut u64,
    progress: &dyn Progress,
) -> Result<(), RestoreError> {
    let root = match tablespace {
        None => &plan.destination,
        Some(oid) => match plan.tablespaces.iter().find(|t| t.oid == oid) {
            Some(t) => &t.location,
            None => return Ok(()),
        },
    };
    let cmd = format!(
        "tar -x -p --no-same-owner -f - -C {}",
        shell_quote(path_str(root)?)
    );
    let stdin = session.exec_stdin(&cmd)?;
    let mut tar: Sink = TarStream::new(BufWriter::with_capacity(256 * 1024, stdin));
    let sent = (|| {
        let mut extra = Extras::default();
        // Bundled files follow one another: one read serves the rest of a bundle.
        let mut bundles = BundleReader::new(&plan.dir, bundle::READ_AHEAD);
        for e in plan.dir.files()? {
            let e = e?;
            if e.tablespace != tablespace {
                continue;
            }
            send_entry(
                plan,
                chain,
                &e,
                &mut tar,
                &mut extra,
                &mut written.files,
                done,
                &mut bundles,
            )?;
            progress.set(*done);
        }
        if tablespace.is_none() {
            send_extras(plan, &mut tar, &extra, written, done, progress)?;
        }
        Ok::<(), RestoreError>(())
    })();
    let what = format!("tar -x into {}", root.display());
    match sent {
        Ok(()) => {
            let w = tar.finish().map_err(|e| stream_err(session, &what, e))?;
            let stdin = w
                .into_inner()
                .map_err(|e| stream_err(session, &what, e.into_error()))?;
            let out = stdin.finish()?;
            if !out.success() {
                return Err(failed(session, &what, &out));
            }
            Ok(())
        }
        Err(err) => {
            // If the far side failed first, its own message says more than ours.
            // Whatever was buffered is dropped: the stream is being abandoned.
            let (stdin, _) = tar.into_inner().into_parts();
            if let Ok(out) = stdin.finish() {
                if !out.success() && !out.stderr_line().is_empty() {
                    return Err(failed(session, &what, &out));
                }
            }
            Err(match err {
                RestoreError::Io(IoError { path, source }) if path.as_os_str().is_empty() => {
                    stream_err(session, &what, source)
                }
                e => e,
            })
        }
    }
}

/// Files of the data directory that the stream rewrites or adds.
#[derive(Default)]
struct Extras {
    auto_conf: bool,
    standard_dirs: HashSet<String>,
}

/// The store's failure as a refusal naming the server (never "not found").
fn store_refused(
    plan: &RecoverPlan,
) -> impl Fn(crate::repo::store::StoreError) -> RestoreError + '_ {
    move |e| RestoreError::Refused(format!("server '{}': {e}", plan.repo.server()))
}

fn io_stream(e: std::io::Error) -> RestoreError {
    RestoreError::Io(IoError::new(PathBuf::new(), e))
}

#[allow(clippy::too_many_arguments)]
fn send_entry(
    plan: &RecoverPlan,
    chain: Option<&Chain>,
    e: &FileEntry,
    tar: &mut Sink,
    extra: &mut Extras,
    stats: &mut FileStats,
    done: &mut u64,
    bundles: &mut BundleReader,
) -> Result<(), RestoreError> {
    let info = &plan.info;
    let rel = files::safe_relative(&e.path)
        .ok_or_else(|| files::corrupt(info, format!("unsafe path '{}' in files.jsonl", e.path)))?;
    if e.tablespace.is_none() && e.kind != FileKind::Symlink && files::through_tablespace_link(&rel)
    {
        return Err(files::corrupt(
            info,
            format!("'{}' would be written through a tablespace link", e.path),
        ));
    }
    let name = rel
        .to_str()
        .ok_or_else(|| files::corrupt(info, format!("path '{}' is not UTF-8", e.path)))?;
    let top = e.tablespace.is_none();
    match e.kind {
        FileKind::Dir => {
            let mode = if name.is_empty() && top {
                if e.mode & 0o7777 == 0o750 {
                    0o750
                } else {
                    0o700
                }
            } else {
                e.mode & 0o7777
            };
            if top && files::STANDARD_DIRS.contains(&name) {
                extra.standard_dirs.insert(name.to_string());
            }
            tar.dir(name, mode, e.mtime).map_err(io_stream)?;
            stats.dirs += 1;
        }
        FileKind::Symlink => {
            let parts: Vec<&str> = name.split('/').collect();
            let location = match (top, parts.as_slice()) {
                (true, ["pg_tblspc", oid]) => oid
                    .parse::<u32>()
                    .ok()
                    .and_then(|o| plan.tablespaces.iter().find(|t| t.oid == o)),
                _ => None,
            };
            let Some(t) = location else {
                tracing::warn!(
                    "backup {}: symbolic link '{}' is not a tablespace link of the backup; not restored",
                    info.backup_id,
                    e.path
                );
                return Ok(());
            };
            tar.symlink(name, path_str(&t.location)?, e.mtime)
                .map_err(io_stream)?;
            stats.links += 1;
        }
        FileKind::File if name.is_empty() => {
            return Err(files::corrupt(
                info,
                format!("file entry '{}' has no name", e.path),
            ))
        }
        FileKind::File => {
            let mode = e.mode & 0o7777;
            if let Some(c) = chain {
                let restored = combine::reconstructed_path(name);
                if c.drops(e.tablespace, restored.as_deref().unwrap_or(name)) {
                    return Ok(());
                }
            }
            if let Some((chain, target)) = chain.zip(combine::reconstructed_path(name)) {
                // Rebuilt into an unnamed local file first: its blocks come in any
                // order, a tar stream takes them in one.
                let scratch = tempfile::tempfile().map_err(io_stream)?;
                let size = chain.rebuild(&plan.dir, info, e, &scratch, Path::new(&target))?;
                tar.file(&target, mode, e.mtime, size).map_err(io_stream)?;
                let mut r = std::io::BufReader::new(scratch);
                std::io::Seek::rewind(&mut r).map_err(io_stream)?;
                std::io::copy(&mut r, tar).map_err(io_stream)?;
                stats.files_written += 1;
                stats.bytes_written += size;
                *done += size;
                return Ok(());
            }
            match (top, name) {
                (true, "recovery.signal" | "standby.signal") => return Ok(()),
                (true, "backup_label") if chain.is_some() => {
                    let mut buf = Vec::with_capacity(e.size as usize);
                    let (size, sum) = files::copy_entry(&plan.dir, info, e, &mut buf, bundles)?;
                    files::check_content(info, e, size, &sum)?;
                    let label = combine::label_without_incremental(&buf);
                    tar.small_file(name, mode, e.mtime, &label)
                        .map_err(io_stream)?;
                }
                (true, "postgresql.auto.conf" | "tablespace_map") => {
                    let mut buf = Vec::with_capacity(e.size as usize);
                    let (size, sum) = files::copy_entry(&plan.dir, info, e, &mut buf, bundles)?;
                    files::check_content(info, e, size, &sum)?;
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let data = if name == "tablespace_map" {
                        destination::relocated_map(plan, &text).unwrap_or(text)
                    } else {
                        extra.auto_conf = true;
                        destination::auto_conf_with_settings(plan, Some(text))
                    };
                    tar.small_file(name, mode, e.mtime, data.as_bytes())
                        .map_err(io_stream)?;
                }
                _ => {
                    tar.file(name, mode, e.mtime, e.size).map_err(io_stream)?;
                    let (size, sum) = files::copy_entry(&plan.dir, info, e, tar, bundles)?;
                    files::check_content(info, e, size, &sum)?;
                }
            }
            stats.files_written += 1;
            stats.bytes_written += e.size;
            *done += e.size;
        }
    }
    Ok(())
}

/// What the data directory's stream adds after the backup's files: the folders a
/// base backup leaves out, the WAL (copy mode), `backup_manifest`, the settings and
/// the signal file.
fn send_extras(
    plan: &RecoverPlan,
    tar: &mut Sink,
    extra: &Extras,
    written: &mut Written,
    done: &mut u64,
    progress: &dyn Progress,
) -> Result<(), RestoreError> {
    let now = chrono::Utc::now().timestamp();
    for d in files::STANDARD_DIRS {
        if !extra.standard_dirs.contains(*d) {
            tar.dir(d, 0o700, now).map_err(io_stream)?;
        }
    }
    if let Some(w) = &plan.wal {
        tar.dir(wal::WAL_DIR, 0o700, now).map_err(io_stream)?;
        for (seg, sum) in &w.segments {
            let key = plan.repo.segment_key(seg);
            let src = PathBuf::from(plan.repo.store().describe(&key));
            let name = format!("{}/{}", wal::WAL_DIR, seg.name());
            let object = plan.repo.store().get(&key).map_err(store_refused(plan))?;
            tar.file(&name, 0o600, now, seg.seg_size)
                .map_err(io_stream)?;
            let (n, have) =
                crate::repo::compress::decompress_reader_to(object, &mut *tar).at(&src)?;
            if !have.eq_ignore_ascii_case(sum) || n != seg.seg_size {
                return Err(RestoreError::Corrupt(format!(
                    "{}: decompresses to {n} bytes with checksum {have}, the catalog records {sum}",
                    src.display()
                )));
            }
            written.wal_files += 1;
            written.wal_bytes += n;
            *done += n;
            progress.set(*done);
        }
        for tli in &w.histories {
            let Some(data) = plan.repo.read_history(*tli).map_err(store_refused(plan))? else {
                continue;
            };
            let name = format!("{}/{}", wal::WAL_DIR, history_file_name(*tli));
            tar.small_file(&name, 0o600, now, data.as_bytes())
                .map_err(io_stream)?;
            written.wal_files += 1;
            written.wal_bytes += data.len() as u64;
        }
    }
    // The manifest is streamed (it has a line per file: large for a large cluster).
    let manifest_key = plan.dir.key("backup_manifest");
    let manifest = PathBuf::from(plan.dir.describe("backup_manifest"));
    // An incremental backup's manifest lists its INCREMENTAL.* files: not sent.
    let stat = match plan.info.manifest_fits_restore() {
        false => None,
        true => plan
            .dir
            .store()
            .stat(&manifest_key)
            .map_err(store_refused(plan))?,
    };
    if let Some(meta) = stat {
        let mut f = plan
            .dir
            .store()
            .get(&manifest_key)
            .map_err(store_refused(plan))?;
        tar.file("backup_manifest", 0o600, now, meta.size)
            .map_err(io_stream)?;
        let n = std::io::copy(&mut f, tar).at(&manifest)?;
        if n != meta.size {
            return Err(RestoreError::Io(IoError::new(
                &manifest,
                std::io::Error::other("changed size while being sent"),
            )));
        }
        written.manifest = true;
    }
    if !extra.auto_conf {
        let text = destination::auto_conf_with_settings(plan, None);
        tar.small_file("postgresql.auto.conf", 0o600, now, text.as_bytes())
            .map_err(io_stream)?;
    }
    let (signal, _) = destination::signal_files(plan);
    tar.small_file(signal, 0o600, now, b"").map_err(io_stream)?;
    written.signal_file = signal.to_string();
    tar.flush().map_err(io_stream)?;
    Ok(())
}
