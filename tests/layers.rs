//! No circles between modules (issue 15): reads `src/` and fails naming the cycle
//! when
//! - the top-level modules (`backup`, `catalog`, `wal`, ...) reference each other in
//!   a circle, counting every `crate::X` in a module's files (`use crate::{a, b}`
//!   groups and paths in doc comments included), or
//! - two files of one of the folders in [`CHECKED_FOLDERS`] reference each other
//!   (`super::x` or `crate::<folder>::x`), a pair in [`KNOWN_PAIRS`] aside.
//!
//! Pure Rust, no cluster: cheap enough to run with every change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Folders whose files must not reference each other in pairs.
const CHECKED_FOLDERS: &[&str] = &["backup", "peer", "verify"];

/// File pairs (folder, a, b) allowed to reference each other; none today.
/// Add one only with the reason it cannot be untangled.
const KNOWN_PAIRS: &[(&str, &str, &str)] = &[];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The identifiers `prefix` is followed by in `text`: `prefix name` and each name
/// of a `prefix {a, b::c}` group (its first segments).
fn referenced(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices(prefix) {
        let rest = &text[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = ident(item.trim_start());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The top-level modules: `src/x.rs` and `src/x/`, but `lib` and `main`.
fn top_modules() -> BTreeSet<String> {
    std::fs::read_dir(src())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_stem()?.to_string_lossy().to_string();
            (p.is_dir() || p.extension().is_some_and(|x| x == "rs")).then_some(name)
        })
        .filter(|n| n != "lib" && n != "main")
        .collect()
}

/// A cycle in `graph` (each node's successors), as the nodes along it, if any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let start = path.iter().position(|p| p == m).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, graph, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n.as_str()) {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_reference_each_other_one_way() {
    let tops = top_modules();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut why: BTreeMap<(String, String), String> = BTreeMap::new();
    for file in rust_files(&src()) {
        let rel = file.strip_prefix(src()).unwrap().to_path_buf();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if !tops.contains(&top) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for to in referenced(&text, "crate::") {
            if to != top && tops.contains(&to) {
                graph.entry(top.clone()).or_default().insert(to.clone());
                why.entry((top.clone(), to))
                    .or_insert_with(|| rel.display().to_string());
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                let file = &why[&(w[0].clone(), w[1].clone())];
                format!("{} -> {} (e.g. {file})", w[0], w[1])
            })
            .collect();
        panic!("top-level modules in a circle:\n  {}", steps.join("\n  "));
    }
}

#[test]
fn files_of_a_folder_do_not_reference_each_other_in_pairs() {
    let mut found = Vec::new();
    for folder in CHECKED_FOLDERS {
        let dir = src().join(folder);
        let mut refs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect();
        let names: BTreeSet<String> = files
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
            .filter(|n| n != "mod")
            .collect();
        for f in &files {
            let me = f.file_stem().unwrap().to_string_lossy().to_string();
            if me == "mod" {
                continue;
            }
            let text = std::fs::read_to_string(f).unwrap();
            let mut to = referenced(&text, "super::");
            to.extend(referenced(&text, &format!("crate::{folder}::")));
            to.retain(|n| n != &me && names.contains(n));
            refs.insert(me, to);
        }
        for (a, to) in &refs {
            for b in to {
                let back = refs.get(b).is_some_and(|t| t.contains(a));
                let known = KNOWN_PAIRS
                    .iter()
                    .any(|&(d, x, y)| d == *folder && ((x, y) == (a, b) || (y, x) == (a, b)));
                if back && a < b && !known {
                    found.push(format!("{folder}/{a}.rs <-> {folder}/{b}.rs"));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "files referencing each other:\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_reference_reader_sees_groups_and_paths() {
    let text = "use crate::{wal::Lsn, repo};\nlet x = crate::catalog::Catalog::open(h);";
    let got = referenced(text, "crate::");
    let want: BTreeSet<String> = ["wal", "repo", "catalog"].map(String::from).into();
    assert_eq!(got, want);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "a"]);
}
