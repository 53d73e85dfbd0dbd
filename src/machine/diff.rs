//! Whether a new definition can be rolled out over live orders of an old one.

use std::fmt;

use super::definition::{format_duration, state_names, Definition};

/// How much a change matters to live orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Live orders keep working; behaviour for some requests changes.
    Note,
    /// Live orders would break: the new definition must not be rolled out as it is.
    Unsafe,
}

/// One difference between two definitions and what it means for live orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Unsafe or merely worth knowing.
    pub severity: Severity,
    /// What changed and why it matters.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Note => "note",
            Severity::Unsafe => "UNSAFE",
        };
        write!(f, "{tag}: {}", self.message)
    }
}

/// The verdict of `orderflow machine diff OLD NEW`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffReport {
    /// Every difference found, unsafe ones first.
    pub findings: Vec<Finding>,
}

impl DiffReport {
    /// True when no finding is unsafe.
    pub fn is_safe(&self) -> bool {
        self.findings.iter().all(|f| f.severity != Severity::Unsafe)
    }
}

/// Compares `old` (running now, orders may be in any of its states) with `new`.
pub fn diff(old: &Definition, new: &Definition) -> DiffReport {
    let mut findings = Vec::new();
    let mut add = |severity, message: String| findings.push(Finding { severity, message });

    if old.hash() == new.hash() {
        return DiffReport { findings };
    }
    if new.version() <= old.version() {
        add(
            Severity::Unsafe,
            format!(
                "the rules changed but the version did not increase ({} -> {}): instances would disagree on rules under one version; bump `version` in NEW",
                old.version(),
                new.version()
            ),
        );
    }
    let new_states = state_names(new);
    for state in old.states() {
        let Some(new_id) = new.state_id(&state.name) else {
            add(
                Severity::Unsafe,
                format!(
                    "state \"{}\" is removed or renamed, but live orders may be in it and could no longer be read; keep the state (with transitions out of it) until no order is in it",
                    state.name
                ),
            );
            continue;
        };
        let new_state = new.state(new_id);
        if new_state.terminal && !state.terminal {
            add(
                Severity::Note,
                format!(
                    "state \"{}\" becomes terminal: orders in it will accept no further transition",
                    state.name
                ),
            );
        }
        match (state.expires_after, new_state.expires_after) {
            (Some(a), Some(b)) if b < a => add(
                Severity::Note,
                format!(
                    "state \"{}\" is kept for {} instead of {}: older orders in it are forgotten at the next expiry pass",
                    state.name,
                    format_duration(b),
                    format_duration(a)
                ),
            ),
            (None, Some(b)) => add(
                Severity::Note,
                format!(
                    "state \"{}\" now expires after {}: orders already older are forgotten at the next expiry pass",
                    state.name,
                    format_duration(b)
                ),
            ),
            _ => {}
        }
    }
    for name in new_states.difference(&state_names(old)) {
        add(Severity::Note, format!("state \"{name}\" is added"));
    }
    for transition in old.transitions() {
        let Some(new_id) = new.transition_id(&transition.name) else {
            add(
                Severity::Note,
                format!(
                    "transition \"{}\" is removed: requests for it will be rejected as UNKNOWN_TRANSITION (tell the services that send it)",
                    transition.name
                ),
            );
            continue;
        };
        let new_t = new.transition(new_id);
        let old_sources: Vec<String> = transition
            .from
            .iter()
            .map(|s| old.state(*s).name.clone())
            .collect();
        let new_sources = new.source_names(new_id);
        let lost: Vec<&String> = old_sources
            .iter()
            .filter(|s| !new_sources.contains(s))
            .collect();
        if !lost.is_empty() {
            add(
                Severity::Note,
                format!(
                    "transition \"{}\" no longer applies from {:?}: such requests will be rejected as INVALID_TRANSITION",
                    transition.name, lost
                ),
            );
        }
        let old_to = &old.state(transition.to).name;
        let new_to = &new.state(new_t.to).name;
        if old_to != new_to {
            add(
                Severity::Note,
                format!(
                    "transition \"{}\" now leads to \"{new_to}\" instead of \"{old_to}\"",
                    transition.name
                ),
            );
        }
        if transition.create != new_t.create {
            add(
                Severity::Unsafe,
                format!(
                    "transition \"{}\" changes whether it creates orders: redelivered requests would be decided differently; use a new transition name",
                    transition.name
                ),
            );
        }
        if transition.park && !new_t.park {
            add(
                Severity::Note,
                format!(
                    "transition \"{}\" no longer parks: requests already parked for it stay until they apply or expire",
                    transition.name
                ),
            );
        }
    }
    for transition in new.transitions() {
        if old.transition_id(&transition.name).is_none() {
            add(
                Severity::Note,
                format!("transition \"{}\" is added", transition.name),
            );
        }
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    DiffReport { findings }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFECYCLE: &str = include_str!("../../machines/order-lifecycle.toml");

    fn parse(text: &str) -> Definition {
        Definition::parse(text, "t.toml").expect("valid definition")
    }

    fn bumped(text: &str) -> String {
        text.replace("version = 1", "version = 2")
    }

    #[test]
    fn an_identical_definition_has_no_findings() {
        let report = diff(&parse(LIFECYCLE), &parse(LIFECYCLE));
        assert!(report.is_safe());
        assert!(report.findings.is_empty());
    }

    #[test]
    fn renaming_a_state_orders_may_be_in_is_unsafe() {
        let new = bumped(LIFECYCLE).replace("\"Shipped\"", "\"InTransit\"");
        let report = diff(&parse(LIFECYCLE), &parse(&new));
        assert!(!report.is_safe());
        assert!(report.findings[0]
            .message
            .contains("state \"Shipped\" is removed or renamed"));
    }

    #[test]
    fn adding_a_transition_is_safe() {
        let new = format!(
            "{}\n[[transitions]]\nname = \"hold\"\nfrom = [\"Confirmed\"]\nto = \"Pending\"\n",
            bumped(LIFECYCLE)
        );
        let report = diff(&parse(LIFECYCLE), &parse(&new));
        assert!(report.is_safe(), "{:?}", report.findings);
        assert!(report
            .findings
            .iter()
            .any(|f| f.message.contains("\"hold\" is added")));
    }

    #[test]
    fn changing_rules_without_a_new_version_is_unsafe() {
        let new = LIFECYCLE.replace(
            "from = [\"Pending\", \"Confirmed\"]",
            "from = [\"Pending\"]",
        );
        let report = diff(&parse(LIFECYCLE), &parse(&new));
        assert!(!report.is_safe());
        assert!(report
            .findings
            .iter()
            .any(|f| f.message.contains("version did not increase")));
        assert!(report.findings.iter().any(|f| f
            .message
            .contains("\"cancel\" no longer applies from [\"Confirmed\"]")));
    }

    #[test]
    fn narrowing_sources_with_a_new_version_is_a_note() {
        let new = bumped(LIFECYCLE).replace(
            "from = [\"Pending\", \"Confirmed\"]",
            "from = [\"Pending\"]",
        );
        let report = diff(&parse(LIFECYCLE), &parse(&new));
        assert!(report.is_safe());
        assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    }

    #[test]
    fn an_added_state_is_a_note_naming_it() {
        let new = format!(
            "{}\n[[states]]\nname = \"OnHold\"\n[[transitions]]\nname = \"hold\"\nfrom = [\"Confirmed\"]\nto = \"OnHold\"\n[[transitions]]\nname = \"drop\"\nfrom = [\"OnHold\"]\nto = \"Cancelled\"\n",
            bumped(LIFECYCLE)
        );
        let report = diff(&parse(LIFECYCLE), &parse(&new));
        assert!(report.is_safe(), "{:?}", report.findings);
        let added: Vec<&str> = report
            .findings
            .iter()
            .filter(|f| f.message.starts_with("state "))
            .map(|f| f.message.as_str())
            .collect();
        assert_eq!(added, vec!["state \"OnHold\" is added"]);
    }

    #[test]
    fn findings_print_their_severity_first() {
        let new = bumped(LIFECYCLE).replace("\"Shipped\"", "\"InTransit\"");
        let report = diff(&parse(LIFECYCLE), &parse(&new));
        let printed: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
        assert!(
            printed[0].starts_with("UNSAFE: state \"Shipped\""),
            "{printed:?}"
        );
        assert!(
            printed
                .iter()
                .any(|p| p.starts_with("note: state \"InTransit\" is added")),
            "{printed:?}"
        );
    }

    #[test]
    fn a_new_retention_is_reported() {
        let new = bumped(LIFECYCLE).replace(
            "[[states]]\nname = \"Shipped\"\n",
            "[[states]]\nname = \"Shipped\"\nexpires_after = \"90d\"\n",
        );
        let report = diff(&parse(LIFECYCLE), &parse(&new));
        assert!(report.is_safe());
        assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
        assert!(report.findings[0]
            .message
            .contains("\"Shipped\" now expires after 90d"));
    }

    #[test]
    fn a_shorter_retention_is_reported() {
        let new = bumped(LIFECYCLE).replace("expires_after = \"30d\"", "expires_after = \"14d\"");
        let report = diff(&parse(LIFECYCLE), &parse(&new));
        assert!(report.is_safe());
        assert!(report.findings[0].message.contains("14d instead of 30d"));
    }
}
