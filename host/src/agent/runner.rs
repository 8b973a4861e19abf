//! The native agent runner: a child process (`baton agent-runner LIBRARY`) that
//! loads one native agent library and answers requests over its stdin/stdout.
//!
//! Protocol: frames of a 4-byte big-endian length followed by that many bytes of
//! JSON. The runner speaks first with [`RunnerMessage::Hello`] (protocol number,
//! contract version, meta-data) or [`RunnerMessage::LoadFailed`]; then for each
//! [`Request`] frame it answers one [`RunnerMessage::Reply`].
//!
//! Rationale: a segfault, abort or runaway allocation in vendor code kills this
//! process, not the node's membership; the host sees the pipe close, records the
//! crash with its signal, and restarts the runner with backoff.

use baton_agent_abi::NativeLibrary;
use baton_plugin_api::{AgentError, ContractVersion, Metadata, Outcome, Request};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::Path;

/// The runner protocol version; host and runner refuse each other on mismatch.
pub const PROTOCOL: u32 = 1;

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 16 << 20;

/// What the runner sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunnerMessage {
    /// The library loaded.
    Hello {
        /// [`PROTOCOL`] of the runner.
        protocol: u32,
        /// The contract version the library was built for.
        contract: ContractVersion,
        /// The agent's meta-data.
        metadata: Box<Metadata>,
    },
    /// The library did not load; the message names the file and the fix.
    LoadFailed {
        /// Why.
        message: String,
    },
    /// The answer to one request.
    Reply(Result<Outcome, AgentError>),
}

/// Write one frame with a single write, so the reader wakes once per frame.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("frame too large"))?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    w.write_all(&frame)?;
    w.flush()
}

/// Read one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

fn send(out: &mut impl Write, msg: &RunnerMessage) -> io::Result<()> {
    let json = serde_json::to_vec(msg).map_err(io::Error::other)?;
    write_frame(out, &json)
}

/// The runner's main loop. Returns when the host closes stdin.
pub fn run(library: &Path) -> anyhow::Result<()> {
    // Keep the protocol channel away from agent code: frames go to a private
    // duplicate of stdout, and fd 1 becomes stderr, so an agent's println! lands
    // in the host's log instead of corrupting a frame.
    // SAFETY: dup/dup2 on the standard descriptors, before any other thread exists.
    let protocol_fd = unsafe {
        let fd = libc::dup(1);
        if fd < 0 || libc::dup2(2, 1) < 0 {
            anyhow::bail!("agent-runner: cannot set up its protocol channel");
        }
        fd
    };
    // SAFETY: protocol_fd is a fresh descriptor we own from here on.
    let mut out = io::BufWriter::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(protocol_fd)
    });
    let mut input = io::stdin().lock();

    let lib = match NativeLibrary::load(library) {
        Ok(lib) => lib,
        Err(e) => {
            send(
                &mut out,
                &RunnerMessage::LoadFailed {
                    message: e.to_string(),
                },
            )?;
            return Ok(());
        }
    };
    send(
        &mut out,
        &RunnerMessage::Hello {
            protocol: PROTOCOL,
            contract: lib.contract(),
            metadata: Box::new(lib.metadata().clone()),
        },
    )?;
    while let Some(frame) = read_frame(&mut input)? {
        let reply = match serde_json::from_slice::<Request>(&frame) {
            Ok(req) => lib.call(&req),
            Err(e) => Err(AgentError::generic(format!(
                "agent-runner could not decode a request: {e}"
            ))),
        };
        send(&mut out, &RunnerMessage::Reply(reply))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        write_frame(&mut buf, b"").unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn an_oversized_length_is_refused_without_allocating() {
        let bytes = u32::MAX.to_be_bytes();
        let err = read_frame(&mut &bytes[..]).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = &bytes[..];
            while let Ok(Some(frame)) = read_frame(&mut r) {
                let _ = serde_json::from_slice::<RunnerMessage>(&frame);
            }
        }
    }
}
