//! The whole cluster on one console page: the node serving the page asks every
//! other node's console for its status (`/api/status`, with the operator's own
//! token, all at once and each bounded in time), and forwards to a node the
//! actions that concern its own state (`clear`).

use serde_json::{Value, json};
use std::time::Duration;

/// How long another node's console has to answer the serving node.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The other nodes' consoles: each node's name and `http` address (`None`: it
/// has none, and is shown as such), and how to ask them (HTTPS trusting the
/// cluster CA, or plain HTTP as the config says).
#[derive(Clone)]
pub struct Peers {
    /// Name and address of each other node.
    pub nodes: Vec<(String, Option<String>)>,
    /// The client.
    pub client: crate::node::tls::Client,
}

/// A console's answer: its HTTP status and JSON, or why there is none.
fn read(
    addr: &str,
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, Value), String> {
    let mut resp = sent.map_err(|e| format!("its console at {addr} does not answer: {e}"))?;
    let code = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("its console at {addr}: {e}"))?;
    let value = serde_json::from_str(&text)
        .map_err(|_| format!("{addr} answered HTTP {code}, not as a baton console"))?;
    Ok((code, value))
}

impl Peers {
    /// Node `name`'s console address.
    pub fn address(&self, name: &str) -> Option<Result<&str, String>> {
        let (_, addr) = self.nodes.iter().find(|(n, _)| n == name)?;
        Some(addr.as_deref().ok_or_else(|| {
            format!("node {name} has no http address in its [[node]]; add one to reach it here")
        }))
    }

    /// Every other node's status as its console gives it to `auth` (the
    /// `Authorization` header's value): `{"node": N, "status": S}`, or
    /// `{"node": N, "error": WHY}` when it does not answer in time or refuses.
    pub fn statuses(&self, auth: Option<&str>) -> Vec<Value> {
        std::thread::scope(|scope| {
            let asks: Vec<_> = self
                .nodes
                .iter()
                .map(|(name, _)| (name, scope.spawn(move || self.status(name, auth))))
                .collect();
            asks.into_iter()
                .map(|(name, ask)| {
                    match ask
                        .join()
                        .unwrap_or_else(|_| Err("asking it failed".into()))
                    {
                        Ok(status) => json!({"node": name, "status": status}),
                        Err(why) => json!({"node": name, "error": why}),
                    }
                })
                .collect()
        })
    }

    fn status(&self, name: &str, auth: Option<&str>) -> Result<Value, String> {
        let addr = self.address(name).unwrap_or(Err("unknown".into()))?;
        let mut req = self.client.agent.get(self.client.url(addr, "/api/status"));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let (code, value) = read(addr, req.call())?;
        if code != 200 {
            let why = value["message"].as_str().unwrap_or("refused");
            return Err(format!("its console refused (HTTP {code}): {why}"));
        }
        Ok(value["status"].clone())
    }

    /// Send the action `body` to node `name`'s console with `auth`; its HTTP
    /// status and answer.
    pub fn forward(
        &self,
        name: &str,
        auth: Option<&str>,
        body: &[u8],
    ) -> Result<(u16, Value), String> {
        let addr = self
            .address(name)
            .ok_or_else(|| format!("node: no node is named {name:?}"))??;
        let mut req = self
            .client
            .agent
            .post(self.client.url(addr, "/api/action"))
            .header("Content-Type", "application/json");
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        read(addr, req.send(body))
    }
}
