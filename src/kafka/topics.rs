//! Topic provisioning and the co-partitioning check.
//!
//! An order's requests, state, outcomes and dead letters must share a partition number, so all five
//! topics must have the same partition count, and the state topic must be compacted (it holds the
//! latest state per order forever). Both are correctness conditions, checked before anything runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::topic_id::{topic_id, TopicIdError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::client::{base_config, ClientConfigError};
use crate::config::{KafkaSettings, TopicSettings};

/// How long a metadata or admin request may take before the cluster counts as unreachable.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Why topics could not be provisioned or checked.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// Client settings are invalid.
    #[error(transparent)]
    Config(#[from] ClientConfigError),
    /// The cluster did not answer.
    #[error("cannot reach Kafka at {bootstrap}: {source} (is the broker up? `make kafka-up` starts a local one; otherwise check kafka.bootstrap_servers and security settings)")]
    Unreachable {
        /// The bootstrap servers tried.
        bootstrap: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// A topic has a partition count different from the others.
    #[error("topic {topic} ({role}) has {found} partitions but orderflow expects {expected}: all five topics must have the same partition count, because an order's requests, state and outcomes share a partition number. Set topics.partitions = {found} if the other topics have {found} too, or recreate {topic} with {expected} partitions")]
    PartitionMismatch {
        /// The topic.
        topic: String,
        /// Its role (requests, state, ...).
        role: &'static str,
        /// The expected count.
        expected: i32,
        /// The count it has.
        found: i32,
    },
    /// The state topic is not compacted.
    #[error("state topic {topic} has cleanup.policy={policy}, but it must be compacted: with deletion orders' state would vanish after the retention time. Run `kafka-configs --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact`")]
    NotCompacted {
        /// The topic.
        topic: String,
        /// Its cleanup policy.
        policy: String,
    },
    /// A topic the processor needs does not exist.
    #[error(
        "topic {topic} ({role}) does not exist: create the topics with `orderflow topics create`"
    )]
    Missing {
        /// The topic.
        topic: String,
        /// Its role.
        role: &'static str,
    },
    /// Creating a topic failed.
    #[error("creating topic {topic} failed: {code:?} (check the broker's log and the replication factor)")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// A topic that must be new exists already.
    #[error("topic {topic} exists already: choose a new name (a rebuild never writes into an existing topic), or delete it first if it is a failed rebuild")]
    Exists {
        /// The topic.
        topic: String,
    },
    /// The blocking metadata task panicked or was cancelled.
    #[error("metadata task failed: {0}")]
    Task(String),
    /// Another admin request failed.
    #[error("admin request failed: {0}")]
    Admin(#[source] KafkaError),
}

impl TopicError {
    /// True when Kafka could not be reached or answered with an error, as opposed to topics that
    /// exist but are laid out wrong (bad settings or a bad cluster setup).
    pub fn is_runtime(&self) -> bool {
        matches!(
            self,
            TopicError::Unreachable { .. } | TopicError::Admin(_) | TopicError::Task(_)
        )
    }
}

/// What provisioning did with one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStatus {
    /// Its role (requests, state, accepted, rejected, dead_letters).
    pub role: &'static str,
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: i32,
    /// True when this call created it.
    pub created: bool,
}

/// Admin access to the cluster for provisioning and checks.
pub struct Topics {
    admin: Arc<AdminClient<DefaultClientContext>>,
    bootstrap: String,
}

impl Topics {
    /// Connects an admin client (lazily: nothing is sent until a request).
    pub fn connect(settings: &KafkaSettings) -> Result<Topics, TopicError> {
        let admin = base_config(settings, "orderflow-admin")?
            .create()
            .map_err(|source| TopicError::Unreachable {
                bootstrap: settings.bootstrap_servers.clone(),
                source,
            })?;
        Ok(Topics {
            admin: Arc::new(admin),
            bootstrap: settings.bootstrap_servers.clone(),
        })
    }

