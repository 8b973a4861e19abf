//! The MariaDB adapter (`wasm-agents/mariadb`, a WebAssembly component)
//! against a real MariaDB (Debian's `mariadb-server`, installed by
//! scripts/setup): each test initialises its own data directory with
//! `mariadb-install-db`, runs its server on a free port and its own socket,
//! and ends it. The component reaches the server only through capabilities.

use crate::support::{Subject, catalog, failed_steps, wasm};
use baton_plugin_api::{Action, ErrorClass, MonitorState, Outcome};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// A fresh data directory and the adapter with its capabilities granted.
struct Server {
    dir: tempfile::TempDir,
    subject: Subject,
}

impl std::ops::Deref for Server {
    type Target = Subject;
    fn deref(&self) -> &Subject {
        &self.subject
    }
}

fn server(resource: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    // A temporary directory of its own: bootstraps running side by side in
    // /tmp have been seen to trip over each other's temporary tables.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::os::unix::fs::chown(
        &tmp,
        Some(baton_plugin_api::service::user("mysql").unwrap().uid),
        None,
    )
    .unwrap();
    let out = Command::new("mariadb-install-db")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", tmp.display()))
        .args([
            "--user=mysql",
            "--skip-test-db",
            "--auth-root-authentication-method=socket",
        ])
        .output()
        .expect("mariadb-install-db is missing: run scripts/setup (scripts/test does)");
    assert!(
        out.status.success(),
        "mariadb-install-db: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let grants = format!(
        "[agents.grants]\nmariadb = [\"spawn:/usr/sbin/mariadbd as mysql\", \
         \"exec:/usr/bin/mariadb-admin as mysql\", \"exec:/usr/bin/kill as mysql\", \
         \"net:127.0.0.1:{port}\", \"read:{}\"]\n",
        data.display()
    );
    let agent = catalog(&dir.path().join("store"), &grants)
        .load(wasm("baton_mariadb").to_str().unwrap())
        .unwrap();
    let params = vec![
        ("datadir".into(), data.display().to_string()),
        ("port".into(), port.to_string()),
        ("bind_address".into(), "127.0.0.1".into()),
    ];
    Server {
        dir,
        subject: Subject {
            agent,
            resource: resource.into(),
            params,
        },
    }
}

#[test]
fn a_real_mariadb_passes_the_conformance_test_through_capabilities_only() {
    let db = server("maria-conformance");
    let report = db.conformance();
    assert!(failed_steps(&report).is_empty(), "{report:#?}");
}

#[test]
fn mariadb_runs_as_its_user_and_stops_with_shutdown() {
    let db = server("maria-run");
    let start = db.call(Action::Start, 60_000);
    assert!(start.result.is_ok(), "{:?}", start.result);
    let tagged = baton_plugin_api::service::tagged(
        &baton_plugin_api::service::host_id(),
        Some(&db.resource),
    );
    let server = tagged
        .iter()
        .find(|t| t.name == "mariadbd")
        .expect("mariadbd is tagged");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid)).unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap();
    let mysql = baton_plugin_api::service::user("mysql").unwrap();
    assert_eq!(uid, mysql.uid.to_string());
    assert_eq!(
        db.call(Action::Monitor, 30_000).result.unwrap(),
        Outcome::State(MonitorState::Running)
    );
    assert!(db.call(Action::Stop, 60_000).result.is_ok());
    let left = crate::support::left_after_exit(&db.resource);
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn mariadb_refuses_a_data_directory_that_is_not_one() {
    let db = server("maria-errors");
    let bare = db.dir.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    let f = db
        .call_with(
            Action::Start,
            0,
            &[("datadir", bare.to_str().unwrap())],
            30_000,
        )
        .result
        .unwrap_err();
    // Outside the granted directory: the capability is refused first.
    assert!(
        matches!(f.class, ErrorClass::Misconfigured | ErrorClass::Permission),
        "{f}"
    );
    let empty = db.dir.path().join("data/empty");
    std::fs::create_dir(&empty).unwrap();
    let f = db
        .call_with(
            Action::Start,
            0,
            &[("datadir", empty.to_str().unwrap())],
            30_000,
        )
        .result
        .unwrap_err();
    assert_eq!(f.class, ErrorClass::Misconfigured, "{f}");
    assert!(f.reason.contains("mariadb-install-db"), "{f}");
}

/// The acknowledged-transaction audit of MariaDB on a shared disk, three rounds
/// (kill -9 of the owner's node, its isolation, kill -9 of its daemon alone): a
/// client writes through the service address all along; afterwards every write
/// the server acknowledged is in the table, one node mounted the disk at a time,
/// and the filesystem checks clean. (More rounds: the database_audit example.)
#[test]
fn mariadb_on_a_shared_disk_fails_over_losing_no_acknowledged_transaction() {
    if !baton::lab::Lab::possible() {
        eprintln!("lab tests need root and iproute2; skipped");
        return;
    }
    let prefix = format!("md{}", std::process::id() % 1000);
    let mut lab = crate::db_lab::DbLab::mariadb(
        &prefix,
        &crate::support::baton_exe(),
        &wasm("baton_mariadb"),
    )
    .unwrap();
    lab.start_client(Box::new(crate::db_lab::MariaDb));
    let (acked, lost, mounts) = lab.each_fault_once().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        lost.is_empty(),
        "{} of {acked} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    assert!(acked >= 60, "only {acked} writes acknowledged");
    assert!(mounts >= 4, "only {mounts} mount intervals recorded");
}
