//! The event history: every decision a node makes (membership, quorum, links,
//! fencing, placement, starts, stops, failures, promotions, operator requests),
//! with its time, node and reason, appended as JSON lines to a bounded journal
//! on disk and read back by `baton history`. When the journal reaches its
//! limit it becomes `FILE.1` (replacing the older one) and a new one starts, so
//! the history holds between one and two limits' worth of the latest events.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// The wall clock, in milliseconds since the Unix epoch: when things happened,
/// for the people who read the history (decisions use the monotonic clock).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The size at which the journal is rotated.
pub const LIMIT: u64 = 8 << 20;

/// One decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The node that decided.
    pub node: String,
    /// membership, quorum, link, fence, placement, start, stop, failure,
    /// promotion or operator.
    pub kind: String,
    /// The service it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// What happened and why, as status would say it.
    pub text: String,
}

/// The journal a daemon appends to.
pub struct Journal {
    path: PathBuf,
    file: File,
    size: u64,
    limit: u64,
}

impl Journal {
    /// Open (or create) the journal at `path`, rotating at `limit` bytes.
    pub fn open(path: &Path, limit: u64) -> std::io::Result<Journal> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Journal {
            path: path.to_owned(),
            file,
            size,
            limit,
        })
    }

    /// Append `event`; rotate first when it would pass the limit.
    pub fn append(&mut self, event: &Event) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.limit {
            std::fs::rename(&self.path, rotated(&self.path))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The events of the journal at `path` (the rotated one first), oldest first,
/// from `since_ms` on and of `service` when given. A line that does not parse
/// (a write cut short by a crash) is skipped.
pub fn read(
    path: &Path,
    since_ms: Option<u64>,
    service: Option<&str>,
) -> std::io::Result<Vec<Event>> {
    if !path.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no history at {} (is this the node's history file? `baton run --history-file` sets it)",
                path.display()
            ),
        ));
    }
    let mut events = Vec::new();
    for p in [rotated(path), path.to_owned()] {
        let Ok(file) = File::open(&p) else { continue };
        for line in BufReader::new(file).lines() {
            let Ok(e) = serde_json::from_str::<Event>(&line?) else {
                continue;
            };
            if since_ms.is_some_and(|s| e.at_ms < s)
                || service.is_some_and(|s| e.service.as_deref() != Some(s))
            {
                continue;
            }
            events.push(e);
        }
    }
    Ok(events)
}

/// `at_ms` as the machine's local time with its offset from UTC,
/// `YYYY-MM-DD HH:MM:SS.mmm +HH:MM`.
pub fn local_time(at_ms: u64) -> String {
    let secs = (at_ms / 1000) as libc::time_t;
    // SAFETY: localtime_r fills the tm we own from a valid time_t.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&secs, &mut tm);
        tm
    };
    let offset = tm.tm_gmtoff / 60;
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03} {}{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        at_ms % 1000,
        if offset < 0 { '-' } else { '+' },
        offset.abs() / 60,
        offset.abs() % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at_ms: u64, service: Option<&str>) -> Event {
        Event {
            at_ms,
            node: "n1".into(),
            kind: "placement".into(),
            service: service.map(str::to_owned),
            text: format!("event at {at_ms}"),
        }
    }

    #[test]
    fn the_journal_rotates_at_its_limit_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n1.history");
        let mut j = Journal::open(&path, 400).unwrap();
        for t in 0..20 {
            j.append(&event(t, (t % 2 == 0).then_some("web"))).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 400);
        assert!(rotated(&path).exists());
        let all = read(&path, None, None).unwrap();
        let times: Vec<u64> = all.iter().map(|e| e.at_ms).collect();
        // Between one and two limits' worth: the latest events, in order.
        assert_eq!(times.last(), Some(&19));
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
        assert!(times.len() >= 5, "{times:?}");
        let web = read(&path, Some(10), Some("web")).unwrap();
        assert!(
            web.iter()
                .all(|e| e.at_ms >= 10 && e.service.as_deref() == Some("web"))
        );
        assert_eq!(web.len(), 5);
        // A torn last line (a crash mid-write) is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"at_ms\": 3")
            .unwrap();
        assert_eq!(read(&path, None, None).unwrap().len(), all.len());
        let e = read(&dir.path().join("none"), None, None).unwrap_err();
        assert!(e.to_string().contains("--history-file"), "{e}");
    }
}
