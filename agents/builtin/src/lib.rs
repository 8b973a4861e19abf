//! Resource agents compiled into baton.
//!
//! Each agent registers a [`BuiltinAgent`] with `inventory`; the host lists them
//! with [`builtin_agents`]. The binary that wants them must link this crate
//! (`use baton_agents as _;`), or the linker drops the registrations.

mod announce;
mod disk_lease;
pub mod dns_name;
mod filesystem;
mod ipaddr;
mod lab_fence;
pub mod lease;
pub mod ledger;
pub mod netlink;
mod process;
mod reading;
mod tcp_check;

pub use announce::arp_answer;
pub use disk_lease::DiskLeaseAgent;
pub use dns_name::DnsNameAgent;
pub use filesystem::FilesystemAgent;
pub use ipaddr::IpAddrAgent;
pub use lab_fence::LabFenceAgent;
pub use ledger::LedgerAgent;
pub use process::{ProcessAgent, proc_stat};
pub use tcp_check::TcpCheckAgent;

use baton_plugin_api::ResourceAgent;

/// A compiled-in agent type.
pub struct BuiltinAgent {
    /// The type name resources use (`process`).
    pub name: &'static str,
    /// Build an instance (one per host; agents keep per-resource state inside).
    pub build: fn() -> Box<dyn ResourceAgent>,
}

inventory::collect!(BuiltinAgent);

/// Every compiled-in agent, sorted by name.
pub fn builtin_agents() -> Vec<&'static BuiltinAgent> {
    let mut all: Vec<&'static BuiltinAgent> = inventory::iter::<BuiltinAgent>.into_iter().collect();
    all.sort_by_key(|a| a.name);
    all
}

/// The compiled-in agent named `name`.
pub fn builtin_agent(name: &str) -> Option<&'static BuiltinAgent> {
    inventory::iter::<BuiltinAgent>
        .into_iter()
        .find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_expected_agents_are_registered() {
        let names: Vec<&str> = super::builtin_agents().iter().map(|a| a.name).collect();
        assert_eq!(
            names,
            [
                "disk-lease",
                "dns-name",
                "filesystem",
                "ipaddr",
                "lab-fence",
                "ledger",
                "process",
                "tcp-check"
            ]
        );
        for a in super::builtin_agents() {
            let meta = (a.build)().metadata();
            assert_eq!(meta.name, a.name);
            meta.check().unwrap();
        }
    }
}
