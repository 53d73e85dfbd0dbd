//! A state-machine definition: parsed from TOML, validated as a whole, compiled into lookup tables.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hasher of the name tables.
type NameHasher = foldhash::fast::RandomState;

/// Index of a state within its [`Definition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateId(pub u16);

/// Index of a transition within its [`Definition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransitionId(pub u16);

/// The most states or transitions a definition may have (ids are `u16`, tables are dense).
pub const MAX_ITEMS: usize = 1024;

/// The file as written: what serde reads before validation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    name: String,
    version: u32,
    #[serde(default)]
    states: Vec<RawState>,
    #[serde(default)]
    transitions: Vec<RawTransition>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    name: String,
    #[serde(default)]
    terminal: bool,
    #[serde(default)]
    expires_after: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTransition {
    name: String,
    #[serde(default)]
    create: bool,
    #[serde(default)]
    from: Vec<String>,
    to: String,
    #[serde(default)]
    park: bool,
}

/// One state of a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The state's name, as requests, records and diagrams spell it.
    pub name: String,
    /// A terminal state accepts no transition.
    pub terminal: bool,
    /// How long an order is kept in this state before it is forgotten.
    pub expires_after: Option<Duration>,
}

/// One named transition of a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The transition's name, as requests spell it.
    pub name: String,
    /// True when this transition creates an order (it has no source state).
    pub create: bool,
    /// The states an order may be in for this transition to apply, in definition order.
    pub from: Vec<StateId>,
    /// The state an accepted transition moves the order to.
    pub to: StateId,
    /// Whether a request arriving before the order reached a source state may wait for it.
    pub park: bool,
}

/// A validated state machine: states, transitions and the tables `decide` looks things up in.
#[derive(Debug, Clone)]
pub struct Definition {
    name: String,
    version: u32,
    hash: String,
    states: Vec<State>,
    transitions: Vec<Transition>,
    // foldhash, not SipHash: every request looks its transition name up here. The keys come from
    // the definition, so request data cannot steer the table's layout.
    state_by_name: HashMap<String, StateId, NameHasher>,
    transition_by_name: HashMap<String, TransitionId, NameHasher>,
    /// `allowed[t * states.len() + s]`: transition `t` applies to an order in state `s`.
    allowed: Vec<bool>,
    /// `ahead[t * states.len() + s]`: from state `s`, one or more transitions lead to a source
    /// state of transition `t` (so a request for `t` may be early rather than wrong).
    ahead: Vec<bool>,
}

/// One thing wrong with a definition file, with where and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The item the problem is about, e.g. `transition "ship"`.
    pub item: String,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (fix: {})", self.item, self.message, self.fix)
    }
}

