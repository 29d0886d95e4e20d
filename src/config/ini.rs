//! A small reader for the INI dialect of Python's `configparser.ConfigParser`
//! (default options, `BasicInterpolation`), which is what Barman uses for its
//! configuration files. It exists so that a Barman server file reads the same in
//! pgbk: values keep quotes and inline `#`, keys are case-insensitive, indented
//! lines continue a value, and `%(name)s` is substituted at lookup time.
//!
//! Rules, as in CPython's `RawConfigParser._read`:
//! - a line whose stripped text starts with `#` or `;` is a comment (never inline);
//! - `[name]` opens a section (text between the first `[` and the last `]`);
//! - `key = value` or `key: value`, split at the first `=` or `:`; key lower-cased,
//!   key and value trimmed;
//! - a non-comment line indented deeper than the last key or header line continues
//!   the current value (joined with `\n`; blank lines inside a value are kept, trailing
//!   ones dropped);
//! - a section twice in one file, or a key twice in one section of one file, is an error.

use super::ConfigError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The section whose keys apply to every other section.
pub(crate) const DEFAULT_SECTION: &str = "DEFAULT";

/// ConfigParser's `MAX_INTERPOLATION_DEPTH`.
const MAX_INTERPOLATION_DEPTH: usize = 10;

/// One `key = value` as written (before interpolation), with where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The raw value, continuation lines joined with `\n`.
    pub value: String,
    /// The file holding the key line.
    pub file: PathBuf,
    /// The 1-based line number of the key line.
    pub line: usize,
}

/// The keys of one section, lower-cased, each with its raw value.
pub(crate) type Entries = BTreeMap<String, Entry>;

/// One `[name]` section of one file.
#[derive(Clone, Debug)]
pub(crate) struct Section {
    /// The name between the brackets, as written (case-sensitive, like ConfigParser).
    pub name: String,
    /// The file holding the header.
    pub file: PathBuf,
    /// The 1-based line of the header.
    pub line: usize,
    /// The section's own keys.
    pub entries: Entries,
}

/// A parsed file: its `[DEFAULT]` keys and its other sections in file order.
#[derive(Clone, Debug)]
pub(crate) struct IniFile {
    /// Keys of every `[DEFAULT]` section of this file.
    pub defaults: Entries,
    /// The other sections, in the order they appear.
    pub sections: Vec<Section>,
}

/// Where the current value's continuation lines go.
#[derive(Clone, Copy)]
enum Target {
    Default,
    Section(usize),
}

