//! `filesystem`: a filesystem on a shared disk, mounted on the node that holds
//! the service.
//!
//! start: refuse a device that is already mounted in this node's mount table,
//! check it (`fsck -p`, when `fsck = true`), create the directory, mount(2).
//! stop: unmount; when the mount is busy, kill the processes that keep it busy
//! (in this mount namespace only, PIDs named in the error log), SIGTERM then
//! SIGKILL, and succeed only once it is unmounted. monitor: mounted from that
//! device at that directory and the directory readable; at depth 1 also a write
//! and fsync of a probe file.
//!
//! What it cannot see: a mount on another node. Exclusive use across nodes comes
//! from the `disk-lease` resource before it in the service (and, for ext4, from
//! multi-mount protection: `tune2fs -O mmp`, which makes a second mount fail).

use crate::reading::{required, text};
use baton_plugin_api::{
    Action, ActionSpec, AgentError, CONTRACT_VERSION, Metadata, MonitorState, ParamSpec, ParamType,
    Request, ResourceAgent,
};
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

inventory::submit! {
    crate::BuiltinAgent { name: "filesystem", build: || Box::new(FilesystemAgent) }
}

/// The `filesystem` agent.
pub struct FilesystemAgent;

struct Settings {
    device: PathBuf,
    directory: PathBuf,
    fstype: String,
    flags: libc::c_ulong,
    data: String,
    fsck: bool,
}

/// One line of /proc/self/mountinfo that matters here.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    dev: (u32, u32),
    target: PathBuf,
}

/// `mount -o` options: the generic flags mount(2) takes as bits, the rest as
/// the filesystem's data string.
fn split_options(options: &str) -> (libc::c_ulong, String) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        match o {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" | "defaults" => {}
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Parse mountinfo: `ID PARENT MAJ:MIN ROOT TARGET ...`. Octal escapes in the
/// target (`\040` for a space) are decoded.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let dev = f.nth(2)?;
            let (maj, min) = dev.split_once(':')?;
            let target = f.nth(1)?;
            Some(Mount {
                dev: (maj.parse().ok()?, min.parse().ok()?),
                target: PathBuf::from(unescape(target)),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts() -> Result<Vec<Mount>, AgentError> {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .map_err(|e| AgentError::generic(format!("cannot read /proc/self/mountinfo: {e}")))
}

fn dev_of(device: &Path) -> Result<(u32, u32), AgentError> {
    let meta = fs::metadata(device).map_err(|e| {
        AgentError::invalid_args(format!(
            "device {}: {e} (not present on this node)",
            device.display()
        ))
    })?;
    if !meta.file_type().is_block_device() {
        return Err(AgentError::invalid_args(format!(
            "device {} is not a block device",
            device.display()
        )));
    }
    let rdev = meta.rdev();
    Ok((libc::major(rdev), libc::minor(rdev)))
}

fn c_path(p: &Path) -> Result<CString, AgentError> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| AgentError::misconfigured(format!("{} contains a NUL byte", p.display())))
}

/// Processes of this mount namespace that use anything on device `dev`: their
/// cwd, root, executable, open files or mapped files.
fn users_of(dev: (u32, u32)) -> Vec<i32> {
    let my_ns = fs::metadata("/proc/self/ns/mnt").map(|m| m.ino()).ok();
    let me = std::process::id() as i32;
    let on_dev = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| (libc::major(m.dev()), libc::minor(m.dev())) == dev)
    };
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/mnt"))
                .map(|m| m.ino())
                .ok()
                == my_ns
        })
        .filter(|pid| {
            let base = PathBuf::from(format!("/proc/{pid}"));
            ["cwd", "root", "exe"].iter().any(|l| on_dev(&base.join(l)))
                || fs::read_dir(base.join("fd"))
                    .map(|fds| fds.flatten().any(|fd| on_dev(&fd.path())))
                    .unwrap_or(false)
                || fs::read_to_string(base.join("maps")).is_ok_and(|maps| {
                    maps.lines().any(|l| {
                        l.split_whitespace()
                            .nth(3)
                            .and_then(|d| d.split_once(':'))
                            .and_then(|(a, b)| {
                                Some((
                                    u32::from_str_radix(a, 16).ok()?,
                                    u32::from_str_radix(b, 16).ok()?,
                                ))
                            })
                            == Some(dev)
                    })
                })
        })
        .collect()
}

