//! The man page keeps up with the CLI: every verb `pgbk --help` lists has an entry.

mod common;
use common::Pgbk;

#[test]
fn every_verb_is_in_the_man_page() {
    let pg = Pgbk::new();
    let help = pg.ok(&["--help"]);
    let man = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/pgbk.1")).unwrap();
    let verbs: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "help")
        .collect();
    assert!(verbs.len() >= 6, "{help}");
    for v in verbs {
        let roff = format!(".B {}", v.replace('-', "\\-"));
        assert!(
            man.contains(&roff),
            "man/pgbk.1 has no entry for '{v}' (expected a line starting {roff:?})"
        );
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    assert!(
        readme.contains("cargo test -- --test-threads 4")
            && ci.contains("cargo test --locked -- --test-threads")
    );
}
