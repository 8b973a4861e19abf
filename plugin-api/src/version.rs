use serde::{Deserialize, Serialize};
use std::fmt;

/// A contract version, `major.minor`.
///
/// Rules (see `docs/agents.md`, "Versioning"): a minor version only *adds*
/// optional actions, optional meta-data fields or capabilities; an agent built for
/// `1.x` keeps loading in every host that supports `1.y` with `y >= x`, and a host
/// that knows `1.y` answers [`ErrorClass::Unimplemented`](crate::ErrorClass) for
/// actions an older agent does not have. A major version may change anything and is
/// refused by hosts that do not list it in [`SUPPORTED_CONTRACTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContractVersion {
    /// Incompatible changes.
    pub major: u32,
    /// Compatible additions.
    pub minor: u32,
}

/// The contract this crate describes, and that agents built with it declare.
pub const CONTRACT_VERSION: ContractVersion = ContractVersion::new(1, 2);

/// The contract versions this host loads: every `1.x` up to [`CONTRACT_VERSION`].
pub const SUPPORTED_CONTRACTS: &[ContractVersion] = &[
    ContractVersion::new(1, 0),
    ContractVersion::new(1, 1),
    ContractVersion::new(1, 2),
];

impl ContractVersion {
    /// A version from its parts.
    pub const fn new(major: u32, minor: u32) -> ContractVersion {
        ContractVersion { major, minor }
    }

    /// Parse `1.0`, `1.0.0` or `1`.
    pub fn parse(text: &str) -> Option<ContractVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = match parts.next() {
            Some(m) => m.parse().ok()?,
            None => 0,
        };
        if let Some(patch) = parts.next() {
            patch.parse::<u32>().ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(ContractVersion { major, minor })
    }

    /// Whether a host built with [`CONTRACT_VERSION`] loads an agent built for `self`;
    /// the error names both versions.
    pub fn check_supported(self) -> Result<(), VersionError> {
        if SUPPORTED_CONTRACTS.contains(&self) {
            Ok(())
        } else {
            Err(VersionError {
                agent: self,
                host: CONTRACT_VERSION,
            })
        }
    }
}

impl fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// An agent was built for a contract this host does not load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionError {
    /// What the agent was built for.
    pub agent: ContractVersion,
    /// The newest contract this host supports.
    pub host: ContractVersion,
}

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let oldest = SUPPORTED_CONTRACTS[0];
        write!(
            f,
            "the agent was built for contract {} but this host supports contracts {}..={}; ",
            self.agent, oldest, self.host
        )?;
        if self.agent > self.host {
            write!(
                f,
                "upgrade baton, or rebuild the agent against contract {}",
                self.host
            )
        } else {
            write!(f, "rebuild the agent against contract {}", self.host)
        }
    }
}

impl std::error::Error for VersionError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crate_version_follows_the_contract() {
        let crate_version = env!("CARGO_PKG_VERSION")
            .rsplit_once('.')
            .and_then(|(major_minor, _patch)| ContractVersion::parse(major_minor))
            .unwrap();
        assert_eq!(crate_version, CONTRACT_VERSION);
    }

    #[test]
    fn parses_the_spellings_agents_use() {
        assert_eq!(
            ContractVersion::parse("1.0"),
            Some(ContractVersion::new(1, 0))
        );
        assert_eq!(
            ContractVersion::parse("1.1.0"),
            Some(ContractVersion::new(1, 1))
        );
        assert_eq!(
            ContractVersion::parse("2"),
            Some(ContractVersion::new(2, 0))
        );
        assert_eq!(ContractVersion::parse("x.1"), None);
        assert_eq!(ContractVersion::parse("1.2.3.4"), None);
    }

    #[test]
    fn a_future_major_is_refused_naming_both_versions() {
        let err = ContractVersion::new(2, 0).check_supported().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("built for contract 2.0"), "{text}");
        assert!(text.contains("1.0..=1.2"), "{text}");
        assert!(text.contains("upgrade baton"), "{text}");
        assert!(ContractVersion::new(1, 0).check_supported().is_ok());
        assert!(ContractVersion::new(1, 1).check_supported().is_ok());
        assert!(ContractVersion::new(1, 2).check_supported().is_ok());
        assert!(ContractVersion::new(1, 3).check_supported().is_err());
        assert!(ContractVersion::new(0, 9).check_supported().is_err());
    }
}