/// Why a definition could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The file could not be read at all.
    #[error("cannot read state-machine definition {file}: {source} (check the path in `definition` of the config)")]
    Read {
        /// The file that was asked for.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid definition; every problem found is listed.
    #[error("{file}: {} problem(s) in the state-machine definition:\n{}", problems.len(), render_problems(problems))]
    Invalid {
        /// The file (or label) the definition came from.
        file: String,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl DefinitionError {
    /// The problems found, empty when the file could not be read.
    pub fn problems(&self) -> &[Problem] {
        match self {
            DefinitionError::Read { .. } => &[],
            DefinitionError::Invalid { problems, .. } => problems,
        }
    }
}

/// Parses a duration such as `30d`, `12h`, `90m` or `45s`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(unit_at);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        "d" => number.checked_mul(86_400)?,
        _ => return None,
    };
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// Formats a duration the way definition files write it (largest whole unit).
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds % size == 0 {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Definition {
    /// Reads and validates a definition file.
    pub fn load(path: &Path) -> Result<Definition, DefinitionError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
            file: file.clone(),
            source,
        })?;
        Definition::parse(&text, &file)
    }

    /// Parses and validates definition text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Definition, DefinitionError> {
        let invalid = |problems: Vec<Problem>| DefinitionError::Invalid {
            file: file.to_string(),
            problems,
        };
        if text.trim().is_empty() {
            return Err(invalid(vec![Problem {
                item: "file".into(),
                message: "the file is empty".into(),
                fix: "write name, version, [[states]] and [[transitions]] (see machines/order-lifecycle.toml)".into(),
            }]));
        }
        let raw: RawDefinition = toml::from_str(text).map_err(|e| {
            invalid(vec![Problem {
                item: "syntax".into(),
                message: e.to_string().trim().replace('\n', " "),
                fix: "correct the TOML at the position shown; fields are name, version, [[states]] (name, terminal, expires_after) and [[transitions]] (name, create, from, to, park)".into(),
            }])
        })?;
        compile(raw).map_err(invalid)
    }

    /// The definition's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition's version as written in the file.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Hex SHA-256 of the definition's content (comments and layout do not count).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The first 16 hex digits of [`Definition::hash`], for records and logs.
    pub fn short_hash(&self) -> &str {
        &self.hash[..16]
    }

    /// All states in definition order.
    pub fn states(&self) -> &[State] {
        &self.states
    }

    /// All transitions in definition order.
    pub fn transitions(&self) -> &[Transition] {
        &self.transitions
    }

    /// The state with this id.
    pub fn state(&self, id: StateId) -> &State {
        &self.states[usize::from(id.0)]
    }

    /// The transition with this id.
    pub fn transition(&self, id: TransitionId) -> &Transition {
        &self.transitions[usize::from(id.0)]
    }

    /// Looks a state up by name.
    pub fn state_id(&self, name: &str) -> Option<StateId> {
        self.state_by_name.get(name).copied()
    }

    /// Looks a state up by its name's bytes; the hot path of decoding state records, so small
    /// definitions are scanned (faster than hashing) and large ones hashed.
    pub fn state_id_bytes(&self, name: &[u8]) -> Option<StateId> {
        if self.states.len() <= 32 {
            self.states
                .iter()
                .position(|s| s.name.as_bytes() == name)
                .map(|i| StateId(i as u16))
        } else {
            std::str::from_utf8(name)
                .ok()
                .and_then(|n| self.state_id(n))
        }
    }

    /// Looks a transition up by name.
    pub fn transition_id(&self, name: &str) -> Option<TransitionId> {
        self.transition_by_name.get(name).copied()
    }

    /// Whether `transition` applies to an order in `state`.
    pub fn allows(&self, transition: TransitionId, state: StateId) -> bool {
        self.allowed[usize::from(transition.0) * self.states.len() + usize::from(state.0)]
    }

    /// Whether an order in `state` can still reach a source state of `transition` (the request is
    /// early, not wrong).
    pub fn sources_ahead(&self, transition: TransitionId, state: StateId) -> bool {
        self.ahead[usize::from(transition.0) * self.states.len() + usize::from(state.0)]
    }

    /// The names of a transition's source states.
    pub fn source_names(&self, transition: TransitionId) -> Vec<String> {
        self.transition(transition)
            .from
            .iter()
            .map(|s| self.state(*s).name.clone())
            .collect()
    }
}

