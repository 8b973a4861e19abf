//! A BIND 9 of the lab's own (Debian's `bind9`), for the `dns-name` agent: one
//! primary zone that accepts updates signed with one TSIG key, listening on an
//! address of the lab's bridge namespace (the clients' side of the service LAN).
//! The system's named is never used; this one is stopped by PID on drop.

use crate::lab::Lab;
use anyhow::{Context, ensure};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The TSIG key the lab's zone accepts updates signed with.
pub const KEY_NAME: &str = "baton-lab";
/// Its secret (base64 of 32 bytes).
pub const SECRET: &str = "YmF0b24tbGFiLXRzaWcta2V5LTMyLWJ5dGVzLWxvbmc=";

/// A running named; stopped on drop.
pub struct Named {
    child: Child,
    dir: tempfile::TempDir,
    /// Where it listens (port 53).
    pub server: String,
    /// Its zone.
    pub zone: String,
}

/// A key file for the key `name` with `secret`, as `tsig-keygen` writes it.
pub fn key_text(name: &str, secret: &str) -> String {
    format!("key \"{name}\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{secret}\";\n}};\n")
}

/// Whether named is installed (`scripts/setup` installs bind9).
pub fn installed() -> bool {
    Command::new("named").arg("-v").output().is_ok()
}

impl Named {
    /// Start named in `lab`'s bridge namespace on `server` (added to the service
    /// bridge when it is not the lab's client address), serving `zone`, and
    /// wait until the zone is loaded.
    pub fn start(lab: &Lab, server: &str, zone: &str) -> anyhow::Result<Named> {
        let dir = tempfile::Builder::new().prefix("baton-named").tempdir()?;
        let d = dir.path();
        lab.add_client_address(server)?;
        std::fs::write(d.join("baton.key"), key_text(KEY_NAME, SECRET))?;
        std::fs::write(
            d.join("zone"),
            format!(
                "$TTL 30\n@ IN SOA ns.{zone}. admin.{zone}. 1 60 60 600 30\n@ IN NS ns.{zone}.\nns IN A {server}\n"
            ),
        )?;
        std::fs::write(
            d.join("named.conf"),
            format!(
                "options {{ directory \"{dir}\"; pid-file \"{dir}/named.pid\"; listen-on port 53 {{ {server}; }};\n\
                 listen-on-v6 {{ none; }}; recursion no; dnssec-validation no; }};\n\
                 include \"{dir}/baton.key\";\n\
                 zone \"{zone}\" {{ type primary; file \"{dir}/zone\"; allow-update {{ key \"{KEY_NAME}\"; }}; }};\n",
                dir = d.display()
            ),
        )?;
        let log = std::fs::File::create(d.join("named.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.bridge_ns(), "named", "-g", "-c"])
            .arg(d.join("named.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("named (install bind9: scripts/setup does)")?;
        let named = Named {
            child,
            dir,
            server: server.to_string(),
            zone: zone.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Not just "running": named's first line is "running as: named …",
        // long before the zone is loaded.
        while !named.log().contains("all zones loaded") {
            ensure!(
                Instant::now() < deadline,
                "named did not start:\n{}",
                named.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(named)
    }

    /// A key file named `file` with `secret` for the key named `name`.
    pub fn key_file(&self, file: &str, name: &str, secret: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(file);
        std::fs::write(&path, key_text(name, secret))?;
        Ok(path)
    }

    /// What named has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// Its directory (config, zone, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
