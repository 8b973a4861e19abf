use crate::{Action, Metadata};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What `monitor` found. (`stop` succeeding is `Ok(())`, never `NotRunning`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorState {
    /// Running and healthy.
    Running,
    /// Cleanly stopped. Only for a resource that is certainly not running here:
    /// "if there is doubt, report a failure, not not-running".
    NotRunning,
    /// Running, but a failure is likely soon (shown in status, not recovered).
    Degraded,
    /// Running in the promoted role.
    Promoted,
    /// Promoted, but failed: the host demotes, stops and starts it.
    FailedPromoted,
    /// Promoted and degraded.
    DegradedPromoted,
}

impl MonitorState {
    /// Whether the resource is up in some role.
    pub fn is_active(self) -> bool {
        !matches!(self, MonitorState::NotRunning)
    }

    /// The kebab-case name (`not-running`, ...).
    pub fn name(self) -> &'static str {
        match self {
            MonitorState::Running => "running",
            MonitorState::NotRunning => "not-running",
            MonitorState::Degraded => "degraded",
            MonitorState::Promoted => "promoted",
            MonitorState::FailedPromoted => "failed-promoted",
            MonitorState::DegradedPromoted => "degraded-promoted",
        }
    }
}

impl fmt::Display for MonitorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A successful call's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum Outcome {
    /// The action completed (validate, start, stop, promote, ...).
    Done,
    /// `monitor`'s answer.
    State(MonitorState),
    /// `meta-data`'s answer.
    Metadata(Box<Metadata>),
    /// `monitor`'s answer with the instance's promotion score (contract 1.2: an
    /// agent that implements `promote` and reports
    /// [`ResourceAgent::promotion_score`](crate::ResourceAgent::promotion_score)).
    Scored {
        /// The state, as in [`Outcome::State`].
        state: MonitorState,
        /// How much of the data this instance holds.
        promotion: Promotion,
    },
}

impl Outcome {
    /// The monitor state of a `monitor` answer, scored or not.
    pub fn state(&self) -> Option<MonitorState> {
        match self {
            Outcome::State(s) | Outcome::Scored { state: s, .. } => Some(*s),
            _ => None,
        }
    }

    /// The promotion score of a scored `monitor` answer.
    pub fn promotion(&self) -> Option<Promotion> {
        match self {
            Outcome::Scored { promotion, .. } => Some(*promotion),
            _ => None,
        }
    }
}

/// How much of a replicated service's data one instance holds (contract 1.2), so
/// the cluster promotes the most up-to-date replica and never one that lacks a
/// write the promoted instance acknowledged.
///
/// Scores compare as `(generation, position)`: a higher generation always wins,
/// then the higher position. Both must only grow with every write and every
/// promotion (for PostgreSQL: the timeline and the log position).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Promotion {
    /// Which history the data is on (a database's timeline); bumped by a promotion.
    pub generation: u64,
    /// How far along that history this instance is (a database's log position).
    pub position: u64,
    /// Only from the promoted instance: the position every write it has
    /// acknowledged so far lies within. With synchronous replication, what its
    /// synchronous replicas confirmed; with asynchronous replication, its own
    /// position. A replica below it would lose acknowledged writes, so the
    /// cluster does not promote it unless an operator forces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<u64>,
}

impl Promotion {
    /// The score as one comparable key.
    pub fn key(&self) -> (u64, u64) {
        (self.generation, self.position)
    }
}

impl fmt::Display for Promotion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:X}", self.generation, self.position)?;
        if let Some(a) = self.acknowledged {
            write!(f, " (acknowledged {}/{a:X})", self.generation)?;
        }
        Ok(())
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Done => f.write_str("ok"),
            Outcome::State(s) => write!(f, "{s}"),
            Outcome::Metadata(m) => write!(f, "meta-data of {} {}", m.name, m.version),
            Outcome::Scored { state, promotion } => write!(f, "{state}, score {promotion}"),
        }
    }
}

/// Why an action failed, as a class the host maps to recovery
/// ([`recovery_for`](crate::recovery_for)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    /// Something went wrong; trying again here may help (OCF 1).
    Generic,
    /// The parameters are invalid on this node (OCF 2).
    InvalidArgs,
    /// The agent does not implement this action (OCF 3).
    Unimplemented,
    /// The agent lacks a privilege it needs on this node (OCF 4).
    Permission,
    /// Software the resource needs is missing on this node (OCF 5).
    NotInstalled,
    /// The parameters are wrong on every node (OCF 6): the resource is stopped
    /// everywhere until an administrator fixes the configuration.
    Misconfigured,
}

impl ErrorClass {
    /// The kebab-case name (`invalid-args`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Generic => "generic",
            ErrorClass::InvalidArgs => "invalid-args",
            ErrorClass::Unimplemented => "unimplemented",
            ErrorClass::Permission => "permission",
            ErrorClass::NotInstalled => "not-installed",
            ErrorClass::Misconfigured => "misconfigured",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed action: a class and a reason a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    /// How bad it is (drives recovery).
    pub class: ErrorClass,
    /// What happened and, where the agent knows, what to do about it.
    pub reason: String,
}

impl AgentError {
    /// An error of `class` with `reason`.
    pub fn new(class: ErrorClass, reason: impl Into<String>) -> AgentError {
        AgentError {
            class,
            reason: reason.into(),
        }
    }

    /// [`ErrorClass::Generic`].
    pub fn generic(reason: impl Into<String>) -> AgentError {
        AgentError::new(ErrorClass::Generic, reason)
    }

    /// [`ErrorClass::InvalidArgs`].
    pub fn invalid_args(reason: impl Into<String>) -> AgentError {
        AgentError::new(ErrorClass::InvalidArgs, reason)
    }

    /// [`ErrorClass::Misconfigured`].
    pub fn misconfigured(reason: impl Into<String>) -> AgentError {
        AgentError::new(ErrorClass::Misconfigured, reason)
    }

    /// [`ErrorClass::NotInstalled`].
    pub fn not_installed(reason: impl Into<String>) -> AgentError {
        AgentError::new(ErrorClass::NotInstalled, reason)
    }

    /// [`ErrorClass::Permission`].
    pub fn permission(reason: impl Into<String>) -> AgentError {
        AgentError::new(ErrorClass::Permission, reason)
    }

    /// [`ErrorClass::Unimplemented`] for `action`.
    pub fn unimplemented(action: Action) -> AgentError {
        AgentError::new(
            ErrorClass::Unimplemented,
            format!("this agent does not implement {action}"),
        )
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.reason)
    }
}

impl std::error::Error for AgentError {}
