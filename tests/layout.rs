//! The code's shape, as the house style asks:
//! - The module graph is a DAG, layered as `src/lib.rs`'s `# Layout` says:
//!   every `crate::` path in `src/` (outside comments and unit-test files)
//!   is an edge from the top-level module of its file to the module it
//!   names.
//! - Files stay within ~600 lines (a source file's inline unit tests not
//!   counted) and functions within ~70, tests included
//!   (`../shared/STYLE.md`, rule 6).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every Rust source under `dir` (build output and npm packages aside), by
/// its path relative to `dir`, with its text; with `unit_tests` false,
/// unit-test files (`tests.rs`, `tests/`) left out.
fn sources(dir: &Path, unit_tests: bool) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path
                    .file_name()
                    .is_some_and(|n| n != "target" && n != "node_modules")
                {
                    stack.push(path);
                }
                continue;
            }
            // Only Rust sources (src/io/xdp/ also holds the BPF object).
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            let test_file = rel
                .components()
                .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "tests.rs");
            if test_file && !unit_tests {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((rel, text));
        }
    }
    out.sort();
    out
}

/// Top-level module → the top-level modules it uses. (Unit tests may
/// use the test support, so theirs are not edges.)
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (rel, text) in sources(&src, false) {
        let first = rel.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let uses = g.entry(module.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap();
            for part in code.split("crate::").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
        }
    }
    g
}

#[test]
fn modules_form_a_dag_layered_as_documented() {
    let g = graph();
    // Depth-first search for a cycle, reporting it.
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        m: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("module cycle: {} -> {m}", path[at..].join(" -> "));
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_owned());
        for next in g.get(m).into_iter().flatten() {
            visit(g, next, path, done);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        visit(&g, m, &mut Vec::new(), &mut done);
    }
    // The layers: each module may use only modules of lower layers.
    let layers: [&[&str]; 8] = [
        &[
            "wire",
            "policy",
            "ratelimit",
            "notify",
            "request",
            "tls",
            "proxy",
            "unix",
        ],
        &["auth"],
        &["core"],
        &["config", "metrics", "testing"],
        &["io", "admin", "shutdown", "credentials", "records", "ctl"],
        &["api"],
        &["server", "probe"],
        &["cli"],
    ];
    let layer = |m: &str| {
        layers
            .iter()
            .position(|l| l.contains(&m))
            .unwrap_or_else(|| panic!("module {m} is in no layer of this test"))
    };
    for (m, uses) in &g {
        for u in uses {
            assert!(
                layer(u) < layer(m),
                "{m} uses {u}, which is not below it (see src/lib.rs # Layout)"
            );
        }
    }
}

/// The name of the function a (trimmed) line declares, if it does.
fn fn_name(line: &str) -> Option<&str> {
    let mut rest = line;
    if let Some(r) = rest.strip_prefix("pub") {
        // `pub`, `pub(crate)`, `pub(super)`, `pub(in path)`.
        let r = match r.strip_prefix('(') {
            Some(inner) => inner.split_once(')').map_or(r, |(_, after)| after),
            None => r,
        };
        rest = r.trim_start();
    }
    for qualifier in ["const ", "async ", "unsafe ", "extern \"C\" "] {
        rest = rest.strip_prefix(qualifier).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("fn ")?;
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Each function with a body in `lines` (rustfmt'd code), with its length
/// from its signature to the line that closes it at its own indentation.
/// A nested function counts as part of the one around it.
fn functions<'a>(lines: &[&'a str]) -> Vec<(&'a str, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        let body_follows = !trimmed.ends_with(';') && !trimmed.ends_with('}');
        if let Some(name) = fn_name(trimmed).filter(|_| body_follows) {
            let close = format!("{}}}", &lines[i][..lines[i].len() - trimmed.len()]);
            let end = lines[i..]
                .iter()
                .position(|l| *l == close)
                .map_or(lines.len() - 1, |k| i + k);
            out.push((name, end - i + 1));
            i = end;
        }
        i += 1;
    }
    out
}

#[test]
fn files_and_functions_keep_the_house_limits() {
    const FILE_LINES: usize = 600;
    const FUNCTION_LINES: usize = 70;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut over = Vec::new();
    let mut seen = 0;
    for dir in ["src", "bench", "benches", "fuzz", "tests"] {
        for (rel, text) in sources(&root.join(dir), true) {
            let file = Path::new(dir).join(rel);
            let lines: Vec<&str> = text.lines().collect();
            // A file's unit tests, when inline, are its last item.
            let code = lines
                .windows(2)
                .position(|w| w[0] == "#[cfg(test)]" && w[1].starts_with("mod tests"))
                .unwrap_or(lines.len());
            if code > FILE_LINES {
                over.push(format!("{}: {code} lines", file.display()));
            }
            for (name, len) in functions(&lines) {
                seen += 1;
                if len > FUNCTION_LINES {
                    over.push(format!("{}: fn {name}, {len} lines", file.display()));
                }
            }
        }
    }
    // The scanner finds the functions it measures.
    assert!(seen > 1000, "only {seen} functions found");
    assert!(
        over.is_empty(),
        "over the house limits (../shared/STYLE.md: files ~{FILE_LINES} lines, functions ~{FUNCTION_LINES}):\n{}",
        over.join("\n")
    );
}

#[test]
fn the_function_scanner_measures_what_rustfmt_writes() {
    let text = "\
pub(crate) fn outer(a: u8) -> u8 {
    fn inner() {}
    a
}

impl X {
    pub async fn method(
        &self,
    ) {
        work();
    }

    fn declared(&self);
    fn one_line(&self) -> u8 { 1 }
}
unsafe fn last() {
}";
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        functions(&lines),
        vec![("outer", 4), ("method", 5), ("last", 2)]
    );
    assert_eq!(fn_name("publish(x);"), None);
    assert_eq!(fn_name("pub(in crate::io) fn f<T>()"), Some("f"));
}
