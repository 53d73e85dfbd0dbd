//! `orderflow config show|check`: the effective settings, and their offline check.

use serde_json::json;

use super::{definition, Text};
use crate::cli::ConfigAction;
use crate::config::Settings;

/// Shows the settings (secrets masked) or checks them and the definition they point to, without
/// connecting: values, a free `ops.listen`, `kafka.extra` properties librdkafka accepts.
pub async fn run(settings: &Settings, action: &ConfigAction) -> anyhow::Result<Text> {
    match action {
        ConfigAction::Show => {
            let text = settings.to_display_toml();
            let json = serde_json::to_value(toml::from_str::<toml::Value>(&text).ok())?;
            Ok(Text::ok(text, json))
        }
        ConfigAction::Check => {
            let definition = definition(settings)?;
            settings.check_ops_listen_free()?;
            Ok(Text::ok(
                format!(
                    "OK: settings valid; definition {} v{} ({}) from {}",
                    definition.name(),
                    definition.version(),
                    definition.short_hash(),
                    settings.definition.display()
                ),
                json!({
                    "ok": true,
                    "definition": definition.name(),
                    "version": definition.version(),
                    "hash": definition.short_hash(),
                }),
            ))
        }
    }
}
