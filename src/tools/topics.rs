//! `orderflow topics create|check`: the five topics, co-partitioned, the state topic compacted.

use serde_json::json;

use super::Text;
use crate::cli::TopicsAction;
use crate::config::Settings;
use crate::kafka::Topics;

/// Creates missing topics and verifies existing ones, or only verifies them.
pub async fn run(settings: &Settings, action: &TopicsAction) -> anyhow::Result<Text> {
    let mut settings = settings.clone();
    let topics = Topics::connect(&settings.kafka)?;
    match action {
        TopicsAction::Create {
            partitions,
            replication_factor,
            min_insync_replicas,
        } => {
            if let Some(p) = partitions {
                settings.topics.partitions = *p;
            }
            if let Some(r) = replication_factor {
                settings.topics.replication_factor = *r;
            }
            if let Some(m) = min_insync_replicas {
                settings.topics.min_insync_replicas = *m;
            }
            settings.validate()?;
            let statuses = topics.ensure(&settings.topics).await?;
            let text = statuses
                .iter()
                .map(|status| {
                    format!(
                        "{:<13} {:<40} {} partitions  {}",
                        status.role,
                        status.name,
                        status.partitions,
                        if status.created {
                            "created"
                        } else {
                            "exists, verified"
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            let json = statuses
                .iter()
                .map(|s| {
                    json!({"role": s.role, "name": s.name, "partitions": s.partitions, "created": s.created})
                })
                .collect();
            Ok(Text::ok(text, json))
        }
        TopicsAction::Check => {
            let partitions = topics.check(&settings.topics).await?;
            Ok(Text::ok(
                format!("OK: all five topics exist with {partitions} partitions; state topic is compacted"),
                json!({"ok": true, "partitions": partitions}),
            ))
        }
    }
}
