//! Finds the instance owning a partition (for `GET /orders/{id}` on a pod that does not own it), from
//! the consumer group's membership, cached for a moment so a burst of queries costs one lookup.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::Settings;
use crate::kafka::{committed_reader_config, group::partition_owners, ClientConfigError};

/// How long a looked-up assignment is reused.
const REFRESH: Duration = Duration::from_secs(2);

/// The owner of a partition as far as the group coordinator knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The owning processor's instance id.
    pub instance_id: String,
    /// Its ops server's URL, when `ops.peer_url_template` is set.
    pub url: Option<String>,
}

/// Looks up partition owners in the processors' consumer group.
pub struct OwnerDirectory {
    client: BaseConsumer,
    group: String,
    topic: String,
    url_template: Option<String>,
    cached: Mutex<Option<(Instant, BTreeMap<i32, String>)>>,
}

impl OwnerDirectory {
    /// A directory for the group and requests topic of `settings` (connects lazily).
    pub fn new(settings: &Settings) -> Result<OwnerDirectory, ClientConfigError> {
        let client: BaseConsumer = committed_reader_config(
            &settings.kafka,
            &format!("orderflow-{}-owners", settings.instance_id),
            &format!("{}-owners", settings.kafka.group_id),
        )?
        .create()
        .map_err(ClientConfigError::Create)?;
        Ok(OwnerDirectory {
            client,
            group: settings.kafka.group_id.clone(),
            topic: settings.topics.requests.clone(),
            url_template: settings.ops.peer_url_template.clone(),
            cached: Mutex::new(None),
        })
    }

    /// The owner of `partition`, or `None` when unassigned or the group cannot be read now
    /// (blocking: at most a few seconds).
    pub fn owner(&self, partition: i32) -> Option<Owner> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = cached
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < REFRESH);
        if !fresh {
            match partition_owners(
                self.client.client(),
                &self.group,
                &self.topic,
                Duration::from_secs(3),
            ) {
                Ok(owners) => *cached = Some((Instant::now(), owners)),
                Err(e) => tracing::warn!(error = %e, "cannot read the group's assignment"),
            }
        }
        let instance_id = cached.as_ref()?.1.get(&partition)?.clone();
        let url = self
            .url_template
            .as_ref()
            .map(|t| t.replace("{instance}", &instance_id));
        Some(Owner { instance_id, url })
    }
}