impl FilesystemAgent {
    fn settings(&self, req: &Request) -> Result<Settings, AgentError> {
        let meta = self.metadata();
        let directory = PathBuf::from(required(&meta, req, "directory")?);
        if !directory.is_absolute() || directory == Path::new("/") {
            return Err(AgentError::misconfigured(format!(
                "directory: {} must be an absolute path other than /",
                directory.display()
            )));
        }
        let (flags, data) = split_options(text(&meta, req, "options").unwrap_or(""));
        let fsck = match required(&meta, req, "fsck")? {
            "true" => true,
            "false" => false,
            other => {
                return Err(AgentError::misconfigured(format!(
                    "fsck: {other:?} is not true or false"
                )));
            }
        };
        Ok(Settings {
            device: PathBuf::from(required(&meta, req, "device")?),
            directory,
            fstype: required(&meta, req, "fstype")?.to_owned(),
            flags,
            data,
            fsck,
        })
    }

    /// Where (if anywhere) `s.device` is mounted in this node's mount table.
    fn mounted(s: &Settings) -> Result<Vec<Mount>, AgentError> {
        let dev = dev_of(&s.device)?;
        Ok(mounts()?.into_iter().filter(|m| m.dev == dev).collect())
    }

    fn check(s: &Settings, deadline: Instant) -> Result<(), AgentError> {
        let fsck = format!("fsck.{}", s.fstype);
        let mut child = std::process::Command::new(&fsck)
            .arg("-p")
            .arg(&s.device)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| {
                AgentError::not_installed(format!("cannot run {fsck}: {e} (or set fsck = false)"))
            })?;
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| AgentError::generic(format!("{fsck}: {e}")))?
            {
                // 0: clean, 1: errors corrected; anything more needs a person.
                return match status.code() {
                    Some(0 | 1) => Ok(()),
                    code => {
                        let out = child.wait_with_output().ok();
                        let said = out
                            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                            .unwrap_or_default();
                        Err(AgentError::generic(format!(
                            "{fsck} -p {} exited with {code:?}: the filesystem needs a manual check ({said})",
                            s.device.display()
                        )))
                    }
                };
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(AgentError::generic(format!(
                    "{fsck} -p {} did not finish before the start deadline",
                    s.device.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Unmount, killing what keeps the mount busy: SIGTERM first, SIGKILL to
    /// whatever is left half a second later.
    fn unmount_busy(s: &Settings, dev: (u32, u32), deadline: Instant) -> Result<(), AgentError> {
        let target = c_path(&s.directory)?;
        let mut termed: Option<Instant> = None;
        let mut killed = false;
        loop {
            // SAFETY: umount2 with a valid NUL-terminated path.
            if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                if !Self::mounted(s)?.iter().any(|m| m.target == s.directory) {
                    return Ok(());
                }
                return Err(AgentError::generic(format!(
                    "cannot unmount {}: {e}",
                    s.directory.display()
                )));
            }
            let users = users_of(dev);
            if Instant::now() >= deadline {
                return Err(AgentError::generic(format!(
                    "{} is still busy at the stop deadline (processes {users:?})",
                    s.directory.display()
                )));
            }
            let signal = match termed {
                None => Some(libc::SIGTERM),
                Some(t) if t.elapsed() > Duration::from_millis(500) => Some(libc::SIGKILL),
                Some(_) => None,
            };
            if let Some(signal) = signal.filter(|_| !users.is_empty()) {
                if signal == libc::SIGTERM || !killed {
                    eprintln!(
                        "filesystem: {} is busy; {} to processes {users:?}",
                        s.directory.display(),
                        if signal == libc::SIGTERM {
                            "SIGTERM"
                        } else {
                            "SIGKILL"
                        }
                    );
                }
                for pid in &users {
                    // SAFETY: signalling processes that hold files on the mount we stop.
                    unsafe {
                        libc::kill(*pid, signal);
                    }
                }
                killed |= signal == libc::SIGKILL;
                termed.get_or_insert_with(Instant::now);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl ResourceAgent for FilesystemAgent {
    fn metadata(&self) -> Metadata {
        let p = ParamSpec::new;
        Metadata {
            name: "filesystem".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract: CONTRACT_VERSION,
            shortdesc: "A filesystem on a shared disk, mounted where its service runs".into(),
            longdesc: "Mounts device on directory with mount(2) after an optional fsck -p; \
                       refuses a device already mounted on this node. stop kills the \
                       processes keeping the mount busy (SIGTERM, then SIGKILL) and succeeds \
                       only once unmounted. monitor checks the mount table and reads the \
                       directory; at depth 1 it writes and fsyncs a probe file. Put a \
                       disk-lease before it: a mount on another node is not visible here."
                .into(),
            parameters: vec![
                p(
                    "device",
                    ParamType::String,
                    true,
                    None,
                    "The block device holding the filesystem",
                ),
                p(
                    "directory",
                    ParamType::String,
                    true,
                    None,
                    "Where to mount it (created when missing)",
                ),
                p(
                    "fstype",
                    ParamType::String,
                    false,
                    Some("ext4"),
                    "Filesystem type (ext4, xfs, ...)",
                ),
                p(
                    "options",
                    ParamType::String,
                    false,
                    None,
                    "Mount options, as for mount -o (noatime,nodev,...)",
                ),
                p(
                    "fsck",
                    ParamType::Boolean,
                    false,
                    Some("true"),
                    "Run fsck.<fstype> -p before mounting",
                ),
            ],
            actions: vec![
                ActionSpec::new(Action::Validate, 5_000),
                ActionSpec::new(Action::Start, 60_000),
                ActionSpec::new(Action::Stop, 30_000),
                ActionSpec::monitor(10_000, 5_000),
            ],
            capabilities: vec![],
        }
    }

    fn validate(&self, req: &Request) -> Result<(), AgentError> {
        let s = self.settings(req)?;
        if req.depth > 0 {
            dev_of(&s.device)?;
        }
        Ok(())
    }

    fn start(&self, req: &Request) -> Result<(), AgentError> {
        let deadline = Instant::now() + req.context.timeout().mul_f64(0.9);
        let s = self.settings(req)?;
        let here = Self::mounted(&s)?;
        if here.iter().any(|m| m.target == s.directory) {
            return Ok(());
        }
        if let Some(other) = here.first() {
            return Err(AgentError::generic(format!(
                "{} is already mounted at {} on this node; not mounting it twice",
                s.device.display(),
                other.target.display()
            )));
        }
        if s.fsck {
            Self::check(&s, deadline)?;
        }
        fs::create_dir_all(&s.directory).map_err(|e| {
            AgentError::permission(format!("cannot create {}: {e}", s.directory.display()))
        })?;
        let (source, target) = (c_path(&s.device)?, c_path(&s.directory)?);
        let fstype = CString::new(s.fstype.as_str())
            .map_err(|_| AgentError::misconfigured("fstype contains a NUL byte"))?;
        let data = CString::new(s.data.as_str())
            .map_err(|_| AgentError::misconfigured("options contain a NUL byte"))?;
        // SAFETY: mount(2) with valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                s.flags,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::ENODEV) => format!(" (the kernel has no {} filesystem)", s.fstype),
                Some(libc::EBUSY) => {
                    " (in use; with ext4 multi-mount protection: mounted on another node)".into()
                }
                Some(libc::EINVAL) => {
                    " (wrong fstype or options, or no filesystem on the device)".into()
                }
                _ => String::new(),
            };
            return Err(AgentError::generic(format!(
                "cannot mount {} on {}: {e}{hint}",
                s.device.display(),
                s.directory.display()
            )));
        }
        Ok(())
    }

    fn stop(&self, req: &Request) -> Result<(), AgentError> {
        let deadline = Instant::now() + req.context.timeout().mul_f64(0.9);
        let s = self.settings(req)?;
        let dev = dev_of(&s.device)?;
        if !Self::mounted(&s)?.iter().any(|m| m.target == s.directory) {
            return Ok(());
        }
        Self::unmount_busy(&s, dev, deadline)
    }

    fn monitor(&self, req: &Request) -> Result<MonitorState, AgentError> {
        let s = self.settings(req)?;
        if !Self::mounted(&s)?.iter().any(|m| m.target == s.directory) {
            return Ok(MonitorState::NotRunning);
        }
        fs::read_dir(&s.directory).map_err(|e| {
            AgentError::generic(format!("cannot read {}: {e}", s.directory.display()))
        })?;
        if req.depth > 0 && s.flags & libc::MS_RDONLY == 0 {
            let probe = s
                .directory
                .join(format!(".baton-probe-{}", req.context.node));
            let written = fs::File::create(&probe)
                .and_then(|mut f| f.write_all(b"baton\n").and_then(|()| f.sync_all()));
            let _ = fs::remove_file(&probe);
            written.map_err(|e| {
                AgentError::generic(format!("cannot write and sync {}: {e}", probe.display()))
            })?;
        }
        Ok(MonitorState::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = split_options("noatime, nodev,data=ordered,ro,commit=5");
        assert_eq!(flags, libc::MS_NOATIME | libc::MS_NODEV | libc::MS_RDONLY);
        assert_eq!(data, "data=ordered,commit=5");
        assert_eq!(split_options(""), (0, String::new()));
    }

    #[test]
    fn mountinfo_lines_give_device_and_target() {
        let text = "36 35 98:0 / /mnt/shared\\040data rw,noatime master:1 - ext4 /dev/loop0 rw\n\
                    37 35 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                Mount {
                    dev: (98, 0),
                    target: "/mnt/shared data".into()
                },
                Mount {
                    dev: (0, 5),
                    target: "/proc".into()
                }
            ]
        );
    }
}
