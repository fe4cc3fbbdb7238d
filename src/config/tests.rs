use std::collections::BTreeMap;

use super::raw::default_listen;
use super::*;

#[test]
fn the_example_config_parses_with_its_documented_values() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tern.toml");
    let cfg = Config::load(Path::new(path)).unwrap();
    assert_eq!(cfg.realm, "turn.example.org");
    assert_eq!(cfg.listen_udp.len(), 2);
    assert_eq!(cfg.listen_tcp.len(), 2);
    assert_eq!(cfg.secrets, vec!["change-me".to_owned()]);
    assert_eq!(
        cfg.users,
        vec![("alice".to_owned(), "wonderland".to_owned())]
    );
    assert_eq!(
        cfg.peers_allow,
        vec!["127.0.0.1/32".parse::<IpNet>().unwrap()]
    );
    assert_eq!(cfg.admin_listen, "127.0.0.1:9641".parse().unwrap());
    assert_eq!(cfg.relay_ports, PortRange::new(49152, 65535).unwrap());
    assert_eq!(cfg.limits.default_lifetime, Duration::from_secs(600));
    assert_eq!(cfg.limits.max_lifetime, Duration::from_secs(3600));
}

#[test]
fn example_defaults_match_the_code_defaults() {
    // Every value the example shows as a default must be the real default:
    // strip the lines (and the table) marked as examples, keep the one
    // secret a file needs, and the whole configuration must equal that of
    // a file giving only that secret.
    let mut stripped = String::new();
    for line in example_lines() {
        if !line.example || line.text.starts_with("secrets = ") {
            stripped.push_str(line.text);
            stripped.push('\n');
        }
    }
    let min_text = "[auth]\nsecrets = [\"change-me\"]\n";
    let mut ex = Config::parse(&stripped, "min").unwrap();
    let min = Config::parse(min_text, "min").unwrap();
    assert_eq!(ex.secrets, ["change-me"]);
    ex.source.clone_from(&min.source);
    assert_eq!(format!("{ex:?}"), format!("{min:?}"));
    // And as read, before validation, which drops the tables of features
    // left off (e.g. [tls] and [api] without a listener); where a value
    // sits in the file (its span) is all that may differ.
    let raw = |text: &str| {
        let raw: raw::RawConfig = toml::from_str(text).unwrap();
        let debug = format!("{raw:?}");
        let mut out = String::new();
        for (i, part) in debug.split("span: ").enumerate() {
            let rest = match i {
                0 => part,
                _ => part.split_once(", ").map_or(part, |(_, r)| r),
            };
            out.push_str(rest);
        }
        out
    };
    assert_eq!(raw(&stripped), raw(min_text));
}

#[test]
fn the_embedded_default_serves_with_a_generated_secret() {
    let cfg = Config::embedded_default();
    assert!(cfg.generated_secret);
    assert_eq!(cfg.secrets.len(), 1);
    assert!(cfg.secrets[0].len() >= 32);
    assert!(cfg.listen_best_effort);
    assert_eq!(cfg.listen_udp, default_listen());
    assert_eq!(cfg.listen_tcp, default_listen());
}

fn error_of(text: &str) -> ConfigError {
    Config::parse(text, "t.toml").unwrap_err()
}

#[test]
fn unknown_keys_are_errors_with_file_line_and_key() {
    let e = error_of("[auth]\nsecrets = [\"x\"]\n\n[listen]\nudpp = []\n");
    assert_eq!((e.file.as_str(), e.line), ("t.toml", 5));
    assert_eq!(e.key, "listen.udpp");
    assert!(e.problem.contains("unknown field `udpp`"), "{e}");
    assert!(e.to_string().starts_with("t.toml:5: listen.udpp: "), "{e}");
}