fn compile(raw: RawDefinition) -> Result<Definition, Vec<Problem>> {
    let mut problems = Vec::new();
    macro_rules! problem {
        ($item:expr, $message:expr, $fix:expr $(,)?) => {
            problems.push(Problem {
                item: $item,
                message: $message,
                fix: $fix.to_string(),
            })
        };
    }

    if raw.name.trim().is_empty() {
        problem!(
            "name".into(),
            "the definition has no name".into(),
            "set name = \"...\" at the top of the file",
        );
    }
    if raw.version == 0 {
        problem!(
            "version".into(),
            "version is 0".into(),
            "versions start at 1; increase it with every change",
        );
    }
    if raw.states.is_empty() {
        problem!(
            "states".into(),
            "no states are defined".into(),
            "add [[states]] tables, each with a name",
        );
    }
    if raw.states.len() > MAX_ITEMS || raw.transitions.len() > MAX_ITEMS {
        problem!(
            "definition".into(),
            format!("more than {MAX_ITEMS} states or transitions"),
            "split the machine; orderflow keeps ids in 16 bits and dense tables",
        );
        return Err(problems);
    }

    let mut state_by_name: HashMap<String, StateId, NameHasher> = HashMap::default();
    let mut states = Vec::with_capacity(raw.states.len());
    for (index, raw_state) in raw.states.iter().enumerate() {
        let item = format!("state \"{}\"", raw_state.name);
        if !valid_name(&raw_state.name) {
            problem!(
                item.clone(),
                "invalid state name".into(),
                "use 1 to 64 letters, digits, '_' or '-'",
            );
        }
        if state_by_name
            .insert(raw_state.name.clone(), StateId(index as u16))
            .is_some()
        {
            problem!(
                item.clone(),
                "the state is defined twice".into(),
                "remove or rename one of the two [[states]] tables",
            );
        }
        let expires_after = match &raw_state.expires_after {
            None => None,
            Some(text) => match parse_duration(text) {
                Some(d) => Some(d),
                None => {
                    problem!(
                        item.clone(),
                        format!("expires_after = \"{text}\" is not a duration"),
                        "write a positive whole number with a unit: s, m, h or d (e.g. \"30d\")",
                    );
                    None
                }
            },
        };
        states.push(State {
            name: raw_state.name.clone(),
            terminal: raw_state.terminal,
            expires_after,
        });
    }

    let mut transition_by_name: HashMap<String, TransitionId, NameHasher> = HashMap::default();
    let mut transitions = Vec::with_capacity(raw.transitions.len());
    for (index, raw_t) in raw.transitions.iter().enumerate() {
        let item = format!("transition \"{}\"", raw_t.name);
        if !valid_name(&raw_t.name) {
            problem!(
                item.clone(),
                "invalid transition name".into(),
                "use 1 to 64 letters, digits, '_' or '-'",
            );
        }
        if transition_by_name
            .insert(raw_t.name.clone(), TransitionId(index as u16))
            .is_some()
        {
            problem!(
                item.clone(),
                "duplicate transition name".into(),
                "each transition needs its own name: rename or merge the two (list several states in `from` instead)",
            );
        }
        let to = match state_by_name.get(&raw_t.to) {
            Some(id) => Some(*id),
            None => {
                problem!(
                    item.clone(),
                    format!("`to` names unknown state \"{}\"", raw_t.to),
                    "add that state under [[states]] or correct the name",
                );
                None
            }
        };
        let mut from = Vec::with_capacity(raw_t.from.len());
        for source in &raw_t.from {
            match state_by_name.get(source) {
                Some(id) if from.contains(id) => problem!(
                    item.clone(),
                    format!("`from` lists \"{source}\" twice"),
                    "list each source state once",
                ),
                Some(id) => {
                    if states[usize::from(id.0)].terminal {
                        problem!(
                            item.clone(),
                            format!("`from` lists terminal state \"{source}\""),
                            "terminal states accept no transition: remove it from `from` or make the state non-terminal",
                        );
                    }
                    from.push(*id);
                }
                None => problem!(
                    item.clone(),
                    format!("`from` names unknown state \"{source}\""),
                    "add that state under [[states]] or correct the name",
                ),
            }
        }
        if raw_t.create && !raw_t.from.is_empty() {
            problem!(
                item.clone(),
                "a create transition has `from` states".into(),
                "a create transition starts a new order: remove `from`, or remove `create = true`",
            );
        }
        if !raw_t.create && raw_t.from.is_empty() {
            problem!(
                item.clone(),
                "the transition has no `from` states".into(),
                "list the states it applies to in `from`, or mark it `create = true` if it creates orders",
            );
        }
        if raw_t.create && raw_t.park {
            problem!(
                item.clone(),
                "a create transition cannot be parked".into(),
                "remove `park = true`: there is no earlier state to wait for",
            );
        }
        if let Some(to) = to {
            transitions.push(Transition {
                name: raw_t.name.clone(),
                create: raw_t.create,
                from,
                to,
                park: raw_t.park,
            });
        }
    }

    if !raw.transitions.iter().any(|t| t.create) {
        problem!(
            "transitions".into(),
            "no initial transition: nothing creates an order".into(),
            "add a transition with `create = true` and a `to` state, e.g. name = \"create\", to = \"Pending\"",
        );
    }
    if !raw.states.is_empty() && !raw.states.iter().any(|s| s.terminal) {
        problem!(
            "states".into(),
            "no terminal state".into(),
            "mark the states where an order's life ends with `terminal = true`",
        );
    }

    // Reachability only makes sense once every name resolved.
    if problems.is_empty() {
        let reachable = reachable_states(&states, &transitions);
        let ends = states_reaching_terminal(&states, &transitions);
        for (index, state) in states.iter().enumerate() {
            if !reachable[index] {
                problem!(
                    format!("state \"{}\"", state.name),
                    "unreachable: no sequence of transitions from a create transition leads to it"
                        .into(),
                    "add a transition to it, or remove the state",
                );
            } else if !ends[index] {
                problem!(
                    format!("state \"{}\"", state.name),
                    "no terminal state can be reached from it: orders in it never finish".into(),
                    "add a transition from it towards a terminal state, or mark it `terminal = true`",
                );
            }
        }
    }

    if !problems.is_empty() {
        return Err(problems);
    }

    let mut allowed = vec![false; transitions.len() * states.len()];
    for (t, transition) in transitions.iter().enumerate() {
        for source in &transition.from {
            allowed[t * states.len() + usize::from(source.0)] = true;
        }
    }
    let ahead = sources_ahead(&states, &transitions);
    let hash = content_hash(&raw);
    Ok(Definition {
        name: raw.name,
        version: raw.version,
        hash,
        states,
        transitions,
        state_by_name,
        transition_by_name,
        allowed,
        ahead,
    })
}

