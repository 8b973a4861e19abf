//! `tcp-check`: a health resource that is "running" while a TCP endpoint answers.
//!
//! Put it in a service after the resource it watches (or on its own, to make a
//! service depend on a backend elsewhere). start checks the endpoint once and marks
//! the resource active; monitor checks it again (with `send`/`expect`, that the
//! reply starts with the expected text); stop only clears the mark.

use crate::reading::{ensure_dir, millis, required, state_file, text};
use baton_plugin_api::{
    Action, ActionSpec, AgentError, CONTRACT_VERSION, Metadata, MonitorState, ParamSpec, ParamType,
    Request, ResourceAgent,
};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

inventory::submit! {
    crate::BuiltinAgent { name: "tcp-check", build: || Box::new(TcpCheckAgent) }
}

/// The `tcp-check` agent.
pub struct TcpCheckAgent;

impl TcpCheckAgent {
    fn probe(&self, req: &Request) -> Result<(), AgentError> {
        let meta = self.metadata();
        let address = required(&meta, req, "address")?;
        let timeout = millis(&meta, req, "timeout_ms")?.min(req.context.timeout());
        let addr = address
            .to_socket_addrs()
            .map_err(|e| AgentError::misconfigured(format!("address {address:?}: {e}")))?
            .next()
            .ok_or_else(|| {
                AgentError::misconfigured(format!("address {address:?} resolves to nothing"))
            })?;
        let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
            AgentError::generic(format!("{address} does not accept connections: {e}"))
        })?;
        let Some(expect) = text(&meta, req, "expect") else {
            return Ok(());
        };
        let io = |e: std::io::Error| AgentError::generic(format!("{address}: {e}"));
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        if let Some(send) = text(&meta, req, "send") {
            stream
                .write_all(send.replace("\\n", "\n").as_bytes())
                .map_err(io)?;
        }
        let mut reply = Vec::new();
        let mut buf = [0u8; 1024];
        while reply.len() < expect.len() {
            match stream.read(&mut buf).map_err(io)? {
                0 => break,
                n => reply.extend_from_slice(&buf[..n]),
            }
        }
        if reply.starts_with(expect.as_bytes()) {
            Ok(())
        } else {
            Err(AgentError::generic(format!(
                "{address} answered {:?}, expected it to start with {expect:?}",
                String::from_utf8_lossy(&reply)
            )))
        }
    }
}

impl ResourceAgent for TcpCheckAgent {
    fn metadata(&self) -> Metadata {
        let p = ParamSpec::new;
        Metadata {
            name: "tcp-check".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract: CONTRACT_VERSION,
            shortdesc: "Healthy while a TCP endpoint answers".into(),
            longdesc: "Connects to address; with expect, sends send (\\n for newline) and checks \
                       that the reply starts with expect."
                .into(),
            parameters: vec![
                p(
                    "address",
                    ParamType::String,
                    true,
                    None,
                    "HOST:PORT to connect to",
                ),
                p(
                    "timeout_ms",
                    ParamType::Integer,
                    false,
                    Some("1000"),
                    "Connect and read timeout",
                ),
                p(
                    "send",
                    ParamType::String,
                    false,
                    None,
                    "Text to send after connecting",
                ),
                p(
                    "expect",
                    ParamType::String,
                    false,
                    None,
                    "Text the reply must start with",
                ),
                p(
                    "state_dir",
                    ParamType::String,
                    false,
                    Some("/run/baton/tcp-check"),
                    "Directory for the active mark",
                ),
            ],
            actions: vec![
                ActionSpec::new(Action::Validate, 5_000),
                ActionSpec::new(Action::Start, 5_000),
                ActionSpec::new(Action::Stop, 5_000),
                ActionSpec::monitor(5_000, 5_000),
            ],
            capabilities: vec![],
        }
    }

    fn validate(&self, req: &Request) -> Result<(), AgentError> {
        let meta = self.metadata();
        let address = required(&meta, req, "address")?;
        if address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(AgentError::misconfigured(format!(
                "address {address:?} is not HOST:PORT"
            )));
        }
        millis(&meta, req, "timeout_ms").map(|_| ())
    }

    fn start(&self, req: &Request) -> Result<(), AgentError> {
        self.validate(req)?;
        self.probe(req)?;
        let mark = state_file(&self.metadata(), req, "active")?;
        ensure_dir(&mark)?;
        fs::write(&mark, b"")
            .map_err(|e| AgentError::permission(format!("cannot write {}: {e}", mark.display())))
    }

    fn stop(&self, req: &Request) -> Result<(), AgentError> {
        let mark = state_file(&self.metadata(), req, "active")?;
        match fs::remove_file(&mark) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AgentError::permission(
                format!("cannot remove {}: {e}", mark.display()),
            )),
            _ => Ok(()),
        }
    }

    fn monitor(&self, req: &Request) -> Result<MonitorState, AgentError> {
        let mark = state_file(&self.metadata(), req, "active")?;
        if !mark.exists() {
            return Ok(MonitorState::NotRunning);
        }
        self.probe(req).map(|()| MonitorState::Running)
    }
}
