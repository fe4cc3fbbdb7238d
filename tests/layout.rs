//! The module graph is a DAG, layered as `src/lib.rs`'s `# Layout` says:
//! every `crate::` path in `src/` (outside comments and unit-test files)
//! is an edge from the top-level module of its file to the module it
//! names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            // Only Rust sources (src/io/xdp/ also holds the BPF object).
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            // Unit tests (`tests.rs`, `tests/`) may use the test support.
            if rel
                .components()
                .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "tests.rs")
            {
                continue;
            }
            let first = rel.components().next().unwrap().as_os_str();
            let module = first.to_str().unwrap().trim_end_matches(".rs").to_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
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
