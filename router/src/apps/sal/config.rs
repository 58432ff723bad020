//! The `[sal]` section: Serval service routing (the stage's rules, the controller, its place
//! in a hierarchy of controllers).

use crate::config::{d_true, invalid, Config, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

fn d_sal_rules() -> usize {
    131_072
}
fn d_registration_ttl() -> u64 {
    50
}
fn d_delay_queue() -> usize {
    1024
}
fn d_delay_timeout_ms() -> u64 {
    2000
}
fn d_cache_secs() -> u64 {
    30
}
fn d_refresh_secs() -> u64 {
    20
}
fn d_resolve_timeout_ms() -> u64 {
    500
}

/// The controller's place in a hierarchy of controllers (`[sal.hierarchy]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalHierarchyConfig {
    /// The parent controller's address (none: this controller is a root). Every prefix this
    /// controller knows is pointed to at the parent.
    #[serde(default)]
    pub parent: Option<Ipv4Addr>,
    /// How this controller resolves a service it does not know: `iterative` (follow
    /// referrals itself) or `recursive` (each controller asks on its behalf).
    #[serde(default = "d_mode")]
    pub mode: String,
    /// Lifetime of the answers this controller gives for its own registrations.
    #[serde(default = "d_cache_secs")]
    pub cache_secs: u64,
    /// How often pointer records are refreshed at the parent (below its registration TTL).
    #[serde(default = "d_refresh_secs")]
    pub refresh_secs: u64,
    /// A RESOLVE unanswered this long is resent (twice), then fails.
    #[serde(default = "d_resolve_timeout_ms")]
    pub resolve_timeout_ms: u64,
    /// Install the default rule `0/0 → DELAY` (unless one for prefix 0 is configured), so a
    /// SYN for an unknown service waits for resolution.
    #[serde(default = "d_true")]
    pub delay_unknown: bool,
}

fn d_mode() -> String {
    "iterative".into()
}

impl SalHierarchyConfig {
    pub fn mode(&self) -> Result<sal_forward::controller::ResolveMode, String> {
        use sal_forward::controller::ResolveMode;
        match self.mode.as_str() {
            "iterative" => Ok(ResolveMode::Iterative),
            "recursive" => Ok(ResolveMode::Recursive),
            m => Err(format!("{m:?}: iterative or recursive")),
        }
    }

    pub fn settings(&self) -> Result<sal_forward::controller::Hierarchy, String> {
        Ok(sal_forward::controller::Hierarchy {
            parent: self.parent,
            mode: self.mode()?,
            cache_ms: self.cache_secs * 1000,
            refresh_ms: self.refresh_secs * 1000,
            timeout_ms: self.resolve_timeout_ms,
        })
    }
}

/// One configured service rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalRuleConfig {
    /// `16385` (the original tools' decimal form: a /32), `0x…/LEN`, or `ID/LEN`.
    pub prefix: String,
    /// forward, demux, delay or drop.
    pub action: String,
    /// FORWARD targets as `ADDRESS[:WEIGHT]` (weight 0 counts as 1).
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub priority: u32,
    /// anycast (one target by weighted sampling) or all (a copy to each).
    #[serde(default)]
    pub mode: Option<String>,
}

/// Serval service routing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalConfig {
    /// Rule slots (prefixes) in the service table.
    #[serde(default = "d_sal_rules")]
    pub max_rules: usize,
    /// Run the service controller: hosts' REGISTER/UNREGISTER (to serviceID 88888) become
    /// FORWARD rules.
    #[serde(default = "d_true")]
    pub controller: bool,
    /// Seconds a registration lives without a refresh (the original: 50).
    #[serde(default = "d_registration_ttl")]
    pub registration_ttl_secs: u64,
    /// Packets the DELAY queue holds (the original: 1024).
    #[serde(default = "d_delay_queue")]
    pub delay_queue: usize,
    /// How long a delayed packet waits for its service to resolve.
    #[serde(default = "d_delay_timeout_ms")]
    pub delay_timeout_ms: u64,
    #[serde(default)]
    pub rules: Vec<SalRuleConfig>,
    /// More rules, one per line: `PREFIX ACTION [ADDRESS[:WEIGHT]...] [priority=N] [mode=all]`
    /// (`#` starts a comment), for tables too large for the config file.
    #[serde(default)]
    pub rules_file: Option<std::path::PathBuf>,
    /// Resolution through a hierarchy of controllers.
    #[serde(default)]
    pub hierarchy: Option<SalHierarchyConfig>,
}

