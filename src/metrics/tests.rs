//! The metrics page against what operators read: README's metrics table
//! and the alert rules shipped in `deploy/prometheus`.

use std::collections::{BTreeMap, BTreeSet};

use super::{Board, render};
use crate::testing::ticked;

const README: &str = include_str!("../../README.md");
const ALERTS: &str = include_str!("../../deploy/prometheus/tern-alerts.yml");

/// One family as the page shows it: its type, and each label's values.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    labels: BTreeMap<String, BTreeSet<String>>,
}

/// A page with every family present: TLS and the XDP fast path on.
fn full_page() -> String {
    let board = Board::new(1);
    board.tls.set_not_after(1_900_000_000);
    board.set_xdp(Some("generic"));
    render(&board)
}

/// The family a series name belongs to: a histogram's series carry a
/// suffix (`_bucket`, `_sum`, `_count`) after the family's name.
fn family_of(name: &str, is_family: impl Fn(&str) -> bool) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s).filter(|n| is_family(n)))
        .unwrap_or(name)
}

/// The `tern_` families of a text exposition, by name.
fn families(page: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            if name.starts_with("tern_") {
                out.entry(name.into()).or_default().kind = kind.into();
            }
            continue;
        }
        if line.starts_with('#') || !line.starts_with("tern_") {
            continue;
        }
        let series = line.rsplit_once(' ').unwrap().0;
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let name = family_of(name, |n| out.contains_key(n));
        let family = out.get_mut(name).unwrap();
        for pair in labels
            .trim_end_matches('}')
            .split(',')
            .filter(|p| !p.is_empty())
        {
            let (label, value) = pair.split_once('=').unwrap();
            if label != "le" {
                let values = family.labels.entry(label.into()).or_default();
                values.insert(value.trim_matches('"').into());
            }
        }
    }
    out
}

/// README's metrics table: each documented name with its row's cells
/// (type, labels).
fn documented() -> BTreeMap<String, (String, String)> {
    let rows = crate::testing::markdown_rows(README, "| Name | Type | Labels | Meaning |")
        .expect("README has a metrics table");
    let mut out = BTreeMap::new();
    for cells in rows {
        for name in ticked(cells[0])
            .into_iter()
            .filter(|n| n.starts_with("tern_"))
        {
            out.insert(name.to_string(), (cells[1].into(), cells[2].into()));
        }
    }
    out
}

/// The values a labels cell spells out for `label` ("`reason`: a, b"),
/// if it does.
fn spelled_out(cell: &str, label: &str) -> Option<BTreeSet<String>> {
    let after = cell.split(&format!("`{label}`: ")).nth(1)?;
    let list = after.split(';').next().unwrap_or(after);
    Some(list.split(", ").map(|v| v.trim().to_string()).collect())
}

#[test]
fn readme_documents_every_family_with_its_type_and_labels() {
    let page = families(&full_page());
    let doc = documented();
    assert!(page.len() > 30, "{} families on the page", page.len());
    let on_page: BTreeSet<_> = page.keys().collect();
    let in_readme: BTreeSet<_> = doc.keys().collect();
    assert_eq!(on_page, in_readme, "the page's families and README's table");
    for (name, family) in &page {
        let (kind, labels) = &doc[name];
        assert_eq!(kind, &family.kind, "{name}'s type in README");
        let named: BTreeSet<&str> = ticked(labels).into_iter().collect();
        for (label, values) in &family.labels {
            assert!(named.contains(label.as_str()), "{name}'s label {label}");
            if let Some(listed) = spelled_out(labels, label) {
                assert_eq!(&listed, values, "{name}'s {label} values in README");
            }
        }
        let expected: BTreeSet<&str> = family.labels.keys().map(String::as_str).collect();
        assert_eq!(
            named, expected,
            "{name}: README names labels it does not have"
        );
    }
}

#[test]
fn the_alert_rules_use_only_metrics_tern_exports() {
    let page = families(&full_page());
    let used: BTreeSet<&str> = ALERTS
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tern_"))
        .collect();
    assert!(used.len() >= 5, "{used:?}");
    for name in used {
        let family = family_of(name, |n| page.contains_key(n));
        assert!(page.contains_key(family), "alert rules use {name}");
    }
}
