//! Running Oracle's command-line tools as the Oracle owner, with the
//! resource's tags, bounded in time and output.

use baton_plugin_api::{AgentError, ErrorClass, Request, process, service};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where the tools are and whom they run as.
#[derive(Clone, Debug)]
pub struct Oracle {
    pub home: PathBuf,
    pub sid: String,
    pub uid: u32,
    pub gid: u32,
    pub user: String,
}

/// What a tool printed and how it ended.
#[derive(Debug)]
pub struct Run {
    /// stdout and stderr together.
    pub output: String,
    /// The exit code; `None` when it was killed at its deadline.
    pub code: Option<i32>,
}

impl Oracle {
    /// `sqlplus -S -L /nolog`, connected `/ as sysdba`, running `sql` (lines).
    pub fn sqlplus(&self, req: &Request, sql: &str, timeout: Duration) -> Result<Run, AgentError> {
        let script = format!(
            "connect / as sysdba\nset feedback off\nset heading off\nset pagesize 0\n{sql}\nexit\n"
        );
        self.run(
            req,
            "sqlplus",
            &["-S", "-L", "/nolog"],
            Some(&script),
            timeout,
        )
    }

    /// `lsnrctl ACTION LISTENER`.
    pub fn lsnrctl(
        &self,
        req: &Request,
        action: &str,
        listener: &str,
        timeout: Duration,
    ) -> Result<Run, AgentError> {
        self.run(req, "lsnrctl", &[action, listener], None, timeout)
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.home.join("bin").join(name)
    }

    /// Run `$ORACLE_HOME/bin/NAME ARGS` as the owner in a process group of its
    /// own, tagged with the resource (what it starts belongs to the resource),
    /// feeding `input`; at `timeout` its group is killed.
    fn run(
        &self,
        req: &Request,
        name: &str,
        args: &[&str],
        input: Option<&str>,
        timeout: Duration,
    ) -> Result<Run, AgentError> {
        let program = self.tool(name);
        let mut cmd = Command::new(&program);
        cmd.args(args)
            .env_clear()
            .env("ORACLE_HOME", &self.home)
            .env("ORACLE_SID", &self.sid)
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.home.join("bin").display()),
            )
            .env("LD_LIBRARY_PATH", self.home.join("lib"))
            .env("HOME", &self.home)
            .env("USER", &self.user)
            .env("LOGNAME", &self.user)
            .env(service::HOST_VAR, service::host_id())
            .env(service::RESOURCE_VAR, &req.context.resource)
            .current_dir(&self.home)
            .uid(self.uid)
            .gid(self.gid);
        let input = input.unwrap_or_default().as_bytes().to_vec();
        let done = process::run_with_input(cmd, Some(input), timeout, 64 << 10).map_err(|e| {
            let class = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorClass::NotInstalled
            } else {
                ErrorClass::Generic
            };
            AgentError::new(
                class,
                format!(
                    "cannot run {}: {e}; check home (ORACLE_HOME)",
                    program.display()
                ),
            )
        })?;
        let output = String::from_utf8_lossy(&[done.stdout, done.stderr].concat()).into_owned();
        Ok(Run {
            output,
            code: done.status.and_then(|s| s.code()),
        })
    }
}

/// The Oracle error codes in a tool's output (`ORA-01031`, `TNS-12541`, ...).
pub fn errors(output: &str) -> Vec<&str> {
    output
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| {
            let (prefix, digits) = w.split_once('-').unwrap_or(("", ""));
            matches!(prefix, "ORA" | "TNS" | "LRM" | "SP2")
                && (4..=5).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
        })
        .collect()
}

/// The contract's class for a failed tool run, by the first error it printed:
/// missing privileges are `permission`, a parameter file or control file
/// that cannot be read is `misconfigured` (it is so on every node), the rest
/// `generic`.
pub fn class_of(output: &str) -> ErrorClass {
    for code in errors(output) {
        match code {
            // insufficient privileges (the owner is not in the OSDBA group)
            "ORA-01031" => return ErrorClass::Permission,
            // failure in processing system parameters; could not open parameter file
            "ORA-01078" | "LRM-00109" => return ErrorClass::Misconfigured,
            // control file or data file cannot be identified
            "ORA-00205" | "ORA-01157" => return ErrorClass::Misconfigured,
            _ => {}
        }
    }
    ErrorClass::Generic
}

/// The last non-empty line of a query's output (its value).
pub fn value(output: &str) -> &str {
    output
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
}

/// Whether the instance's process monitor (`ora_pmon_SID`) runs on this node.
pub fn pmon_running(sid: &str) -> bool {
    let want = format!("ora_pmon_{sid}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let p = e.path();
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            return false;
        }
        // A process that ended but was not reaped yet is not running.
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next());
        if matches!(state, Some('Z' | 'X') | None) {
            return false;
        }
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let cmdline = std::fs::read(p.join("cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        comm.trim() == want
            || Path::new(&*String::from_utf8_lossy(argv0))
                .file_name()
                .is_some_and(|n| n.to_string_lossy() == want)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_found_and_classified() {
        let out = "ERROR:\nORA-01031: insufficient privileges\n\nSP2-0640: Not connected";
        assert_eq!(errors(out), ["ORA-01031", "SP2-0640"]);
        assert_eq!(class_of(out), ErrorClass::Permission);
        assert_eq!(
            class_of("ORA-01078: failure in processing system parameters"),
            ErrorClass::Misconfigured
        );
        assert_eq!(class_of("ORA-03113: end-of-file"), ErrorClass::Generic);
        assert_eq!(value("\nOPEN\n\n"), "OPEN");
    }
}
