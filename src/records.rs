//! The allocation records file (`[records] file`): JSON lines appended by
//! a thread of its own, fed through a bounded queue the workers push to
//! without waiting (a full queue drops the record and counts it), and
//! reopened on SIGHUP so that logrotate can move the file away.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;

use crate::config::RecordsSettings;
use crate::core::{Family, Record};

/// Records queued before workers drop them.
const QUEUE: usize = 65_536;
/// How often the writer looks for a reopen or a stop while idle.
const POLL: Duration = Duration::from_millis(200);

/// What the writer thread shares with the server.
#[derive(Debug, Default)]
struct Control {
    reopen: AtomicBool,
    stop: AtomicBool,
    /// The path and node to use from the next reopen on.
    next: Mutex<(PathBuf, String)>,
}

/// The running writer.
#[derive(Debug)]
pub struct Writer {
    control: Arc<Control>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Open `settings.file` (appending; created with mode 0640: records
    /// name users and addresses) and start writing; the sender is for
    /// the workers.
    pub fn start(settings: &RecordsSettings) -> std::io::Result<(Self, SyncSender<Record>)> {
        let file = open(&settings.file)?;
        let (tx, rx) = sync_channel(QUEUE);
        let control = Arc::new(Control {
            next: Mutex::new((settings.file.clone(), settings.node.clone())),
            ..Control::default()
        });
        let c = Arc::clone(&control);
        let node = settings.node.clone();
        let thread = std::thread::Builder::new()
            .name("tern-records".into())
            .spawn(move || write_loop(&rx, &c, file, node))?;
        let w = Self {
            control,
            thread: Some(thread),
        };
        Ok((w, tx))
    }

    /// Reopen (SIGHUP): `file` from the next record on, named `node`.
    pub fn reopen(&self, settings: &RecordsSettings) {
        *self
            .control
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            (settings.file.clone(), settings.node.clone());
        self.control.reopen.store(true, Ordering::Relaxed);
    }

    /// Write what is queued, then stop (after the workers have ended).
    pub fn finish(self) {
        drop(self);
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open(path: &PathBuf) -> std::io::Result<BufWriter<File>> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    Ok(BufWriter::new(f))
}

fn write_loop(rx: &Receiver<Record>, c: &Control, mut out: BufWriter<File>, mut node: String) {
    let mut failing = false;
    loop {
        let stop = c.stop.load(Ordering::Relaxed);
        if c.reopen.swap(false, Ordering::Relaxed) {
            let (path, n) = c
                .next
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            match open(&path) {
                Ok(f) => {
                    let _ = out.flush();
                    out = f;
                    node = n;
                    failing = false;
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot reopen the records file; keeping the old one")
                }
            }
        }
        match rx.recv_timeout(POLL) {
            Ok(r) => {
                let mut ok = writeln!(out, "{}", line(&r, &node)).is_ok();
                while let Ok(r) = rx.try_recv() {
                    ok &= writeln!(out, "{}", line(&r, &node)).is_ok();
                }
                ok &= out.flush().is_ok();
                if !ok && !failing {
                    tracing::error!(
                        "cannot write allocation records; dropping them until a reopen works"
                    );
                }
                failing = !ok;
            }
            Err(RecvTimeoutError::Timeout) if stop => break,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = out.flush();
}

/// One record as a JSON line.
pub fn line(r: &Record, node: &str) -> String {
    json!({
        "kind": if r.end.is_some() { "end" } else { "interim" },
        "id": format!("{:x}", r.id),
        "node": node,
        "user": r.user,
        "client": r.client.to_string(),
        "transport": r.transport.label(),
        "family": Family::of(&r.relay).label(),
        "relay": r.relay.to_string(),
        "start": crate::unix::rfc3339(r.start_unix),
        "time": crate::unix::rfc3339(r.time_unix),
        "end": r.end.map(|_| crate::unix::rfc3339(r.time_unix)),
        "reason": r.end.map(|e| e.label()),
        "bytes_to_peer": r.traffic.bytes_to_peer,
        "bytes_to_client": r.traffic.bytes_to_client,
        "packets_to_peer": r.traffic.packets_to_peer,
        "packets_to_client": r.traffic.packets_to_client,
    })
    .to_string()
}