#[test]
fn bad_values_name_their_key_and_line() {
    let e = error_of("[auth]\nsecrets = [\"x\"]\n[peers]\nallow = [\"10.0.0.0/33\"]\n");
    assert_eq!((e.line, e.key.as_str()), (4, "peers.allow[0]"));
    let e = error_of("[auth]\nsecrets = [\"x\"]\n[relay]\nmin-port = 6000\nmax-port = 5000\n");
    assert_eq!((e.line, e.key.as_str()), (4, "relay.min-port"));
    let e = error_of("[auth]\nsecrets = [\"x\"]\n[relay]\naddress-ipv4 = \"::1\"\n");
    assert_eq!((e.line, e.key.as_str()), (4, "relay.address-ipv4"));
    let e = error_of("[auth]\nsecrets = [\"x\"]\n[listen]\nudp = [\"nope\"]\n");
    assert_eq!((e.line, e.key.as_str()), (4, "listen.udp[0]"));
    let e = error_of("[auth]\nsecrets = [\"x\"]\n[allocations]\ndefault-lifetime-seconds = 9000\n");
    assert_eq!(e.key, "allocations.default-lifetime-seconds");
    let e = error_of("[auth]\nsecret-files = [\"/nonexistent/tern-secret\"]\n");
    assert_eq!((e.line, e.key.as_str()), (2, "auth.secret-files"));
    let e = error_of("realm = 5\n");
    assert_eq!((e.line, e.key.as_str()), (1, "realm"));
    let e = error_of(
        "[auth]\nsecrets = [\"x\"]\n[listen]\nproxy-protocol-from = [\"10.0.0.0/8\", \"lb\"]\n",
    );
    assert_eq!(
        (e.line, e.key.as_str()),
        (4, "listen.proxy-protocol-from[1]")
    );
}