/// Parses `text`, read from `path` (used only in error messages and entries).
pub(crate) fn parse(path: &Path, text: &str) -> Result<IniFile, ConfigError> {
    let syntax = |line: usize, message: String| ConfigError::Syntax {
        file: path.to_path_buf(),
        line,
        message,
    };
    let mut out = IniFile {
        defaults: Entries::new(),
        sections: Vec::new(),
    };
    // The section keys go to, and the key whose value may continue.
    let mut current: Option<Target> = None;
    let mut option: Option<String> = None;
    let mut indent_level = 0usize;
    // Blank lines seen inside the current value; kept only if a continuation follows.
    let mut blank_lines = 0usize;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);

    for (index, raw_line) in text.lines().enumerate() {
        let lineno = index + 1;
        let value = raw_line.trim();
        if value.starts_with('#') || value.starts_with(';') {
            continue;
        }
        if value.is_empty() {
            if current.is_some() && option.is_some() {
                blank_lines += 1;
            }
            continue;
        }
        let indent = raw_line.chars().take_while(|c| c.is_whitespace()).count();
        if let (Some(target), Some(key)) = (current, option.as_ref()) {
            if indent > indent_level {
                let entry = match target {
                    Target::Default => out.defaults.get_mut(key),
                    Target::Section(i) => {
                        out.sections.get_mut(i).and_then(|s| s.entries.get_mut(key))
                    }
                };
                if let Some(entry) = entry {
                    for _ in 0..=blank_lines {
                        entry.value.push('\n');
                    }
                    entry.value.push_str(value);
                }
                blank_lines = 0;
                continue;
            }
        }
        blank_lines = 0;
        indent_level = indent;

        if let Some(after) = value.strip_prefix('[') {
            if let Some(end) = after.rfind(']') {
                let name = &after[..end];
                if name.is_empty() {
                    return Err(syntax(lineno, "empty section name '[]'".to_string()));
                }
                option = None;
                if name == DEFAULT_SECTION {
                    current = Some(Target::Default);
                    continue;
                }
                if let Some(first) = out.sections.iter().find(|s| s.name == name) {
                    return Err(syntax(
                        lineno,
                        format!("section [{name}] is already defined at line {}", first.line),
                    ));
                }
                out.sections.push(Section {
                    name: name.to_string(),
                    file: path.to_path_buf(),
                    line: lineno,
                    entries: Entries::new(),
                });
                current = Some(Target::Section(out.sections.len() - 1));
                continue;
            }
        }

        let Some(split) = value.find(['=', ':']) else {
            return Err(syntax(
                lineno,
                format!("expected '[section]', 'key = value' or a comment, got '{value}'"),
            ));
        };
        let key = value[..split].trim().to_lowercase();
        let val = value[split + 1..].trim();
        if key.is_empty() {
            return Err(syntax(
                lineno,
                format!("missing option name before '{}'", &value[split..split + 1]),
            ));
        }
        let Some(target) = current else {
            return Err(syntax(
                lineno,
                format!("option '{key}' is outside any section (add a [section] header above it)"),
            ));
        };
        let (entries, section_name) = match target {
            Target::Default => (&mut out.defaults, DEFAULT_SECTION),
            Target::Section(i) => match out.sections.get_mut(i) {
                Some(s) => (&mut s.entries, s.name.as_str()),
                None => continue,
            },
        };
        if let Some(first) = entries.get(&key) {
            return Err(syntax(
                lineno,
                format!(
                    "option '{key}' is already set in section [{section_name}] at line {}",
                    first.line
                ),
            ));
        }
        entries.insert(
            key.clone(),
            Entry {
                value: val.to_string(),
                file: path.to_path_buf(),
                line: lineno,
            },
        );
        option = Some(key);
    }
    Ok(out)
}

/// The names `%(name)s` may refer to, searched in order: the section's own keys,
/// then `[DEFAULT]`, then a few fixed values (Barman passes e.g. the server `name`).
pub(crate) struct Scope<'a> {
    /// Key maps searched first to last.
    pub layers: Vec<&'a Entries>,
    /// Fallback values such as `name`.
    pub extra: &'a [(&'a str, String)],
}

impl Scope<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.layers
            .iter()
            .find_map(|l| l.get(key).map(|e| e.value.as_str()))
            .or_else(|| {
                self.extra
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.as_str())
            })
    }
}

/// Expands `%(name)s` and `%%` in `raw` the way `BasicInterpolation` does.
/// The error is a message without location; the caller adds file, line and option.
pub(crate) fn interpolate(raw: &str, scope: &Scope<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    interpolate_some(raw, scope, 1, &mut out)?;
    Ok(out)
}