/// Parse a rules file's text (see [`SalConfig::rules_file`]); errors name the line.
pub fn parse_sal_rules(text: &str) -> Result<Vec<sal_forward::table::RuleSpec>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(prefix), Some(action)) = (words.next(), words.next()) else {
            return Err(format!("line {}: PREFIX ACTION [TARGETS] expected", n + 1));
        };
        let (mut targets, mut priority, mut mode) = (Vec::new(), 0, None);
        for w in words {
            if let Some(p) = w.strip_prefix("priority=") {
                priority = p
                    .parse()
                    .map_err(|_| format!("line {}: bad priority {p:?}", n + 1))?;
            } else if let Some(m) = w.strip_prefix("mode=") {
                mode = Some(m);
            } else {
                targets.push(w.to_string());
            }
        }
        out.push(
            sal_forward::table::RuleSpec::parse(prefix, action, &targets, priority, mode)
                .map_err(|e| format!("line {}: {e}", n + 1))?,
        );
    }
    Ok(out)
}

impl SalRuleConfig {
    /// The rule as the service table takes it.
    pub fn parse(&self) -> Result<sal_forward::table::RuleSpec, String> {
        sal_forward::table::RuleSpec::parse(
            &self.prefix,
            &self.action,
            &self.targets,
            self.priority,
            self.mode.as_deref(),
        )
    }
}

impl SalConfig {
    /// Checks beyond the TOML schema; errors name the key.
    pub fn validate(&self, cfg: &Config) -> Result<(), ConfigError> {
        if !(16..=1 << 24).contains(&self.max_rules) {
            return Err(invalid("sal.max_rules", "must be 16..=16777216"));
        }
        for (i, r) in self.rules.iter().enumerate() {
            if let Err(e) = r.parse() {
                return Err(invalid(format!("sal.rules[{i}]"), e));
            }
        }
        if let Some(h) = &self.hierarchy {
            if let Err(e) = h.mode() {
                return Err(invalid("sal.hierarchy.mode", e));
            }
            if !self.controller {
                return Err(invalid(
                    "sal.hierarchy",
                    "needs the controller (sal.controller = true)",
                ));
            }
            if h.refresh_secs == 0 || h.refresh_secs >= self.registration_ttl_secs.max(1) {
                return Err(invalid(
                    "sal.hierarchy.refresh_secs",
                    "must be at least 1 and below sal.registration_ttl_secs (the parent's TTL)",
                ));
            }
            if h.resolve_timeout_ms == 0 {
                return Err(invalid(
                    "sal.hierarchy.resolve_timeout_ms",
                    "must be at least 1",
                ));
            }
            if h.parent
                .is_some_and(|p| cfg.addresses().iter().any(|(_, a, _)| *a == p))
            {
                return Err(invalid(
                    "sal.hierarchy.parent",
                    "is one of this router's addresses",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::GOOD;

    #[test]
    fn sal_hierarchy_section() {
        let with = |h: &str| {
            Config::parse(&format!(
                "{GOOD}\n[sal]\nregistration_ttl_secs = 5\n[sal.hierarchy]\n{h}"
            ))
        };
        let c = with("parent = \"10.0.2.9\"\nmode = \"recursive\"\nrefresh_secs = 2").unwrap();
        let h = c.apps.sal.unwrap().hierarchy.unwrap().settings().unwrap();
        assert_eq!(h.parent, Some("10.0.2.9".parse().unwrap()));
        assert_eq!(h.mode, sal_forward::controller::ResolveMode::Recursive);
        assert_eq!(
            (h.cache_ms, h.refresh_ms, h.timeout_ms),
            (30_000, 2000, 500)
        );
        let err = |h: &str| with(h).unwrap_err().to_string();
        assert!(err("mode = \"both\"\nrefresh_secs = 2").contains("sal.hierarchy.mode"));
        assert!(err("refresh_secs = 5").contains("sal.hierarchy.refresh_secs"));
        assert!(err("parent = \"10.0.1.1\"\nrefresh_secs = 2").contains("sal.hierarchy.parent"));
        assert!(err("refresh_secs = 2\nresolve_timeout_ms = 0").contains("resolve_timeout_ms"));
    }
}