#[test]
fn proxy_protocol_sources_are_ranges_and_none_by_default() {
    let min = Config::parse("[auth]\nsecrets = [\"x\"]\n", "t").unwrap();
    assert!(min.proxy_protocol_from.is_empty());
    let text = "[auth]\nsecrets = [\"x\"]\n[listen]\nproxy-protocol-from = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n";
    let cfg = Config::parse(text, "t").unwrap();
    let want: Vec<IpNet> = vec![
        "10.0.0.0/8".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    assert_eq!(cfg.proxy_protocol_from, want);
}

#[test]
fn a_config_without_credentials_is_refused() {
    let e = error_of("realm = \"x\"\n");
    assert_eq!(e.key, "auth");
    assert!(e.problem.contains("stun-only"), "{e}");
}

#[test]
fn nonce_secrets_are_listed_then_read_from_files_and_not_short() {
    let dir = std::env::temp_dir().join(format!("tern-nonce-{}", std::process::id()));
    std::fs::write(&dir, "file-nonce-secret-0123456789\n").unwrap();
    let text = format!(
        "[auth]\nsecrets = [\"x\"]\nnonce-secrets = [\"listed-nonce-secret-0123\"]\nnonce-secret-files = [{:?}]\n",
        dir.display().to_string()
    );
    let cfg = Config::parse(&text, "t").unwrap();
    assert_eq!(
        cfg.nonce_secrets,
        vec!["listed-nonce-secret-0123", "file-nonce-secret-0123456789"]
    );
    let e = error_of("[auth]\nsecrets = [\"x\"]\nnonce-secrets = [\"short\"]\n");
    assert_eq!((e.line, e.key.as_str()), (3, "auth.nonce-secrets"));
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn a_stun_only_server_needs_no_credentials() {
    let cfg = Config::parse("stun-only = true\n", "t").unwrap();
    assert!(cfg.stun_only);
    assert!(cfg.secrets.is_empty() && cfg.users.is_empty());
    let min = Config::parse("[auth]\nsecrets = [\"x\"]\n", "t").unwrap();
    assert!(!min.stun_only);
}

#[test]
fn secret_files_add_one_secret_per_line() {
    let dir = std::env::temp_dir().join(format!("tern-secret-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secrets");
    std::fs::write(&file, "one\n\n  two  \n").unwrap();
    let text = format!(
        "[auth]\nsecrets = [\"zero\"]\nsecret-files = [{:?}]\n",
        file.display().to_string()
    );
    let cfg = Config::parse(&text, "t").unwrap();
    assert_eq!(cfg.secrets, vec!["zero", "one", "two"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn tls_needs_both_files_and_a_good_pair_with_errors_naming_key_and_line() {
    let pki = crate::testing::Pki::new().unwrap();
    let (a, b) = (pki.issue(30, "ec").unwrap(), pki.issue(30, "rsa").unwrap());
    let text = |cert: &Path, key: &Path, extra: &str| {
        format!(
            "[listen]\ntls = [\"127.0.0.1:5349\"]\n[auth]\nsecrets = [\"s\"]\n[tls]\n\
             certificate-file = {:?}\nprivate-key-file = {:?}\n{extra}",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    let cfg = Config::parse(&text(&a.cert, &a.key, ""), "t.toml").unwrap();
    let tls = cfg.tls.unwrap();
    assert_eq!(cfg.listen_tls, vec!["127.0.0.1:5349".parse().unwrap()]);
    assert_eq!(tls.certificate.serial, a.serial);
    // The defaults config/tern.toml documents.
    assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
    assert_eq!((tls.max_handshakes, tls.max_handshakes_per_ip), (1000, 20));

    let e = Config::parse(&text(&a.cert, &b.key, ""), "t.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (7, "tls.private-key-file"), "{e}");
    assert!(
        e.problem.contains("is not the key of the certificate"),
        "{e}"
    );
    let missing = pki.dir.join("gone.pem");
    let e = Config::parse(&text(&missing, &a.key, ""), "t.toml").unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (6, "tls.certificate-file"), "{e}");
    let e = Config::parse(
        &text(&a.cert, &a.key, "handshake-timeout-seconds = 0"),
        "t.toml",
    )
    .unwrap_err();
    assert_eq!(e.key, "tls.handshake-timeout-seconds", "{e}");

    let e = Config::parse(
        "[auth]\nsecrets = [\"s\"]\n[listen]\ntls = [\"0.0.0.0:5349\"]\n",
        "t.toml",
    )
    .unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (4, "listen.tls"), "{e}");
    // The example lists no TLS listener and no files: TLS is off.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tern.toml");
    let ex = Config::load(Path::new(path)).unwrap();
    assert!(ex.tls.is_none() && ex.listen_tls.is_empty());
}

/// The keys a table of the file format takes, as the parser names them
/// when it refuses an unknown one; `None` if `header` is not a table.
fn keys_of(header: &str) -> Option<Vec<String>> {
    let text = format!("{header}\nzzz-unknown = 1\n");
    let e = Config::parse(&text, "probe.toml").err()?.to_string();
    // serde's wording: "expected `a`", "expected `a` or `b`", "expected
    // one of `a`, `b`, `c`".
    let (_, list) = e.split_once("unknown field `zzz-unknown`, expected ")?;
    let list = list.strip_prefix("one of ").unwrap_or(list);
    let keys = list.split(", ").flat_map(|k| k.split(" or "));
    Some(keys.map(|k| k.trim_matches('`').to_owned()).collect())
}

/// Every key of the file format, by table ("" for the top level), found
/// by asking the parser itself, so a key added to the code is found here.
fn format_keys(table: &str, into: &mut Vec<(String, String)>) {
    let header = |t: &str| [format!("[{t}]"), format!("[[{t}]]")];
    let keys = if table.is_empty() {
        keys_of("")
    } else {
        header(table).iter().find_map(|h| keys_of(h))
    };
    for key in keys.unwrap_or_default() {
        let path = if table.is_empty() {
            key.clone()
        } else {
            format!("{table}.{key}")
        };
        if header(&path).iter().any(|h| keys_of(h).is_some()) {
            format_keys(&path, into);
        } else {
            into.push((table.to_owned(), key));
        }
    }
}

type Key = (String, String);

/// How config/tern.toml shows a key.
#[derive(Debug, PartialEq)]
enum Shown {
    /// Set to its default.
    Default(String),
    /// Set to an example (the line or its table is marked "example", or
    /// the line names the default apart).
    Example,
    /// Commented out.
    Commented,
}

/// One line of config/tern.toml, with the table it is in.
struct ExampleLine {
    text: &'static str,
    table: String,
    /// Marked as an example: the line ("# example", or "# default …"
    /// when the value shown is not the default), or its table's header.
    example: bool,
}

/// config/tern.toml line by line: the one reading of its tables and its
/// "example" marks.
fn example_lines() -> Vec<ExampleLine> {
    let (mut table, mut example_table) = (String::new(), false);
    let mut out = Vec::new();
    for text in include_str!("../../config/tern.toml").lines() {
        if text.starts_with('[') {
            let name = text.split_whitespace().next().unwrap_or_default();
            table = name.trim_matches(|c| c == '[' || c == ']').to_owned();
            example_table = text.contains("# example");
        }
        let example = example_table || text.contains("# example") || text.contains("# default");
        let table = table.clone();
        out.push(ExampleLine {
            text,
            table,
            example,
        });
    }
    out
}

/// config/tern.toml's keys under their table.
fn example_keys() -> BTreeMap<Key, Shown> {
    let mut out = BTreeMap::new();
    for line in example_lines() {
        let (text, set) = match line.text.strip_prefix("# ") {
            Some(t) => (t, false),
            None => (line.text, true),
        };
        let Some((key, value)) = text.split_once(" = ").filter(|(key, _)| {
            // A key, not prose such as "0 = one per CPU".
            key.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        }) else {
            continue;
        };
        let shown = if !set {
            Shown::Commented
        } else if line.example {
            Shown::Example
        } else {
            let value = value.split_once("  #").map_or(value, |(v, _)| v);
            Shown::Default(value.trim().to_owned())
        };
        // A set line wins over an example commented out above it.
        let old = out
            .entry((line.table, key.to_owned()))
            .or_insert(Shown::Commented);
        if *old == Shown::Commented {
            *old = shown;
        }
    }
    out
}

/// README's configuration table: each row's keys (`[listen] udp`, `tcp`:
/// the table, then its keys) and its Default cell.
fn readme_rows() -> Vec<(Vec<Key>, String)> {
    let readme = include_str!("../../README.md");
    let rows = crate::testing::markdown_rows(readme, "| Key | Default | Meaning |")
        .expect("README has a configuration table");
    let mut out = Vec::new();
    for cells in rows {
        let mut table = String::new();
        let mut keys = Vec::new();
        for name in crate::testing::ticked(cells[0]) {
            let key = match name.split_once("] ") {
                Some((t, key)) => {
                    table = t.trim_matches(|c| c == '[' || c == ']').to_owned();
                    key
                }
                None => name,
            };
            keys.push((table.clone(), key.to_owned()));
        }
        out.push((keys, cells[1].to_owned()));
    }
    out
}

/// A Default cell's parts, split at ", " outside backticks: `` `49152`,
/// `65535` `` is two, `` `["a", "b"]` `` one.
fn default_parts(cell: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in cell.char_indices() {
        if c == '`' {
            quoted = !quoted;
        } else if !quoted && cell[i..].starts_with(", ") {
            parts.push(&cell[start..i]);
            start = i + 2;
        }
    }
    parts.push(&cell[start..]);
    parts
}

#[test]
fn the_example_config_documents_every_key_the_parser_takes() {
    let mut keys = Vec::new();
    format_keys("", &mut keys);
    assert!(keys.len() > 60, "{keys:?}");
    let shown = example_keys();
    let missing: Vec<_> = keys.iter().filter(|k| !shown.contains_key(*k)).collect();
    assert!(missing.is_empty(), "config/tern.toml lacks {missing:?}");
}

#[test]
fn readme_lists_exactly_the_keys_the_parser_takes() {
    let mut keys = Vec::new();
    format_keys("", &mut keys);
    let keys: std::collections::BTreeSet<_> = keys.into_iter().collect();
    let listed = readme_rows().into_iter().flat_map(|(k, _)| k).collect();
    assert_eq!(
        keys, listed,
        "the parser's keys and README's configuration table"
    );
}

#[test]
fn readme_and_the_example_config_give_the_same_defaults() {
    let example = example_keys();
    let mut compared = 0;
    for (keys, cell) in readme_rows() {
        let parts = default_parts(&cell);
        assert!(
            parts.len() == 1 || parts.len() == keys.len(),
            "README's defaults {cell:?} for {keys:?}"
        );
        for (i, key) in keys.iter().enumerate() {
            let part = parts[i.min(parts.len() - 1)];
            let readme = part.strip_prefix('`').and_then(|p| p.strip_suffix('`'));
            match (readme, &example[key]) {
                (Some(r), Shown::Default(e)) => assert_eq!(r, e, "{key:?}'s default"),
                // The example's own value; its default is checked against
                // the code's in example_defaults_match_the_code_defaults.
                (Some(_), Shown::Example) => continue,
                (Some(r), Shown::Commented) => {
                    panic!("{key:?}: README gives {r}, config/tern.toml shows no default")
                }
                (None, Shown::Default(e)) => {
                    panic!("{key:?} is {part:?} in README, {e} in the example")
                }
                (None, _) => {}
            }
            compared += 1;
        }
    }
    assert!(compared > 40, "{compared} defaults compared");
}
