//! baton's native agent ABI: the one crate that knows about `abi_stable`.
//!
//! An agent library (`crate-type = ["cdylib"]`) implements
//! [`ResourceAgent`](baton_plugin_api::ResourceAgent) and calls
//! [`export_agent!`] once. That exports an abi_stable root module, [`AgentLib`],
//! whose layout abi_stable checks when the host loads the library, and whose fields
//! carry the ABI major, the contract version, and two functions: `metadata` and `call`.
//!
//! Requests and replies cross the boundary as the contract's own serde types encoded
//! as JSON in an `RString`.
//!
//! Rationale: with the typed values carried as JSON, adding an action or an optional
//! field in a contract minor release changes no `#[repr(C)]` layout, so libraries
//! built for 1.0 keep loading in a 1.1 host (an action they do not know comes back as
//! `unimplemented`). abi_stable still guards what must not drift: the root module's
//! layout and the library's ABI version. The JSON costs a few microseconds per call,
//! far below any monitor interval. Keeping every abi_stable name in this crate means
//! a move to another FFI layer (stabby, hand-written `repr(C)` vtables) stays local.
//!
//! Panics in agent code are caught at the boundary and returned as a `generic`
//! error (abi_stable would otherwise abort the process). Segfaults and aborts cannot
//! be caught, which is why the host runs native agents in a separate runner process.
#![allow(non_local_definitions)]

use abi_stable::library::{LibHeader, LibraryError, RootModule, lib_header_from_path};
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RStr, RString};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings};
use baton_plugin_api::{
    AgentError, ContractVersion, Metadata, Outcome, Request, ResourceAgent, dispatch,
};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[doc(hidden)]
pub use abi_stable as __abi_stable;
#[doc(hidden)]
pub use baton_plugin_api as __api;

/// The ABI major version this crate produces and loads. A library with another
/// major is refused at load.
pub const ABI_MAJOR: u32 = 1;