    /// Partition counts of existing topics among `names`.
    pub async fn partition_counts(
        &self,
        names: &[&str],
    ) -> Result<HashMap<String, i32>, TopicError> {
        let metadata = self
            .blocking(|admin| admin.inner().fetch_metadata(None, ADMIN_TIMEOUT))
            .await?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| names.contains(&t.name()) && t.error().is_none())
            .map(|t| (t.name().to_string(), t.partitions().len() as i32))
            .collect())
    }

    /// A topic's configuration value (`None` when the broker names no such entry).
    pub async fn config_value(&self, topic: &str, key: &str) -> Result<Option<String>, TopicError> {
        let results = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &admin_options())
            .await
            .map_err(TopicError::Admin)?;
        for result in results {
            let resource = result.map_err(|code| TopicError::Admin(KafkaError::AdminOp(code)))?;
            if let Some(entry) = resource.get(key) {
                return Ok(Some(entry.value.clone().unwrap_or_default()));
            }
        }
        Ok(None)
    }

    /// The `cleanup.policy` of a topic.
    pub async fn cleanup_policy(&self, topic: &str) -> Result<String, TopicError> {
        Ok(self
            .config_value(topic, "cleanup.policy")
            .await?
            .unwrap_or_else(|| "delete".into()))
    }

    /// The `delete.retention.ms` of a topic: how long a tombstone stays readable after the
    /// cleaner reached it (Kafka's default, one day, when the broker names none).
    pub async fn delete_retention_ms(&self, topic: &str) -> Result<i64, TopicError> {
        Ok(self
            .config_value(topic, "delete.retention.ms")
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(86_400_000))
    }

    /// A topic's id (KIP-516): it changes when the topic is deleted and created again.
    pub async fn topic_id(&self, topic: &str) -> Result<String, TopicIdError> {
        let admin = Arc::clone(&self.admin);
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || topic_id(admin.inner(), &name, ADMIN_TIMEOUT))
            .await
            .unwrap_or_else(|e| {
                Err(TopicIdError::Refused {
                    topic: topic.to_string(),
                    message: e.to_string(),
                })
            })
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> Option<String> {
        self.admin.inner().fetch_cluster_id(ADMIN_TIMEOUT)
    }

    /// Checks that all five topics exist, are co-partitioned and the state topic is compacted.
    /// Returns the partition count.
    pub async fn check(&self, topics: &TopicSettings) -> Result<i32, TopicError> {
        let names: Vec<&str> = topics.all().iter().map(|(_, n)| *n).collect();
        let counts = self.partition_counts(&names).await?;
        let requests = *counts.get(&topics.requests).ok_or(TopicError::Missing {
            topic: topics.requests.clone(),
            role: "requests",
        })?;
        for (role, name) in topics.all() {
            let found = *counts.get(name).ok_or_else(|| TopicError::Missing {
                topic: name.to_string(),
                role,
            })?;
            if found != requests {
                return Err(TopicError::PartitionMismatch {
                    topic: name.to_string(),
                    role,
                    expected: requests,
                    found,
                });
            }
        }
        self.check_compacted(&topics.state).await?;
        Ok(requests)
    }

    async fn check_compacted(&self, state_topic: &str) -> Result<(), TopicError> {
        let policy = self.cleanup_policy(state_topic).await?;
        if policy.split(',').any(|p| p.trim() == "compact") {
            Ok(())
        } else {
            Err(TopicError::NotCompacted {
                topic: state_topic.to_string(),
                policy,
            })
        }
    }

    /// Creates missing topics and verifies existing ones (idempotent).
    pub async fn ensure(&self, topics: &TopicSettings) -> Result<Vec<TopicStatus>, TopicError> {
        let names: Vec<&str> = topics.all().iter().map(|(_, n)| *n).collect();
        let existing = self.partition_counts(&names).await?;
        for (role, name) in topics.all() {
            if let Some(found) = existing.get(name) {
                if *found != topics.partitions {
                    return Err(TopicError::PartitionMismatch {
                        topic: name.to_string(),
                        role,
                        expected: topics.partitions,
                        found: *found,
                    });
                }
            }
        }
        let missing: Vec<(&'static str, &str)> = topics
            .all()
            .into_iter()
            .filter(|(_, name)| !existing.contains_key(*name))
            .collect();
        // A String the NewTopics borrow.
        let min_insync = topics.effective_min_insync_replicas().to_string();
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|(role, name)| new_topic(topics, role, name, &min_insync))
            .collect();
        if !new_topics.is_empty() {
            let results = self
                .admin
                .create_topics(&new_topics, &admin_options())
                .await
                .map_err(TopicError::Admin)?;
            for result in results {
                match result {
                    Ok(_) => {}
                    // Another instance created it first: verified below like any existing topic.
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => return Err(TopicError::Create { topic, code }),
                }
            }
        }
        let partitions = self.check_created(topics).await?;
        self.check_compacted(&topics.state).await?;
        Ok(topics
            .all()
            .into_iter()
            .map(|(role, name)| TopicStatus {
                role,
                name: name.to_string(),
                partitions,
                created: missing.iter().any(|(_, m)| *m == name),
            })
            .collect())
    }

    /// After creation, metadata may lag for a moment: wait until every topic is visible.
    async fn check_created(&self, topics: &TopicSettings) -> Result<i32, TopicError> {
        let mut attempt = 0;
        loop {
            match self.check(topics).await {
                Err(TopicError::Missing { .. }) if attempt < 50 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }
}

impl Topics {
    /// Creates one new topic configured like the state topic (compacted, the same tombstone
    /// retention, the configured replication) with `topics.partitions` partitions. Fails when it
    /// exists: a rebuild never writes into a topic that holds something.
    pub async fn create_state_topic(
        &self,
        topics: &TopicSettings,
        name: &str,
    ) -> Result<(), TopicError> {
        if self.partition_counts(&[name]).await?.contains_key(name) {
            return Err(TopicError::Exists {
                topic: name.to_string(),
            });
        }
        let min_insync = topics.effective_min_insync_replicas().to_string();
        let topic = new_topic(topics, "state", name, &min_insync);
        let results = self
            .admin
            .create_topics([&topic], &admin_options())
            .await
            .map_err(TopicError::Admin)?;
        for result in results {
            if let Err((topic, code)) = result {
                return match code {
                    RDKafkaErrorCode::TopicAlreadyExists => Err(TopicError::Exists { topic }),
                    code => Err(TopicError::Create { topic, code }),
                };
            }
        }
        Ok(())
    }

    /// How many members the consumer group has now (0 when it is empty or unknown).
    pub async fn group_members(&self, group: &str) -> Result<usize, TopicError> {
        let group = group.to_string();
        self.blocking(move |admin| {
            admin
                .inner()
                .fetch_group_list(Some(&group), ADMIN_TIMEOUT)
                .map(|groups| groups.groups().iter().map(|g| g.members().len()).sum())
        })
        .await
    }

    /// Runs a blocking metadata call off the async workers; a failure means the cluster is
    /// unreachable.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&AdminClient<DefaultClientContext>) -> Result<T, KafkaError> + Send + 'static,
    ) -> Result<T, TopicError> {
        let admin = Arc::clone(&self.admin);
        tokio::task::spawn_blocking(move || call(&admin))
            .await
            .map_err(|e| TopicError::Task(e.to_string()))?
            .map_err(|source| TopicError::Unreachable {
                bootstrap: self.bootstrap.clone(),
                source,
            })
    }
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT))
}

/// A topic of `role` to create with the configured partitions, replication and
/// `min.insync.replicas` (`min_insync`, borrowed by the result).
fn new_topic<'a>(
    topics: &TopicSettings,
    role: &str,
    name: &'a str,
    min_insync: &'a str,
) -> NewTopic<'a> {
    let topic = NewTopic::new(
        name,
        topics.partitions,
        TopicReplication::Fixed(topics.replication_factor),
    )
    .set("min.insync.replicas", min_insync);
    topic_config(role, topic)
}

/// Per-role topic settings.
fn topic_config<'a>(role: &str, topic: NewTopic<'a>) -> NewTopic<'a> {
    match role {
        // Latest state per order, kept forever; tombstones of forgotten orders kept a day so
        // restoring instances see them.
        "state" => topic
            .set("cleanup.policy", "compact")
            .set("delete.retention.ms", "86400000")
            .set("min.compaction.lag.ms", "0"),
        _ => topic,
    }
}
