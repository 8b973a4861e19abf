//! Built for a contract 2.0 that no host supports: the host must refuse it at load
//! with a message naming both versions.
wit_bindgen::generate!({ path: "wit", world: "resource-agent" });

struct Future;

impl exports::baton::agent::agent::Guest for Future {
    fn describe() -> String {
        "from the future".into()
    }
}

export!(Future);
