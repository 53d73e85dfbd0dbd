//! Diagrams of a definition: Mermaid (for Markdown) and Graphviz DOT.

use std::fmt::Write;

use super::definition::{format_duration, Definition};

/// The diagram formats `orderflow machine draw` can print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiagramFormat {
    /// A Mermaid `stateDiagram-v2`, rendered by GitHub and most Markdown viewers.
    Mermaid,
    /// Graphviz DOT (`dot -Tsvg`).
    Dot,
}

/// Draws the definition in the given format.
pub fn draw(definition: &Definition, format: DiagramFormat) -> String {
    match format {
        DiagramFormat::Mermaid => mermaid(definition),
        DiagramFormat::Dot => dot(definition),
    }
}

fn edge_label(name: &str, park: bool) -> String {
    if park {
        format!("{name} (may park)")
    } else {
        name.to_string()
    }
}

/// A Mermaid state diagram: `[*]` is "no order yet" and "order finished".
pub fn mermaid(definition: &Definition) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "stateDiagram-v2");
    let _ = writeln!(
        out,
        "    %% {} v{} ({})",
        definition.name(),
        definition.version(),
        definition.short_hash()
    );
    for transition in definition.transitions() {
        let to = &definition.state(transition.to).name;
        let label = edge_label(&transition.name, transition.park);
        if transition.create {
            let _ = writeln!(out, "    [*] --> {to}: {label}");
        }
        for source in &transition.from {
            let from = &definition.state(*source).name;
            let _ = writeln!(out, "    {from} --> {to}: {label}");
        }
    }
    for state in definition.states() {
        if state.terminal {
            let _ = writeln!(out, "    {} --> [*]", state.name);
        }
        if let Some(retention) = state.expires_after {
            let _ = writeln!(
                out,
                "    note right of {}: forgotten after {}",
                state.name,
                format_duration(retention)
            );
        }
    }
    out
}

/// A Graphviz digraph; terminal states are double circles.
pub fn dot(definition: &Definition) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", definition.name());
    let _ = writeln!(out, "  rankdir=LR;");
    let _ = writeln!(
        out,
        "  label=\"{} v{} ({})\";",
        definition.name(),
        definition.version(),
        definition.short_hash()
    );
    let _ = writeln!(out, "  start [shape=point];");
    for state in definition.states() {
        let shape = if state.terminal {
            "doublecircle"
        } else {
            "circle"
        };
        let label = match state.expires_after {
            Some(d) => format!("{}\\nforgotten after {}", state.name, format_duration(d)),
            None => state.name.clone(),
        };
        let _ = writeln!(
            out,
            "  \"{}\" [shape={shape}, label=\"{label}\"];",
            state.name
        );
    }
    for transition in definition.transitions() {
        let to = &definition.state(transition.to).name;
        let label = edge_label(&transition.name, transition.park);
        let style = if transition.park {
            ", style=dashed"
        } else {
            ""
        };
        if transition.create {
            let _ = writeln!(out, "  start -> \"{to}\" [label=\"{label}\"{style}];");
        }
        for source in &transition.from {
            let from = &definition.state(*source).name;
            let _ = writeln!(out, "  \"{from}\" -> \"{to}\" [label=\"{label}\"{style}];");
        }
    }
    let _ = writeln!(out, "}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle() -> Definition {
        Definition::parse(
            include_str!("../../machines/order-lifecycle.toml"),
            "order-lifecycle.toml",
        )
        .unwrap()
    }

    #[test]
    fn mermaid_has_one_edge_per_source_state_and_marks_terminals() {
        let text = mermaid(&lifecycle());
        assert!(text.starts_with("stateDiagram-v2\n"));
        assert!(text.contains("    [*] --> Pending: create\n"));
        assert!(text.contains("    Shipped --> Delivered: deliver (may park)\n"));
        assert!(text.contains("    OutForDelivery --> Delivered: deliver (may park)\n"));
        assert!(text.contains("    Cancelled --> [*]\n"));
        assert!(!text.contains("    Delivered --> [*]\n"));
        assert!(text.contains("note right of Delivered: forgotten after 30d"));
        let edges = text
            .lines()
            .filter(|l| l.contains(" --> ") && !l.contains("[*]"))
            .count();
        let expected: usize = lifecycle().transitions().iter().map(|t| t.from.len()).sum();
        assert_eq!(edges, expected);
    }

    #[test]
    fn draw_picks_the_format_asked_for() {
        let d = lifecycle();
        assert_eq!(draw(&d, DiagramFormat::Mermaid), mermaid(&d));
        assert_eq!(draw(&d, DiagramFormat::Dot), dot(&d));
    }

    #[test]
    fn the_readme_diagram_is_the_generated_one() {
        let readme = include_str!("../../README.md");
        let start = "<!-- generated: orderflow machine draw machines/order-lifecycle.toml -->\n```mermaid\n";
        let begin = readme
            .find(start)
            .expect("README has the generated diagram")
            + start.len();
        let end = begin + readme[begin..].find("```").expect("closed code block");
        assert_eq!(
            &readme[begin..end],
            mermaid(&lifecycle()),
            "regenerate it: orderflow machine draw machines/order-lifecycle.toml"
        );
    }

    #[test]
    fn dot_is_a_digraph_with_dashed_parkable_edges() {
        let text = dot(&lifecycle());
        assert!(text.starts_with("digraph \"order-lifecycle\" {"));
        assert!(text.trim_end().ends_with('}'));
        assert!(text.contains("\"Returned\" [shape=doublecircle"));
        assert!(text.contains(
            "\"Pending\" -> \"Confirmed\" [label=\"confirm (may park)\", style=dashed];"
        ));
        assert!(text.contains("\"Pending\" -> \"Cancelled\" [label=\"cancel\"];"));
    }
}
