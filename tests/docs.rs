//! The documentation keeps up with the CLI: every verb `pgbk --help` lists has an
//! entry in the man page and in README's verb table; test-only hooks stay out of
//! the man page.

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
    for v in &verbs {
        let roff = format!(".B {}", v.replace('-', "\\-"));
        assert!(
            man.contains(&roff),
            "man/pgbk.1 has no entry for '{v}' (expected a line starting {roff:?})"
        );
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for v in &verbs {
        let row = format!("| `{v}");
        assert!(
            readme.lines().any(|l| l.starts_with(&row)),
            "README.md's verb table has no row for '{v}' (expected a line starting {row:?})"
        );
    }
    assert!(
        !man.contains("PGBK_TEST_"),
        "man/pgbk.1 documents a test hook (PGBK_TEST_*): they belong in README's developer section"
    );
    assert!(
        man.contains(".SH EXAMPLES"),
        "man/pgbk.1 has no EXAMPLES section"
    );
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    assert!(
        readme.contains("cargo test -- --test-threads 4")
            && ci.contains("cargo test --locked -- --test-threads")
    );
}
