//! The daemon's local control socket: a Unix stream socket (mode 0600, peers
//! checked with `SO_PEERCRED`: root or the daemon's own user only) that serves
//! `baton status`, `baton move` and `baton clear`. One JSON request line, one JSON
//! reply line per connection.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// What a client asks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ControlRequest {
    /// The node's status.
    Status,
    /// Move a service to a node, for a while (`for_ms`) or until cleared.
    Move {
        /// The service's name.
        service: String,
        /// The target node's name.
        to: String,
        /// How long the move holds; `None`: until cleared or the target leaves.
        for_ms: Option<u64>,
    },
    /// Promote a promotable service's replica on a node (`force`: even if it
    /// lacks acknowledged writes).
    Promote {
        /// The service's name.
        service: String,
        /// The node whose replica to promote.
        on: String,
        /// Promote even a replica that is behind the acknowledged position.
        force: bool,
    },
    /// End a move taken on this node.
    Unmove {
        /// The service's name.
        service: String,
    },
    /// Forget a service's failures, ban and block here; retry a failed stop.
    Clear {
        /// The service's name.
        service: String,
    },
    /// Put a node in standby (it runs nothing) or take it out; `None`: this
    /// node. Cluster-wide, kept across restarts.
    Standby {
        /// The node's name.
        node: Option<String>,
        /// In standby (`true`) or out of it.
        on: bool,
    },
    /// Put a service in maintenance (baton neither monitors, starts nor
    /// stops it) or release it. Cluster-wide, kept across restarts.
    Maintenance {
        /// The service's name.
        service: String,
        /// In maintenance (`true`) or released.
        on: bool,
    },
    /// Read the config file again and stage it: the cluster switches to it
    /// once every node has staged it (`dry_run`: only say what it would do).
    Reload {
        /// Only show the plan; stage nothing.
        dry_run: bool,
    },
    /// A request refused before it reached the daemon (the console's
    /// authentication): recorded in the history, nothing else.
    Refused {
        /// Why it was refused.
        why: String,
    },
}

impl ControlRequest {
    /// The service a request concerns.
    pub fn service(&self) -> Option<&str> {
        match self {
            ControlRequest::Status
            | ControlRequest::Refused { .. }
            | ControlRequest::Reload { .. }
            | ControlRequest::Standby { .. } => None,
            ControlRequest::Move { service, .. }
            | ControlRequest::Promote { service, .. }
            | ControlRequest::Unmove { service }
            | ControlRequest::Clear { service }
            | ControlRequest::Maintenance { service, .. } => Some(service),
        }
    }
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// What was done, or why not.
    pub message: String,
    /// The status, for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::node::status::Status>,
    /// A reload's plan, for `reload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<serde_json::Value>,
}

impl ControlReply {
    /// A refusal.
    pub fn refused(message: impl Into<String>) -> ControlReply {
        ControlReply {
            ok: false,
            message: message.into(),
            status: None,
            plan: None,
        }
    }
}

/// A request waiting for the main loop: what is asked, who asks (recorded in
/// the history with each action), and where to send the reply.
pub struct Pending {
    /// The request.
    pub request: ControlRequest,
    /// Who asks, in words.
    pub who: String,
    /// Where the reply goes.
    pub reply: mpsc::Sender<ControlReply>,
}

/// Where requests for the main loop go, and how to wake it.
#[derive(Clone)]
pub struct Asker {
    tx: mpsc::Sender<Pending>,
    bell: crate::node::wake::Bell,
}

impl Asker {
    /// Ask the main loop and wait up to 5 s for its answer.
    pub fn ask(&self, request: ControlRequest, who: String) -> ControlReply {
        let (reply, reply_rx) = mpsc::channel();
        let pending = Pending {
            request,
            who,
            reply,
        };
        if self.tx.send(pending).is_err() {
            return ControlReply::refused("the daemon is stopping");
        }
        self.bell.ring();
        reply_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| ControlReply::refused("the daemon did not answer within 5 s"))
    }
}