fn interpolate_some(
    mut rest: &str,
    scope: &Scope<'_>,
    depth: usize,
    out: &mut String,
) -> Result<(), String> {
    if depth > MAX_INTERPOLATION_DEPTH {
        return Err(format!(
            "recursion limit exceeded in value substitution (more than {MAX_INTERPOLATION_DEPTH} levels)"
        ));
    }
    while !rest.is_empty() {
        let Some(p) = rest.find('%') else {
            out.push_str(rest);
            return Ok(());
        };
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        if rest[1..].starts_with('%') {
            out.push('%');
            rest = &rest[2..];
        } else if rest[1..].starts_with('(') {
            // `%\(([^)]+)\)s`
            let close = rest.find(')');
            let name = match close {
                Some(c) if c > 2 && rest[c + 1..].starts_with('s') => &rest[2..c],
                _ => return Err(format!("bad interpolation variable reference '{rest}'")),
            };
            let after = close.map_or(rest.len(), |c| c + 2);
            let key = name.to_lowercase();
            let Some(value) = scope.get(&key) else {
                return Err(format!(
                    "bad value substitution: '%({name})s' names no option of this section or [DEFAULT]"
                ));
            };
            if value.contains('%') {
                interpolate_some(value, scope, depth + 1, out)?;
            } else {
                out.push_str(value);
            }
            rest = &rest[after..];
        } else {
            return Err(format!(
                "'%' must be followed by '%' or '(', found: '{rest}'"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> IniFile {
        match parse(Path::new("t.conf"), text) {
            Ok(f) => f,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match parse(Path::new("t.conf"), text) {
            Ok(f) => panic!("expected an error, got {f:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn val<'a>(f: &'a IniFile, section: &str, key: &str) -> &'a str {
        let s = f
            .sections
            .iter()
            .find(|s| s.name == section)
            .expect("section");
        &s.entries.get(key).expect("key").value
    }

    fn expand(entries: &Entries, defaults: &Entries, key: &str) -> Result<String, String> {
        let scope = Scope {
            layers: vec![entries, defaults],
            extra: &[],
        };
        let raw = &entries
            .get(key)
            .or_else(|| defaults.get(key))
            .expect("key")
            .value;
        interpolate(raw, &scope)
    }

    #[test]
    fn both_delimiters_first_one_wins() {
        let f = parse_ok("[s]\na = b:c\nd: e=f\ng=h\n");
        assert_eq!(val(&f, "s", "a"), "b:c");
        assert_eq!(val(&f, "s", "d"), "e=f");
        assert_eq!(val(&f, "s", "g"), "h");
    }

    #[test]
    fn keys_are_lower_cased_and_trimmed_sections_are_not() {
        let f = parse_ok("[Srv]\n  Conn_Info   =   x y  \n");
        assert_eq!(f.sections[0].name, "Srv");
        assert_eq!(val(&f, "Srv", "conn_info"), "x y");
        let err = parse_err("[s]\nKEY = 1\nkey = 2\n");
        assert_eq!(
            err,
            "t.conf:3: option 'key' is already set in section [s] at line 2"
        );
    }

    #[test]
    fn comments_are_whole_lines_only() {
        let f = parse_ok("# top\n[s]\n  ; indented comment\npassword = a#b;c\n#x = 1\n");
        assert_eq!(val(&f, "s", "password"), "a#b;c");
        assert!(!f.sections[0].entries.contains_key("#x"));
        assert_eq!(f.sections[0].entries.len(), 1);
    }

    #[test]
    fn continuation_lines_join_with_newline() {
        let f = parse_ok("[s]\nopts = a\n  b\n\n\tc\n\n\nnext = 1\n  # comment inside\n  2\n");
        assert_eq!(val(&f, "s", "opts"), "a\nb\n\nc");
        assert_eq!(val(&f, "s", "next"), "1\n2");
    }

    #[test]
    fn continuation_is_relative_to_the_key_indent() {
        let f = parse_ok("[s]\n  a = 1\n  b = 2\n    more\n");
        assert_eq!(val(&f, "s", "a"), "1");
        assert_eq!(val(&f, "s", "b"), "2\nmore");
        // Right after a header there is no value to continue.
        let f = parse_ok("[s]\n   a = 1\n");
        assert_eq!(val(&f, "s", "a"), "1");
    }

    #[test]
    fn empty_value_and_value_starting_on_next_line() {
        let f = parse_ok("[s]\na =\nb =\n  x\n");
        assert_eq!(val(&f, "s", "a"), "");
        assert_eq!(val(&f, "s", "b"), "\nx");
    }

    #[test]
    fn section_header_text_up_to_last_bracket() {
        let f = parse_ok("[s] trailing\nk=v\n[DEFAULT]\nd=1\n");
        assert_eq!(f.sections[0].name, "s");
        assert_eq!(f.defaults.get("d").map(|e| e.value.as_str()), Some("1"));
        assert_eq!(f.defaults.get("d").map(|e| e.line), Some(4));
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        assert_eq!(
            parse_err("[s]\nk = v\njust words\n"),
            "t.conf:3: expected '[section]', 'key = value' or a comment, got 'just words'"
        );
        assert_eq!(
            parse_err("\nk = v\n[s]\n"),
            "t.conf:2: option 'k' is outside any section (add a [section] header above it)"
        );
        assert_eq!(
            parse_err("[s]\n= v\n"),
            "t.conf:2: missing option name before '='"
        );
        assert_eq!(parse_err("[]\n"), "t.conf:1: empty section name '[]'");
        assert_eq!(
            parse_err("[s]\na=1\n[t]\n[s]\n"),
            "t.conf:4: section [s] is already defined at line 1"
        );
        assert_eq!(
            parse_err("[DEFAULT]\na=1\n[s]\n[DEFAULT]\nA=2\n"),
            "t.conf:5: option 'a' is already set in section [DEFAULT] at line 2"
        );
    }

    #[test]
    fn default_section_may_appear_twice() {
        let f = parse_ok("[DEFAULT]\na=1\n[s]\n[DEFAULT]\nb=2\n");
        assert_eq!(f.defaults.len(), 2);
        assert_eq!(f.sections.len(), 1);
    }

    #[test]
    fn crlf_and_bom() {
        let f = parse_ok("\u{feff}[s]\r\nk = v\r\n");
        assert_eq!(val(&f, "s", "k"), "v");
    }

    #[test]
    fn interpolation_from_section_then_default() {
        let f = parse_ok(
            "[DEFAULT]\nhost = h1\nuser = u\n[s]\nhost = h2\nconninfo = host=%(host)s user=%(USER)s\n\
             streaming_conninfo = %(conninfo)s application_name=x\npct = 100%%\n",
        );
        let e = &f.sections[0].entries;
        assert_eq!(
            expand(e, &f.defaults, "conninfo").as_deref(),
            Ok("host=h2 user=u")
        );
        assert_eq!(
            expand(e, &f.defaults, "streaming_conninfo").as_deref(),
            Ok("host=h2 user=u application_name=x")
        );
        assert_eq!(expand(e, &f.defaults, "pct").as_deref(), Ok("100%"));
        // A DEFAULT value referring to a key the section overrides sees the override.
        let f = parse_ok("[DEFAULT]\nurl = %(host)s:5432\nhost = d\n[s]\nhost = s\n");
        assert_eq!(
            expand(&f.sections[0].entries, &f.defaults, "url").as_deref(),
            Ok("s:5432")
        );
    }

    #[test]
    fn interpolation_errors() {
        let f = parse_ok(
            "[s]\na = 50% off\nb = %(missing)s\nc = %(c)s\nd = %(x\ne = %(x)d\nf = %()s\ng = end%\n",
        );
        let e = &f.sections[0].entries;
        let none = Entries::new();
        assert_eq!(
            expand(e, &none, "a"),
            Err("'%' must be followed by '%' or '(', found: '% off'".to_string())
        );
        assert_eq!(
            expand(e, &none, "b"),
            Err("bad value substitution: '%(missing)s' names no option of this section or [DEFAULT]".to_string())
        );
        assert_eq!(
            expand(e, &none, "c"),
            Err("recursion limit exceeded in value substitution (more than 10 levels)".to_string())
        );
        assert_eq!(
            expand(e, &none, "d"),
            Err("bad interpolation variable reference '%(x'".to_string())
        );
        assert_eq!(
            expand(e, &none, "e"),
            Err("bad interpolation variable reference '%(x)d'".to_string())
        );
        assert_eq!(
            expand(e, &none, "f"),
            Err("bad interpolation variable reference '%()s'".to_string())
        );
        assert_eq!(
            expand(e, &none, "g"),
            Err("'%' must be followed by '%' or '(', found: '%'".to_string())
        );
    }

    #[test]
    fn interpolation_depth_limit_is_ten_levels() {
        // a0 -> a1 -> ... : ten nested expansions are fine, eleven are not.
        let mut text = String::from("[s]\n");
        for i in 0..11 {
            text.push_str(&format!("a{i} = %(a{})s\n", i + 1));
        }
        text.push_str("a11 = end\n");
        let f = parse_ok(&text);
        let none = Entries::new();
        assert_eq!(
            expand(&f.sections[0].entries, &none, "a1").as_deref(),
            Ok("end")
        );
        assert!(expand(&f.sections[0].entries, &none, "a0").is_err());
    }

    #[test]
    fn extra_values_are_a_fallback() {
        let f = parse_ok("[s]\ndir = /b/%(name)s\n");
        let extra = [("name", "pg1".to_string())];
        let scope = Scope {
            layers: vec![&f.sections[0].entries],
            extra: &extra,
        };
        assert_eq!(interpolate("/b/%(name)s", &scope).as_deref(), Ok("/b/pg1"));
    }
}
