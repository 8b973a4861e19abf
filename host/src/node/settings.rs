//! The operators' standby and maintenance settings, kept on disk beside the
//! node's event history (`NODE.settings`, JSON), so that a node in standby
//! stays off and a service in maintenance stays alone across a restart of the
//! whole cluster. Every node keeps the newest settings it knows; at boot it
//! adopts its saved copy, and a member's newer one once it joins.

use crate::cluster::wire::Admin;
use std::path::{Path, PathBuf};

/// Where the settings of the node whose history is `history` are kept.
pub fn path_beside(history: &Path) -> PathBuf {
    history.with_extension("settings")
}

/// The saved settings at `path` (`Admin::default()` when there are none);
/// an unreadable file is an error that names it.
pub fn load(path: &Path) -> anyhow::Result<Admin> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Admin::default()),
        Err(e) => anyhow::bail!(
            "cannot read the operators' settings {}: {e}",
            path.display()
        ),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not the operators' settings ({e}); remove it to forget them (every member's copy is adopted at the next join)",
            path.display()
        )
    })?;
    let field = |name: &str| {
        v[name].as_u64().ok_or_else(|| {
            anyhow::anyhow!(
                "{}: {name} is missing; remove the file to forget the settings",
                path.display()
            )
        })
    };
    Ok(Admin {
        generation: field("generation")?,
        standby: field("standby")?,
        maintenance: field("maintenance")?,
    })
}

/// Save `admin` at `path` (written beside it, then renamed: a crash leaves
/// the old copy or the new one).
pub fn save(path: &Path, admin: &Admin) -> std::io::Result<()> {
    let text = serde_json::json!({
        "generation": admin.generation,
        "standby": admin.standby,
        "maintenance": admin.maintenance,
    })
    .to_string();
    let tmp = path.with_extension("settings.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_a_save_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_beside(&dir.path().join("n1.history"));
        assert_eq!(load(&path).unwrap(), Admin::default());
        let admin = Admin {
            generation: Admin::generation_of(1_796_626_867_677, 2),
            standby: 0b10,
            maintenance: 1,
        };
        save(&path, &admin).unwrap();
        assert_eq!(load(&path).unwrap(), admin);
        std::fs::write(&path, "{").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("n1.settings") && e.contains("remove it"), "{e}");
    }
}
