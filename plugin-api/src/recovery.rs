use crate::{Action, AgentError, ErrorClass, MonitorState};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What the host does after an action's result. The whole mapping lives in
/// [`recovery_for`] and is documented, row for row, in `docs/agents.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recovery {
    /// Nothing to do (success, or a result that is only shown, like degraded).
    None,
    /// Stop and start the resource on this node; counts one failure toward the
    /// service's threshold, after which the service moves.
    RestartHere,
    /// Move the service to another node and keep it off this node until the
    /// failure expires or is cleared (the problem is local to this node).
    Move,
    /// Stop the service on every node and keep it stopped until the configuration
    /// is fixed (the problem is in the parameters, so it is the same everywhere).
    StopEverywhere,
    /// The resource may still be running here and cannot be stopped: the node must be
    /// fenced before the service may start anywhere else.
    Fence,
}

impl Recovery {
    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Recovery::None => "none",
            Recovery::RestartHere => "restart-here",
            Recovery::Move => "move",
            Recovery::StopEverywhere => "stop-everywhere",
            Recovery::Fence => "fence",
        }
    }
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The recovery for a monitor that *succeeded* with `state` while the host
/// expected the resource to run here.
pub fn recovery_for_state(state: MonitorState) -> Recovery {
    match state {
        MonitorState::Running
        | MonitorState::Degraded
        | MonitorState::Promoted
        | MonitorState::DegradedPromoted => Recovery::None,
        // Unexpectedly stopped, or promoted but failed: demote/stop, then start again.
        MonitorState::NotRunning | MonitorState::FailedPromoted => Recovery::RestartHere,
    }
}

/// The recovery after `action` failed with `error` (a timeout or crash of the
/// agent's code reaches here as [`ErrorClass::Generic`]).
///
/// Rationale: this follows what Pacemaker's scheduler code does (not its docs, which
/// disagree, see docs/agents.md, "Errors and recovery"), with two deliberate changes: a failed `stop`
/// always means fencing, whatever the class, because the resource may still be
/// running; and `unimplemented` on an optional action needs no recovery at all.
pub fn recovery_for(action: Action, error: &AgentError) -> Recovery {
    if action == Action::Stop {
        return Recovery::Fence;
    }
    match (action, error.class) {
        // Pacemaker ignores notify failures: a peer's bookkeeping must not stop a service.
        (Action::Notify, _) => Recovery::None,
        (Action::MetaData | Action::Validate, ErrorClass::Generic) => Recovery::Move,
        (_, ErrorClass::Generic) => Recovery::RestartHere,
        (
            Action::Promote | Action::Demote | Action::Reload | Action::Recover,
            ErrorClass::Unimplemented,
        ) => Recovery::None,
        (_, ErrorClass::InvalidArgs | ErrorClass::Permission | ErrorClass::NotInstalled) => {
            Recovery::Move
        }
        (_, ErrorClass::Unimplemented) => Recovery::Move,
        (_, ErrorClass::Misconfigured) => Recovery::StopEverywhere,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(action: Action, class: ErrorClass) -> Recovery {
        recovery_for(action, &AgentError::new(class, "x"))
    }

    #[test]
    fn the_documented_table_holds() {
        assert_eq!(
            r(Action::Monitor, ErrorClass::Generic),
            Recovery::RestartHere
        );
        assert_eq!(r(Action::Start, ErrorClass::Generic), Recovery::RestartHere);
        assert_eq!(r(Action::Start, ErrorClass::NotInstalled), Recovery::Move);
        assert_eq!(r(Action::Monitor, ErrorClass::Permission), Recovery::Move);
        assert_eq!(r(Action::Start, ErrorClass::InvalidArgs), Recovery::Move);
        assert_eq!(
            r(Action::Monitor, ErrorClass::Misconfigured),
            Recovery::StopEverywhere
        );
        assert_eq!(
            r(Action::Validate, ErrorClass::Misconfigured),
            Recovery::StopEverywhere
        );
        assert_eq!(r(Action::Stop, ErrorClass::Generic), Recovery::Fence);
        assert_eq!(r(Action::Stop, ErrorClass::Misconfigured), Recovery::Fence);
        assert_eq!(
            r(Action::Promote, ErrorClass::Unimplemented),
            Recovery::None
        );
        assert_eq!(r(Action::Notify, ErrorClass::Generic), Recovery::None);
        assert_eq!(r(Action::Start, ErrorClass::Unimplemented), Recovery::Move);
        assert_eq!(
            recovery_for_state(MonitorState::NotRunning),
            Recovery::RestartHere
        );
        assert_eq!(recovery_for_state(MonitorState::Degraded), Recovery::None);
        assert_eq!(
            recovery_for_state(MonitorState::FailedPromoted),
            Recovery::RestartHere
        );
    }
}
