//! `[records]`: where allocation records go (off unless `file` is set).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::validate::Errors;

/// `[records]`: where allocation records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsSettings {
    /// The JSON-lines file, appended to.
    pub file: PathBuf,
    /// The `node` field of every record (default: the host name).
    pub node: String,
    /// Interim records for allocations living longer than this.
    pub interim: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawRecords {
    file: Option<PathBuf>,
    node: Option<String>,
    #[serde(default = "default_interim")]
    interim_seconds: Spanned<u64>,
}

impl Default for RawRecords {
    fn default() -> Self {
        // An empty table yields every field's default.
        toml::from_str("").unwrap_or_else(|_| unreachable!())
    }
}

fn default_interim() -> Spanned<u64> {
    Spanned::new(0..0, 300)
}

/// `[records]`: off without a file; an interval of at least 1 s; the
/// node name defaults to the host name.
pub(super) fn records(
    raw: &RawRecords,
    e: &Errors<'_>,
) -> Result<Option<RecordsSettings>, ConfigError> {
    let interim = &raw.interim_seconds;
    if *interim.get_ref() == 0 {
        return Err(e.at(interim, "records.interim-seconds", "must be at least 1"));
    }
    let Some(file) = &raw.file else {
        return Ok(None);
    };
    let node = raw.node.clone().unwrap_or_else(host_name);
    Ok(Some(RecordsSettings {
        file: file.clone(),
        node,
        interim: Duration::from_secs(*interim.get_ref()),
    }))
}

/// This machine's host name ("localhost" if it has none).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