/// For each (transition, state): can an order in that state still reach one of the transition's
/// source states by one or more transitions?
fn sources_ahead(states: &[State], transitions: &[Transition]) -> Vec<bool> {
    let n = states.len();
    // successors[s]: states reachable from s in one or more steps.
    let mut successors = vec![vec![false; n]; n];
    for (s, row) in successors.iter_mut().enumerate() {
        let mut queue: VecDeque<usize> = transitions
            .iter()
            .filter(|t| t.from.iter().any(|f| usize::from(f.0) == s))
            .map(|t| usize::from(t.to.0))
            .collect();
        while let Some(next) = queue.pop_front() {
            if std::mem::replace(&mut row[next], true) {
                continue;
            }
            for t in transitions
                .iter()
                .filter(|t| t.from.iter().any(|f| usize::from(f.0) == next))
            {
                queue.push_back(usize::from(t.to.0));
            }
        }
    }
    let mut ahead = vec![false; transitions.len() * n];
    for (t, transition) in transitions.iter().enumerate() {
        for (s, row) in successors.iter().enumerate() {
            ahead[t * n + s] = transition.from.iter().any(|f| row[usize::from(f.0)]);
        }
    }
    ahead
}

fn reachable_states(states: &[State], transitions: &[Transition]) -> Vec<bool> {
    let mut reachable = vec![false; states.len()];
    let mut queue: VecDeque<StateId> = transitions
        .iter()
        .filter(|t| t.create)
        .map(|t| t.to)
        .collect();
    while let Some(state) = queue.pop_front() {
        if std::mem::replace(&mut reachable[usize::from(state.0)], true) {
            continue;
        }
        for t in transitions.iter().filter(|t| t.from.contains(&state)) {
            if !reachable[usize::from(t.to.0)] {
                queue.push_back(t.to);
            }
        }
    }
    reachable
}