/// The root module every baton agent library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = AgentLibRef)))]
#[sabi(missing_field(option))]
pub struct AgentLib {
    /// [`ABI_MAJOR`] of the crate the library was built with.
    pub abi_major: u32,
    /// The contract major the agent declares.
    pub contract_major: u32,
    /// The contract minor the agent declares.
    pub contract_minor: u32,
    /// The agent's meta-data as JSON.
    pub metadata: extern "C" fn() -> RString,
    /// Run one request (JSON [`Request`]) and answer a JSON
    /// `Result<Outcome, AgentError>`.
    #[sabi(last_prefix_field)]
    pub call: extern "C" fn(request: RStr<'_>) -> RString,
}

impl RootModule for AgentLibRef {
    declare_root_module_statics! {AgentLibRef}
    const BASE_NAME: &'static str = "baton_agent";
    const NAME: &'static str = "baton_agent";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Export `$agent` (an expression building a [`ResourceAgent`]) as this library's
/// baton agent. Use it once per `cdylib`:
///
/// ```text
/// baton_agent_abi::export_agent!(MyAgent::default());
/// ```
///
/// The agent is built on first use and lives as long as the process. Panics in
/// its methods are caught and answered as `generic` errors.
#[macro_export]
macro_rules! export_agent {
    ($agent:expr) => {
        $crate::export_agent!(@contract $crate::__api::CONTRACT_VERSION.major, $crate::__api::CONTRACT_VERSION.minor, $agent);
    };
    // Test fixtures use this form to pretend to be built for another contract.
    (@contract $major:expr, $minor:expr, $agent:expr) => {
        fn __baton_agent() -> &'static dyn $crate::__api::ResourceAgent {
            static AGENT: ::std::sync::OnceLock<::std::boxed::Box<dyn $crate::__api::ResourceAgent>> =
                ::std::sync::OnceLock::new();
            AGENT.get_or_init(|| ::std::boxed::Box::new($agent)).as_ref()
        }
        extern "C" fn __baton_metadata() -> $crate::__abi_stable::std_types::RString {
            $crate::encode_metadata(__baton_agent)
        }
        extern "C" fn __baton_call(
            request: $crate::__abi_stable::std_types::RStr<'_>,
        ) -> $crate::__abi_stable::std_types::RString {
            $crate::handle_call(__baton_agent, request)
        }
        extern "C" fn __baton_root_module() -> $crate::__abi_stable::library::RootModuleResult {
            $crate::__abi_stable::library::__call_root_module_loader(|| {
                $crate::root_module($major, $minor, __baton_metadata, __baton_call)
            })
        }
        // The symbol abi_stable's loader looks for (abi_stable::library::ROOT_MODULE_LOADER_NAME).
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static BATON_AGENT_LIB_HEADER: $crate::__abi_stable::library::LibHeader = {
            // SAFETY: the constructor returns the module type named here, which is
            // what `from_constructor` requires.
            unsafe {
                $crate::__abi_stable::library::LibHeader::from_constructor::<$crate::AgentLibRef>(
                    __baton_root_module,
                    $crate::__abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[doc(hidden)]
pub fn root_module(
    contract_major: u32,
    contract_minor: u32,
    metadata: extern "C" fn() -> RString,
    call: extern "C" fn(RStr<'_>) -> RString,
) -> AgentLibRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    AgentLib {
        abi_major: ABI_MAJOR,
        contract_major,
        contract_minor,
        metadata,
        call,
    }
    .leak_into_prefix()
}

fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, AgentError>) -> Result<T, AgentError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".into());
        Err(AgentError::generic(format!(
            "the agent panicked in {what}: {msg}"
        )))
    })
}

#[doc(hidden)]
pub fn encode_metadata(agent: fn() -> &'static dyn ResourceAgent) -> RString {
    let meta = guarded("meta-data", || Ok(agent().metadata()));
    RString::from(serde_json::to_string(&meta).unwrap_or_default())
}

#[doc(hidden)]
pub fn handle_call(agent: fn() -> &'static dyn ResourceAgent, request: RStr<'_>) -> RString {
    let reply: Result<Outcome, AgentError> = match serde_json::from_str::<Request>(request.as_str())
    {
        Ok(req) => guarded(req.action.name(), || dispatch(agent(), &req)),
        // A host newer than the library may send an action this library's contract
        // does not know: that is "unimplemented", not garbage.
        Err(e) if e.to_string().contains("unknown variant") => Err(AgentError::new(
            baton_plugin_api::ErrorClass::Unimplemented,
            format!("this agent's contract does not know the request: {e}"),
        )),
        Err(e) => Err(AgentError::generic(format!(
            "the agent could not decode the request: {e}"
        ))),
    };
    RString::from(serde_json::to_string(&reply).unwrap_or_default())
}

/// Why a native library could not be used. Every variant names the file.
#[derive(Debug)]
pub enum LoadError {
    /// The file is not a loadable shared library, or lacks baton's root module.
    NotAnAgent {
        /// The library.
        path: PathBuf,
        /// What the loader said.
        detail: String,
    },
    /// The library was built with another ABI or for an unsupported contract.
    Version {
        /// The library.
        path: PathBuf,
        /// Which versions disagree and what to do.
        detail: String,
    },
    /// The meta-data the library returned is unusable.
    BadMetadata {
        /// The library.
        path: PathBuf,
        /// Every problem found.
        detail: String,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NotAnAgent { path, detail } => write!(
                f,
                "{} is not a baton native agent: {detail}. Build it as a cdylib that calls \
                 baton_agent_abi::export_agent! (see samples/native-agent)",
                path.display()
            ),
            LoadError::Version { path, detail } => write!(f, "{}: {detail}", path.display()),
            LoadError::BadMetadata { path, detail } => {
                write!(f, "{} has unusable meta-data: {detail}", path.display())
            }
        }
    }
}

impl std::error::Error for LoadError {}

fn describe_library_error(e: &LibraryError) -> String {
    let text = e.to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    match e {
        LibraryError::OpenError { .. } => {
            format!("it could not be opened as a shared library ({first})")
        }
        LibraryError::GetSymbolError { .. } => {
            "it does not export baton's agent root module".to_string()
        }
        LibraryError::IncompatibleVersionNumber { .. } => format!(
            "it was built with an incompatible baton-agent-abi ({first}); rebuild it against baton-agent-abi {}",
            env!("CARGO_PKG_VERSION")
        ),
        _ => format!(
            "abi_stable refused it ({}); rebuild it against baton-agent-abi {}",
            text.split_whitespace().collect::<Vec<_>>().join(" "),
            env!("CARGO_PKG_VERSION")
        ),
    }
}

/// A loaded native agent library. Libraries are never unloaded (abi_stable does not
/// support it), so upgrading one means restarting the process that loaded it.
pub struct NativeLibrary {
    module: AgentLibRef,
    metadata: Metadata,
    contract: ContractVersion,
}

impl NativeLibrary {
    /// Load the agent library at `path`, check its ABI and contract version and
    /// read its meta-data. Runs the library's code: do this in a runner process
    /// unless the administrator trusts the library.
    pub fn load(path: &Path) -> Result<NativeLibrary, LoadError> {
        let not_agent = |detail: String| LoadError::NotAnAgent {
            path: path.to_owned(),
            detail,
        };
        // Per library, `lib_header_from_path` + `init_root_module`: the cached
        // `RootModule::load_from_file` would hand back the first library's module
        // for every later one.
        let header: &'static LibHeader =
            lib_header_from_path(path).map_err(|e| not_agent(describe_library_error(&e)))?;
        let module = header
            .init_root_module::<AgentLibRef>()
            .map_err(|e| match e {
                LibraryError::IncompatibleVersionNumber { .. } => LoadError::Version {
                    path: path.to_owned(),
                    detail: describe_library_error(&e),
                },
                _ => not_agent(describe_library_error(&e)),
            })?;
        if module.abi_major() != ABI_MAJOR {
            return Err(LoadError::Version {
                path: path.to_owned(),
                detail: format!(
                    "the library uses native ABI {} but this host loads ABI {ABI_MAJOR}; rebuild it \
                     against baton-agent-abi {}",
                    module.abi_major(),
                    env!("CARGO_PKG_VERSION")
                ),
            });
        }
        let contract = ContractVersion::new(module.contract_major(), module.contract_minor());
        contract.check_supported().map_err(|e| LoadError::Version {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let json = (module.metadata())();
        let metadata: Metadata = match serde_json::from_str::<Result<Metadata, AgentError>>(&json) {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                return Err(LoadError::BadMetadata {
                    path: path.to_owned(),
                    detail: e.to_string(),
                });
            }
            Err(e) => {
                return Err(LoadError::BadMetadata {
                    path: path.to_owned(),
                    detail: format!("it is not valid meta-data JSON ({e})"),
                });
            }
        };
        if let Err(problems) = metadata.check() {
            return Err(LoadError::BadMetadata {
                path: path.to_owned(),
                detail: problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        if metadata.contract != contract {
            return Err(LoadError::BadMetadata {
                path: path.to_owned(),
                detail: format!(
                    "the meta-data says contract {} but the library was built for {contract}",
                    metadata.contract
                ),
            });
        }
        Ok(NativeLibrary {
            module,
            metadata,
            contract,
        })
    }

    /// The agent's meta-data (read once at load).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The contract version the library was built for.
    pub fn contract(&self) -> ContractVersion {
        self.contract
    }

    /// Run one request in this process. Blocks for as long as the agent's code runs.
    pub fn call(&self, request: &Request) -> Result<Outcome, AgentError> {
        if request.action.since() > self.contract {
            return Err(AgentError::unimplemented(request.action));
        }
        let json = match serde_json::to_string(request) {
            Ok(j) => j,
            Err(e) => {
                return Err(AgentError::generic(format!(
                    "could not encode the request: {e}"
                )));
            }
        };
        let reply = (self.module.call())(RStr::from_str(&json));
        serde_json::from_str::<Result<Outcome, AgentError>>(&reply).unwrap_or_else(|e| {
            Err(AgentError::generic(format!(
                "agent {} answered something that is not a reply ({e})",
                self.metadata.name
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_exported_symbol_is_the_one_abi_stable_looks_for() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
