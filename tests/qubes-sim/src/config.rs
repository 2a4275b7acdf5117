//! The stand-in's configuration: the qubes and their `qvm-features`, as a user sets them in
//! dom0.
//!
//! ```toml
//! [qube.storage]
//! features = { "cloudstore.role" = "storage", "cloudstore.volumes" = "work photos" }
//! [qube.transfer]
//! netvm = true
//! features = { "cloudstore.role" = "transfer", "cloudstore.remote" = "/srv/cloud" }
//! ```
//!
//! Per qube: `netvm` (`true`, `false` or a qube name; default none, as a qube whose
//! netvm property is empty), `features` (name → string, like `qvm-features`), `tags`
//! (like `qvm-tags`, for `@tag:` policy rules), `env` (name → string: extra environment of
//! the qube's cloudstore agent, as a unit drop-in's `Environment=` gives it, e.g.
//! `env = { "CLOUDSTORE_TRANSFER_POLL_SECS" = "1" }`).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Longest qube name (core-admin qubes/vm/__init__.py `validate_name`).
pub const MAX_QUBE_NAME: usize = 31;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    #[serde(default)]
    pub qube: BTreeMap<String, QubeConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum NetVm {
    Flag(bool),
    Name(String),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct QubeConfig {
    #[serde(default)]
    pub netvm: Option<NetVm>,
    #[serde(default)]
    pub features: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl QubeConfig {
    /// Whether the qube has a network: a netvm set (`true` or a name).
    pub fn has_network(&self) -> bool {
        match &self.netvm {
            None | Some(NetVm::Flag(false)) => false,
            Some(NetVm::Flag(true)) => true,
            Some(NetVm::Name(n)) => !n.is_empty(),
        }
    }

    pub fn role(&self) -> Option<&str> {
        self.features.get("cloudstore.role").map(String::as_str)
    }
}

/// Qube names as core-admin accepts them: a letter, then letters, digits, `_.-`; at most
/// 31 characters; not `none` or `default`, which qvm-prefs reserves.
pub fn validate_qube_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_QUBE_NAME
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(format!(
            "invalid qube name {name:?}: a letter first, then letters, digits, '_', '.' or '-', at most {MAX_QUBE_NAME} characters"
        ));
    }
    if matches!(name, "none" | "default" | "dom0") || name.ends_with("-dm") {
        return Err(format!("invalid qube name {name:?}: reserved by Qubes"));
    }
    Ok(())
}

impl SimConfig {
    /// Reads and checks a configuration file; every error names the file.
    pub fn load(path: &Path) -> Result<SimConfig> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        SimConfig::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<SimConfig> {
        let c: SimConfig = toml::from_str(text).context("not a valid qubes-sim configuration")?;
        if c.qube.is_empty() {
            bail!("no qubes: add at least one [qube.NAME] table");
        }
        for (name, q) in &c.qube {
            validate_qube_name(name).map_err(anyhow::Error::msg)?;
            if let Some(NetVm::Name(n)) = &q.netvm {
                if !n.is_empty() {
                    validate_qube_name(n)
                        .map_err(|e| anyhow::anyhow!("qube {name}: netvm: {e}"))?;
                }
            }
            for k in q.env.keys() {
                if k.is_empty()
                    || k.starts_with(|c: char| c.is_ascii_digit())
                    || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    bail!("qube {name}: invalid environment variable name {k:?} (letters, digits and '_', not starting with a digit)");
                }
            }
            for t in &q.tags {
                if t.is_empty()
                    || !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
                {
                    bail!("qube {name}: invalid tag {t:?} (letters, digits, '_' and '-')");
                }
            }
        }
        Ok(c)
    }

    /// The document `python3 -m cloudstore_dom0.mapping policy|check` reads.
    pub fn mapping_json(&self) -> serde_json::Value {
        let mut qubes = serde_json::Map::new();
        for (name, q) in &self.qube {
            let netvm = match &q.netvm {
                None => serde_json::Value::Null,
                Some(NetVm::Flag(b)) => serde_json::Value::Bool(*b),
                Some(NetVm::Name(n)) => serde_json::Value::String(n.clone()),
            };
            qubes.insert(
                name.clone(),
                serde_json::json!({ "netvm": netvm, "features": q.features }),
            );
        }
        serde_json::json!({ "qube": qubes })
    }

    /// Qubes in start order: storage first (its sockets must exist before anyone calls
    /// them; the storage unit is ordered before qubes-qrexec-agent), then the rest.
    pub fn start_order(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.qube.keys().map(String::as_str).collect();
        names.sort_by_key(|n| (self.qube[*n].role() != Some("storage"), *n));
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE: &str = r#"
[qube.storage]
features = { "cloudstore.role" = "storage", "cloudstore.volumes" = "work photos" }
[qube.transfer]
netvm = true
features = { "cloudstore.role" = "transfer", "cloudstore.remote" = "/srv/cloud" }
[qube.my-work]
features = { "cloudstore.role" = "consumer", "cloudstore.volumes" = "work" }
[qube.my-photos]
features = { "cloudstore.role" = "consumer", "cloudstore.volumes" = "photos" }
"#;

    #[test]
    fn the_issue_example_parses() {
        let c = SimConfig::parse(ISSUE).unwrap();
        assert_eq!(c.qube.len(), 4);
        assert!(c.qube["transfer"].has_network());
        assert!(!c.qube["storage"].has_network());
        assert_eq!(c.start_order()[0], "storage");
        let j = c.mapping_json();
        assert_eq!(
            j["qube"]["transfer"]["netvm"],
            serde_json::Value::Bool(true)
        );
        assert_eq!(j["qube"]["storage"]["netvm"], serde_json::Value::Null);
        assert_eq!(
            j["qube"]["my-work"]["features"]["cloudstore.volumes"],
            "work"
        );
    }

    #[test]
    fn bad_configurations_are_named() {
        for (text, want) in [
            ("", "no qubes"),
            ("[qube.1abc]\n", "invalid qube name"),
            ("[qube.dom0]\n", "reserved"),
            ("[qube.a]\nnetvm = 3\n", "not a valid"),
            ("[qube.a]\nfeatures = { x = 1 }\n", "not a valid"),
            ("[qube.a]\ncolour = \"red\"\n", "not a valid"),
            ("[qube.a]\ntags = [\"a b\"]\n", "invalid tag"),
            ("[qube.a]\nnetvm = \"-x\"\n", "netvm"),
            (
                "[qube.a]\nenv = { \"A=B\" = \"1\" }\n",
                "invalid environment",
            ),
            ("[qube.a]\nenv = { X = 1 }\n", "not a valid"),
        ] {
            let e = format!("{:#}", SimConfig::parse(text).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