fn states_reaching_terminal(states: &[State], transitions: &[Transition]) -> Vec<bool> {
    let mut ends: Vec<bool> = states.iter().map(|s| s.terminal).collect();
    loop {
        let mut changed = false;
        for t in transitions {
            if ends[usize::from(t.to.0)] {
                for source in &t.from {
                    if !std::mem::replace(&mut ends[usize::from(source.0)], true) {
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            return ends;
        }
    }
}

/// SHA-256 of the definition's meaning: JSON of the parsed content, so comments, key order and
/// whitespace do not change it, and any change of rules does.
fn content_hash(raw: &RawDefinition) -> String {
    let canonical = serde_json::to_vec(raw).unwrap_or_default();
    hex::encode(Sha256::digest(&canonical))
}

/// The set of state names a definition uses, for diffs.
pub(crate) fn state_names(definition: &Definition) -> HashSet<&str> {
    definition.states.iter().map(|s| s.name.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const LIFECYCLE: &str = include_str!("../../machines/order-lifecycle.toml");

    fn problems_of(text: &str) -> Vec<Problem> {
        match Definition::parse(text, "test.toml") {
            Ok(_) => vec![],
            Err(e) => e.problems().to_vec(),
        }
    }

    fn messages(text: &str) -> String {
        problems_of(text)
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    const TINY: &str = r#"
name = "tiny"
version = 1
[[states]]
name = "Open"
[[states]]
name = "Closed"
terminal = true
[[transitions]]
name = "open"
create = true
to = "Open"
[[transitions]]
name = "close"
from = ["Open"]
to = "Closed"
"#;

    #[test]
    fn the_shipped_order_lifecycle_is_valid() {
        let d = Definition::parse(LIFECYCLE, "order-lifecycle.toml").expect("valid");
        assert_eq!(d.name(), "order-lifecycle");
        for state in [
            "Pending",
            "Confirmed",
            "Shipped",
            "OutForDelivery",
            "Delivered",
            "Cancelled",
            "Returned",
        ] {
            assert!(d.state_id(state).is_some(), "{state} missing");
        }
        for t in [
            "create",
            "confirm",
            "ship",
            "out_for_delivery",
            "deliver",
            "cancel",
            "return",
        ] {
            assert!(d.transition_id(t).is_some(), "{t} missing");
        }
    }

    #[test]
    fn states_are_found_by_the_bytes_of_their_names() {
        let d = Definition::parse(LIFECYCLE, "t").unwrap();
        for state in d.states() {
            assert_eq!(
                d.state_id_bytes(state.name.as_bytes()),
                d.state_id(&state.name)
            );
        }
        assert_eq!(d.state_id_bytes(b"Pend"), None);
        assert_eq!(d.state_id_bytes(b"\xff"), None);
        let many: String = (0..40)
            .map(|i| format!("[[states]]\nname = \"S{i}\"\nterminal = true\n[[transitions]]\nname = \"to{i}\"\nfrom = [\"Open\"]\nto = \"S{i}\"\n"))
            .collect();
        let big = Definition::parse(&format!("{TINY}\n{many}"), "big").unwrap();
        assert!(big.states().len() > 32);
        assert_eq!(big.state_id_bytes(b"S39"), big.state_id("S39"));
        assert_eq!(big.state_id_bytes(b"S40"), None);
    }

    #[test]
    fn a_minimal_machine_compiles_its_tables() {
        let d = Definition::parse(TINY, "t").expect("valid");
        let close = d.transition_id("close").unwrap();
        assert!(d.allows(close, d.state_id("Open").unwrap()));
        assert!(!d.allows(close, d.state_id("Closed").unwrap()));
        assert_eq!(d.source_names(close), vec!["Open".to_string()]);
    }

    #[test]
    fn sources_ahead_tells_early_requests_from_wrong_ones() {
        let d = Definition::parse(LIFECYCLE, "t").unwrap();
        let s = |n| d.state_id(n).unwrap();
        let t = |n| d.transition_id(n).unwrap();
        assert!(
            d.sources_ahead(t("ship"), s("Pending")),
            "Pending reaches Confirmed"
        );
        assert!(d.sources_ahead(t("deliver"), s("Pending")));
        assert!(
            !d.sources_ahead(t("ship"), s("Shipped")),
            "no way back to Confirmed"
        );
        assert!(!d.sources_ahead(t("confirm"), s("Confirmed")));
        assert!(!d.sources_ahead(t("ship"), s("Cancelled")));
        assert!(d.sources_ahead(t("return"), s("OutForDelivery")));
        assert!(!d.sources_ahead(t("cancel"), s("Shipped")));
    }

    #[test]
    fn an_empty_file_is_one_clear_problem() {
        let p = problems_of("  \n");
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("empty"));
    }

    #[test]
    fn wrong_types_are_reported_with_their_position() {
        let m = messages(&TINY.replace("version = 1", "version = \"one\""));
        assert!(m.contains("syntax") && m.contains("version"), "{m}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let m = messages(&TINY.replace("terminal = true", "terminal = true\ncolour = \"red\""));
        assert!(m.contains("colour"), "{m}");
    }

    #[test]
    fn unknown_states_are_named_for_from_and_to() {
        let text = TINY
            .replace("from = [\"Open\"]", "from = [\"Opened\"]")
            .replace("to = \"Closed\"", "to = \"Shut\"");
        let m = messages(&text);
        assert!(m.contains("unknown state \"Opened\""), "{m}");
        assert!(m.contains("unknown state \"Shut\""), "{m}");
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = format!(
            "{TINY}\n[[transitions]]\nname = \"close\"\nfrom = [\"Open\"]\nto = \"Nowhere\"\n[[states]]\nname = \"Open\"\n"
        );
        let p = problems_of(&text);
        assert!(p.len() >= 3, "{p:?}");
        assert!(p
            .iter()
            .any(|p| p.message.contains("duplicate transition name")));
        assert!(p.iter().any(|p| p.message.contains("defined twice")));
        assert!(p.iter().any(|p| p.message.contains("\"Nowhere\"")));
    }

    #[test]
    fn the_error_message_lists_every_problem_with_the_file() {
        let text = format!(
            "{TINY}\n[[transitions]]\nname = \"close\"\nfrom = [\"Open\"]\nto = \"Nowhere\"\n"
        );
        let err = Definition::parse(&text, "shop.toml").unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("shop.toml: 2 problem(s)"), "{message}");
        for problem in err.problems() {
            assert!(message.contains(&format!("  - {problem}")), "{message}");
        }
    }

    #[test]
    fn names_must_be_short_words() {
        for bad in ["Out For Delivery", "", "ünïcode", &"x".repeat(65)] {
            let text = TINY
                .replace("name = \"Closed\"", &format!("name = \"{bad}\""))
                .replace("to = \"Closed\"", &format!("to = \"{bad}\""));
            let m = messages(&text);
            assert!(m.contains("invalid state name"), "{bad:?}: {m}");
        }
        assert!(
            messages(&TINY.replace("name = \"close\"", "name = \"close it\""))
                .contains("invalid transition name")
        );
        for good in ["Out-For_Delivery2", &"x".repeat(64)] {
            let text = TINY
                .replace("name = \"Closed\"", &format!("name = \"{good}\""))
                .replace("to = \"Closed\"", &format!("to = \"{good}\""));
            assert!(problems_of(&text).is_empty(), "{good:?}");
        }
    }

    #[test]
    fn a_duplicate_transition_name_is_a_problem() {
        let text = format!(
            "{TINY}\n[[transitions]]\nname = \"close\"\nfrom = [\"Open\"]\nto = \"Closed\"\n"
        );
        let p = problems_of(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].item, "transition \"close\"");
        assert!(p[0].fix.contains("rename"));
    }

    #[test]
    fn a_machine_without_a_create_transition_is_refused() {
        let m = messages(&TINY.replace("create = true", "from = [\"Closed\"]"));
        assert!(m.contains("no initial transition"), "{m}");
    }

    #[test]
    fn an_unreachable_state_is_a_problem() {
        let text = format!("{TINY}\n[[states]]\nname = \"Limbo\"\nterminal = true\n");
        let p = problems_of(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].item, "state \"Limbo\"");
        assert!(p[0].message.contains("unreachable"));
    }

    #[test]
    fn a_state_that_cannot_finish_is_a_problem() {
        let text = format!(
            "{TINY}\n[[states]]\nname = \"Stuck\"\n[[transitions]]\nname = \"stick\"\nfrom = [\"Open\"]\nto = \"Stuck\"\n"
        );
        let p = problems_of(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].item, "state \"Stuck\"");
        assert!(p[0].message.contains("no terminal state can be reached"));
    }

    #[test]
    fn a_terminal_state_cannot_be_a_source() {
        let text = format!(
            "{TINY}\n[[transitions]]\nname = \"reopen\"\nfrom = [\"Closed\"]\nto = \"Open\"\n"
        );
        let m = messages(&text);
        assert!(m.contains("terminal state \"Closed\""), "{m}");
    }

    #[test]
    fn a_machine_without_terminal_states_is_refused() {
        let p = problems_of(&TINY.replace("terminal = true", ""));
        assert!(
            p.iter()
                .any(|p| p.item == "states" && p.message == "no terminal state"),
            "{p:?}"
        );
    }

    #[test]
    fn a_machine_without_states_says_so_and_nothing_about_terminals() {
        let p = problems_of(
            "name = \"x\"\nversion = 1\n[[transitions]]\nname = \"c\"\ncreate = true\nto = \"A\"\n",
        );
        assert!(
            p.iter().any(|p| p.message == "no states are defined"),
            "{p:?}"
        );
        assert!(!p.iter().any(|p| p.message == "no terminal state"), "{p:?}");
    }

    #[test]
    fn a_source_listed_twice_is_a_problem() {
        let m = messages(&TINY.replace("from = [\"Open\"]", "from = [\"Open\", \"Open\"]"));
        assert!(m.contains("`from` lists \"Open\" twice"), "{m}");
    }

    /// `Open` plus `states - 1` terminal states, each reached from `Open`; `states` transitions.
    fn fan_out(states: usize) -> String {
        let mut text = String::from("name = \"fan\"\nversion = 1\n[[states]]\nname = \"Open\"\n[[transitions]]\nname = \"open\"\ncreate = true\nto = \"Open\"\n");
        for i in 1..states {
            text.push_str(&format!("[[states]]\nname = \"S{i}\"\nterminal = true\n[[transitions]]\nname = \"t{i}\"\nfrom = [\"Open\"]\nto = \"S{i}\"\n"));
        }
        text
    }

    #[test]
    fn definitions_may_have_up_to_max_items_states_and_transitions() {
        let at_limit = Definition::parse(&fan_out(MAX_ITEMS), "fan").expect("valid at the limit");
        assert_eq!(at_limit.states().len(), MAX_ITEMS);
        assert_eq!(at_limit.transitions().len(), MAX_ITEMS);
        let m = messages(&fan_out(MAX_ITEMS + 1));
        assert!(
            m.contains(&format!("more than {MAX_ITEMS} states or transitions")),
            "{m}"
        );
        let extra_transition = format!(
            "{}[[transitions]]\nname = \"again\"\nfrom = [\"Open\"]\nto = \"S1\"\n",
            fan_out(MAX_ITEMS)
        );
        assert!(messages(&extra_transition).contains("more than"));
    }

    #[test]
    fn create_transitions_take_no_sources_and_cannot_park() {
        let text = TINY.replace(
            "create = true",
            "create = true\nfrom = [\"Open\"]\npark = true",
        );
        let m = messages(&text);
        assert!(m.contains("a create transition has `from` states"), "{m}");
        assert!(m.contains("cannot be parked"), "{m}");
    }

    #[test]
    fn a_bad_retention_is_a_problem() {
        let m = messages(&TINY.replace(
            "terminal = true",
            "terminal = true\nexpires_after = \"soon\"",
        ));
        assert!(m.contains("expires_after = \"soon\""), "{m}");
    }

    #[test]
    fn durations_parse_and_format_in_whole_units() {
        assert_eq!(
            parse_duration("30d"),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(parse_duration("90m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("12h"), Some(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("5w"), None);
        assert_eq!(parse_duration("d"), None);
        assert_eq!(format_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
        assert_eq!(format_duration(Duration::from_secs(61)), "61s");
    }

    #[test]
    fn the_hash_ignores_comments_but_not_rules() {
        let a = Definition::parse(TINY, "a").unwrap();
        let b = Definition::parse(&format!("# comment\n{TINY}"), "b").unwrap();
        let c = Definition::parse(&TINY.replace("version = 1", "version = 2"), "c").unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_eq!(a.short_hash().len(), 16);
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = Definition::load(Path::new("/nonexistent/machine.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/machine.toml"));
    }
}