/// A channel for requests to the main loop: the asking side (the control
/// socket and the console hold clones) and the main loop's side.
pub fn channel(bell: crate::node::wake::Bell) -> (Asker, mpsc::Receiver<Pending>) {
    let (tx, rx) = mpsc::channel();
    (Asker { tx, bell }, rx)
}

/// The default socket of node `node`.
pub fn default_socket(node: &str) -> PathBuf {
    PathBuf::from(format!("/run/baton/{node}.sock"))
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the length we pass.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

/// Bind `path` (refusing if another daemon answers there) and serve it on a
/// thread; requests go to the main loop through `asker`.
pub fn serve(path: &Path, asker: Asker) -> anyhow::Result<()> {
    if UnixStream::connect(path).is_ok() {
        bail!(
            "control socket {}: another baton daemon answers there; stop it, or give this one --socket",
            path.display()
        );
    }
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("control socket directory {}", dir.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("control socket {}: cannot bind", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("control socket {}: chmod 0600", path.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let asker = asker.clone();
                // One thread per connection, so a stuck client blocks nobody.
                std::thread::spawn(move || handle(stream, &asker, me));
            }
        })?;
    Ok(())
}

fn handle(mut stream: UnixStream, asker: &Asker, me: u32) {
    let reply = match peer_uid(&stream) {
        Some(uid) if uid == 0 || uid == me => read_and_ask(&stream, asker, uid),
        Some(uid) => ControlReply::refused(format!(
            "uid {uid} may not control this daemon; run as root"
        )),
        None => ControlReply::refused("cannot read the peer's credentials"),
    };
    if let Ok(mut line) = serde_json::to_vec(&reply) {
        line.push(b'\n');
        let _ = stream.write_all(&line);
    }
}

fn read_and_ask(stream: &UnixStream, asker: &Asker, uid: u32) -> ControlReply {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    // Requests are small: read at most 64 KiB.
    let mut reader = BufReader::new(std::io::Read::take(stream, 64 * 1024));
    if let Err(e) = reader.read_line(&mut line) {
        return ControlReply::refused(format!("reading the request: {e}"));
    }
    let req: ControlRequest = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            return ControlReply::refused(format!(
                "not a control request ({e}); expected one JSON line like {{\"op\":\"status\"}}"
            ));
        }
    };
    let who = if uid == 0 {
        "root on the control socket".to_string()
    } else {
        format!("uid {uid} on the control socket")
    };
    asker.ask(req, who)
}

/// Send `req` to the daemon at `path` and return its reply.
pub fn ask(path: &Path, req: &ControlRequest) -> anyhow::Result<ControlReply> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "cannot reach the daemon's control socket {} (is `baton run` running on this node? give --socket when it uses another path)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .with_context(|| format!("reading the reply from {}", path.display()))?;
    serde_json::from_str(reply.trim())
        .with_context(|| format!("{}: the reply is not JSON: {reply:?}", path.display()))
}

/// Parse a `--for` duration: `90s`, `10m`, `2h`, `500ms`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = crate::cluster::script::parse_duration(text)?;
    if d.is_zero() {
        return Err(format!(
            "{text:?}: a move for no time; leave out --for to move until cleared"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_name_the_fix() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").unwrap_err().contains("e.g. 90s"));
        assert!(parse_duration("3w").unwrap_err().contains("unknown unit"));
        assert!(
            parse_duration("0s")
                .unwrap_err()
                .contains("leave out --for")
        );
        assert!(parse_duration("100d").unwrap_err().contains("too long"));
    }

    #[test]
    fn requests_round_trip_as_one_json_line() {
        let r = ControlRequest::Move {
            service: "db".into(),
            to: "n2".into(),
            for_ms: Some(60_000),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"op":"move","service":"db","to":"n2","for_ms":60000}"#
        );
        assert_eq!(serde_json::from_str::<ControlRequest>(&text).unwrap(), r);
    }
}
