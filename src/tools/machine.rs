//! `orderflow machine check|draw|diff`: state-machine definitions, offline.

use std::sync::Arc;

use serde_json::json;

use super::{Text, Usage};
use crate::cli::{DrawFormat, MachineAction};
use crate::config::Settings;
use crate::machine::diagram::{draw, DiagramFormat};
use crate::machine::diff::diff;
use crate::machine::Definition;

/// Checks, draws or compares definition files (the settings are not needed: files are named).
pub async fn run(_settings: &Settings, action: &MachineAction) -> anyhow::Result<Text> {
    match action {
        MachineAction::Check { file } => {
            // An invalid definition is bad input, as everywhere else: exit code 2.
            let d = Definition::load(file).map_err(|e| Usage(e.to_string()))?;
            Ok(Text::ok(
                format!(
                    "OK: {} v{} ({}): {} states, {} transitions",
                    d.name(),
                    d.version(),
                    d.short_hash(),
                    d.states().len(),
                    d.transitions().len()
                ),
                json!({
                    "ok": true,
                    "name": d.name(),
                    "version": d.version(),
                    "hash": d.short_hash(),
                    "states": d.states().len(),
                    "transitions": d.transitions().len(),
                }),
            ))
        }
        MachineAction::Draw { file, format } => {
            let definition = Arc::new(Definition::load(file)?);
            let format = match format {
                DrawFormat::Mermaid => DiagramFormat::Mermaid,
                DrawFormat::Dot => DiagramFormat::Dot,
            };
            let diagram = draw(&definition, format);
            Ok(Text::ok(diagram.clone(), json!({ "diagram": diagram })))
        }
        MachineAction::Diff { old, new } => {
            let old_definition = Definition::load(old)?;
            let new_definition = Definition::load(new)?;
            let report = diff(&old_definition, &new_definition);
            let mut lines: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
            if report.findings.is_empty() {
                lines.push("identical rules: safe to roll out".into());
            }
            if report.is_safe() {
                lines.push(format!(
                    "SAFE: {} v{} can be rolled out over live orders of v{}",
                    new_definition.name(),
                    new_definition.version(),
                    old_definition.version()
                ));
            } else {
                lines.push(format!(
                    "UNSAFE: do not roll out {} as it is",
                    new.display()
                ));
            }
            Ok(Text {
                json: json!({
                    "safe": report.is_safe(),
                    "findings": report.findings.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                }),
                text: lines.join("\n"),
                code: if report.is_safe() { 0 } else { 1 },
            })
        }
    }
}
