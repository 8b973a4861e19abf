"""A minimal baton agent in Python, built into a WebAssembly component with
componentize-py. Its resource is a marker file, {dir}/{resource}.sample-python:
start creates it, stop removes it, monitor reads it. The state lives outside the
instance, as a real resource does. The component reaches outside its sandbox only
through the capabilities it requests in `capabilities` and the administrator
grants: two programs, and reading below the directory the `dir` parameter names
(`read:{dir}` is expanded per resource and must fall inside a grant).

The same contract as the Rust samples: plugin-api/wit/v1.2 and docs/agents.md.
"""

from typing import Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import capabilities, host
from wit_world.imports.types import (
    ActionSpec,
    AgentError,
    AgentMetadata,
    ErrorClass,
    MonitorState,
    ParamSpec,
    ParamType,
    Promotion,
    Request,
)


def param(req: Request, name: str, default: str) -> str:
    return next((v for k, v in req.params if k == name), default)


def marker(req: Request) -> str:
    return f"{param(req, 'dir', '/tmp')}/{req.resource}.sample-python"


def fail(cls: ErrorClass, reason: str) -> Err:
    return Err(AgentError(class_=cls, reason=reason))


def run(program: str, *args: str) -> None:
    """Run a granted program; a non-zero exit is an error with its stderr."""
    try:
        out = capabilities.run(
            capabilities.Command(program=program, args=list(args), env=[], timeout_ms=2000)
        )
    except Err as e:
        raise fail(ErrorClass.PERMISSION, e.value)
    if out.status != 0:
        stderr = bytes(out.stderr).decode(errors="replace").strip()
        raise fail(ErrorClass.GENERIC, f"{program} {' '.join(args)} failed ({out.status}): {stderr}")


class Agent(exports.Agent):
    def metadata(self) -> AgentMetadata:
        def action(name: str, interval_ms: int = 0) -> ActionSpec:
            return ActionSpec(action=name, timeout_ms=5000, interval_ms=interval_ms, depth=0)

        return AgentMetadata(
            name="sample-python",
            version="0.1.0",
            shortdesc="Manages a marker file (sample Python agent)",
            longdesc="",
            parameters=[
                ParamSpec(
                    name="dir",
                    kind=ParamType.TEXT,
                    options=[],
                    required=False,
                    unique=False,
                    default="/tmp",
                    description="The directory of the marker file",
                )
            ],
            actions=[action("validate"), action("start"), action("stop"), action("monitor", 10000)],
            capabilities=["exec:/usr/bin/touch", "exec:/usr/bin/rm", "read:{dir}"],
        )

    def validate(self, req: Request) -> None:
        if not param(req, "dir", "/tmp").startswith("/"):
            raise fail(ErrorClass.MISCONFIGURED, "dir must be an absolute path")

    def start(self, req: Request) -> None:
        self.validate(req)
        host.log(host.LogLevel.INFO, f"starting {req.resource} on {host.node_name()}")
        run("/usr/bin/touch", marker(req))

    def stop(self, req: Request) -> None:
        run("/usr/bin/rm", "-f", marker(req))

    def monitor(self, req: Request) -> MonitorState:
        try:
            capabilities.read_file(marker(req))
            return MonitorState.RUNNING
        except Err as e:
            # The host's message ends with the OS error; 2 is "no such file".
            if e.value.endswith("(os error 2)"):
                return MonitorState.NOT_RUNNING
            raise fail(ErrorClass.GENERIC, e.value)

    def promote(self, req: Request) -> None:
        raise fail(ErrorClass.UNIMPLEMENTED, "not supported by this agent")

    def demote(self, req: Request) -> None:
        raise fail(ErrorClass.UNIMPLEMENTED, "not supported by this agent")

    def notify(self, req: Request) -> None:
        raise fail(ErrorClass.UNIMPLEMENTED, "not supported by this agent")

    def reload(self, req: Request) -> None:
        raise fail(ErrorClass.UNIMPLEMENTED, "not supported by this agent")

    def recover(self, req: Request) -> None:
        raise fail(ErrorClass.UNIMPLEMENTED, "not supported by this agent")

    def promotion_score(self, req: Request) -> Optional[Promotion]:
        """Asked only of agents that implement promote: this one has no score."""
        return None
