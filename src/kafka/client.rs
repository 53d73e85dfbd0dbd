//! librdkafka client settings: the only place in orderflow where librdkafka keys are spelled.

use rdkafka::ClientConfig;

use crate::config::{is_secret_key, KafkaSettings, Settings};

/// Why a client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    /// An `extra` property collides with one orderflow sets itself.
    #[error("kafka.extra.{key} conflicts with a property orderflow sets itself ({why}); drop kafka.extra.{key}{instead}")]
    Conflict {
        /// The librdkafka key.
        key: String,
        /// Why orderflow owns it.
        why: &'static str,
        /// The orderflow setting to use instead, if any.
        instead: String,
    },
    /// librdkafka refused the configuration.
    #[error("cannot create a Kafka client: {0}")]
    Create(#[source] rdkafka::error::KafkaError),
    /// librdkafka refuses a pass-through property (unknown name or invalid value).
    #[error("kafka.extra.{key} = {value:?}: librdkafka refuses it ({reason}); fix or drop it (the properties are listed in librdkafka's CONFIGURATION.md)")]
    Refused {
        /// The librdkafka key.
        key: String,
        /// The value given.
        value: String,
        /// librdkafka's explanation.
        reason: String,
    },
}

/// Checks offline, without connecting, that librdkafka accepts every client setting (the
/// pass-through `kafka.extra` properties above all): a misspelt property is a settings error,
/// not a broker that cannot be reached.
pub fn check_client_settings(settings: &Settings) -> Result<(), ClientConfigError> {
    for config in [
        base_config(&settings.kafka, "orderflow-config-check")?,
        transactional_producer_config(settings)?,
    ] {
        config
            .create_native_config()
            .map_err(|error| match &error {
                rdkafka::error::KafkaError::ClientConfig(_, reason, key, value)
                    if settings.kafka.extra.contains_key(key) =>
                {
                    ClientConfigError::Refused {
                        key: key.clone(),
                        value: if is_secret_key(key) {
                            "***".into()
                        } else {
                            value.clone()
                        },
                        reason: reason.clone(),
                    }
                }
                _ => ClientConfigError::Create(error),
            })?;
    }
    Ok(())
}

/// Properties orderflow sets on its own, with the reason and the orderflow setting that controls them.
const OWNED: &[(&str, &str, Option<&str>)] = &[
    (
        "bootstrap.servers",
        "it names the cluster",
        Some("kafka.bootstrap_servers"),
    ),
    (
        "group.id",
        "all instances must share it",
        Some("kafka.group_id"),
    ),
    (
        "security.protocol",
        "it is a first-class setting",
        Some("kafka.security_protocol"),
    ),
    (
        "sasl.mechanism",
        "it is a first-class setting",
        Some("kafka.sasl_mechanism"),
    ),
    (
        "sasl.username",
        "it is a first-class setting",
        Some("kafka.sasl_username"),
    ),
    (
        "sasl.password",
        "it is a secret setting",
        Some("kafka.sasl_password"),
    ),
    (
        "ssl.ca.location",
        "it is a first-class setting",
        Some("kafka.ssl_ca_location"),
    ),
    (
        "ssl.certificate.location",
        "it is a first-class setting",
        Some("kafka.ssl_certificate_location"),
    ),
    (
        "ssl.key.location",
        "it is a first-class setting",
        Some("kafka.ssl_key_location"),
    ),
    (
        "ssl.key.password",
        "it is a secret setting",
        Some("kafka.ssl_key_password"),
    ),
    (
        "transactional.id",
        "exactly-once needs one stable id per instance",
        Some("instance_id"),
    ),
    ("enable.idempotence", "exactly-once needs it on", None),
    (
        "isolation.level",
        "orderflow reads only committed data",
        None,
    ),
    (
        "enable.auto.commit",
        "offsets are committed inside transactions",
        None,
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed inside transactions",
        None,
    ),
    (
        "partitioner",
        "keys must land where Java clients put them (murmur2)",
        None,
    ),
    ("acks", "exactly-once needs acks=all", None),
    (
        "group.instance.id",
        "it is the instance id when static membership is on",
        Some("processor.static_membership"),
    ),
    (
        "statistics.interval.ms",
        "orderflow's Prometheus metrics are fed by librdkafka's statistics",
        None,
    ),
];

/// How often the processor's clients report librdkafka statistics (rtt, queues) to the metrics.
const STATISTICS_INTERVAL_MS: &str = "5000";

/// The settings every orderflow client shares: cluster, security and pass-through properties.
pub fn base_config(
    settings: &KafkaSettings,
    client_id: &str,
) -> Result<ClientConfig, ClientConfigError> {
    for key in settings.extra.keys() {
        if let Some((_, why, instead)) = OWNED.iter().find(|(k, _, _)| k == key) {
            return Err(ClientConfigError::Conflict {
                key: key.clone(),
                why,
                instead: instead.map_or(String::new(), |s| format!(" and set {s} instead")),
            });
        }
    }
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .set("client.id", client_id)
        .set("security.protocol", &settings.security_protocol);
    if let Some(mechanism) = &settings.sasl_mechanism {
        config.set("sasl.mechanism", mechanism);
    }
    if let Some(username) = &settings.sasl_username {
        config.set("sasl.username", username);
    }
    if let Some(password) = &settings.sasl_password {
        config.set("sasl.password", password.expose());
    }
    for (key, path) in [
        ("ssl.ca.location", &settings.ssl_ca_location),
        (
            "ssl.certificate.location",
            &settings.ssl_certificate_location,
        ),
        ("ssl.key.location", &settings.ssl_key_location),
    ] {
        if let Some(path) = path {
            config.set(key, path.display().to_string());
        }
    }
    if let Some(password) = &settings.ssl_key_password {
        config.set("ssl.key.password", password.expose());
    }
    for (key, value) in &settings.extra {
        config.set(key, value);
    }
    // librdkafka logs its config at debug level; keep secrets out of it.
    config.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    Ok(config)
}

/// A producer of transition requests (CLI, load generator): idempotent, acks=all, and partitioning
/// keys with murmur2 like Java's default partitioner, so Java and Rust producers agree on partitions.
pub fn request_producer_config(
    settings: &KafkaSettings,
    client_id: &str,
) -> Result<ClientConfig, ClientConfigError> {
    let mut config = base_config(settings, client_id)?;
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5");
    Ok(config)
}

/// How long a consumer lets the broker hold a fetch that finds nothing new (librdkafka's default
/// is 500 ms). The processor's consumer and the outcome readers ask for 10 ms: with the default a
/// request at 5,800/s waited up to half a second now and then before it was even fetched
/// (p99 318 ms request → outcome; 103 ms with 10 ms, docs/benchmarks.md). An idle consumer then
/// sends ~100 fetches a second, which the broker answers from memory.
pub const FETCH_WAIT_MAX_MS: &str = "10";

/// Sets a librdkafka property unless `kafka.extra` sets it: the operator's value wins.
fn set_unless_extra(config: &mut ClientConfig, settings: &KafkaSettings, key: &str, value: &str) {
    if !settings.extra.contains_key(key) {
        config.set(key, value);
    }
}

/// A consumer that reads committed data only, without joining a group's offset management.
pub fn committed_reader_config(
    settings: &KafkaSettings,
    client_id: &str,
    group_id: &str,
) -> Result<ClientConfig, ClientConfigError> {
    let mut config = base_config(settings, client_id)?;
    config
        .set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    set_unless_extra(
        &mut config,
        settings,
        "fetch.wait.max.ms",
        FETCH_WAIT_MAX_MS,
    );
    Ok(config)
}

/// The processor's consumer: one group for all instances, read_committed, offsets committed only
/// inside transactions, cooperative rebalancing so a rebalance moves only the partitions that move.
///
/// The client id names the instance and the definition's short hash
/// ([`processor_client_id`]), so members of a group can see which rules the others run.
pub fn processor_consumer_config(
    settings: &Settings,
    definition_hash: &str,
) -> Result<ClientConfig, ClientConfigError> {
    let mut config = base_config(
        &settings.kafka,
        &processor_client_id(&settings.instance_id, definition_hash),
    )?;
    config
        .set("group.id", &settings.kafka.group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            settings.processor.session_timeout_ms.to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (settings.processor.session_timeout_ms / 5)
                .max(100)
                .to_string(),
        )
        // A batch never takes long; a stuck loop should lose its partitions within a minute.
        .set("max.poll.interval.ms", "60000")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    if settings.processor.static_membership {
        config.set("group.instance.id", &settings.instance_id);
    }
    set_unless_extra(
        &mut config,
        &settings.kafka,
        "fetch.wait.max.ms",
        FETCH_WAIT_MAX_MS,
    );
    Ok(config)
}

/// The processor consumer's `client.id`: `orderflow.<instance id>.<definition short hash>`.
pub fn processor_client_id(instance_id: &str, definition_hash: &str) -> String {
    format!("orderflow.{instance_id}.{definition_hash}")
}

/// Splits a processor client id into (instance id, definition hash); `None` for other clients.
pub fn parse_processor_client_id(client_id: &str) -> Option<(&str, &str)> {
    let rest = client_id.strip_prefix("orderflow.")?;
    let (instance, hash) = rest.rsplit_once('.')?;
    (hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit())).then_some((instance, hash))
}

/// The `transactional.id` of an instance: stable across restarts, so a restarted instance fences
/// its predecessor and aborts its open transaction at once.
pub fn transactional_id(settings: &Settings) -> String {
    format!("{}.{}", settings.kafka.group_id, settings.instance_id)
}

/// The processor's transactional producer.
pub fn transactional_producer_config(
    settings: &Settings,
) -> Result<ClientConfig, ClientConfigError> {
    let mut config = base_config(
        &settings.kafka,
        &format!("orderflow-{}", settings.instance_id),
    )?;
    config
        .set("transactional.id", transactional_id(settings))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "transaction.timeout.ms",
            settings.processor.transaction_timeout_ms.to_string(),
        )
        // Records carry explicit partitions; the partitioner only matters for keyed records without.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "1")
        .set("compression.type", "lz4")
        .set(
            "message.timeout.ms",
            settings.processor.transaction_timeout_ms.to_string(),
        )
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    Ok(config)
}

/// A consumer that restores state partitions: read_committed, assigned by hand, no group.
pub fn restore_consumer_config(settings: &Settings) -> Result<ClientConfig, ClientConfigError> {
    let mut config = committed_reader_config(
        &settings.kafka,
        &format!("orderflow-{}-restore", settings.instance_id),
        &format!("{}-restore", settings.kafka.group_id),
    )?;
    read_in_bulk(&mut config);
    Ok(config)
}

/// Settings for a consumer that reads whole partitions as fast as it can (restores, scans of the
/// event log): large fetches and a prefetch bounded by bytes.
pub fn read_in_bulk(config: &mut ClientConfig) {
    config
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        // librdkafka stops fetching a partition holding `queued.min.messages` (100,000) and
        // waits `fetch.queue.backoff.ms` (1 s) before it asks again: a restore spent a third of
        // its time idle. Bounding the prefetch by bytes alone, with a short backoff, restored
        // ~1.2M orders/s instead of ~0.6M (docs/benchmarks.md) and holds 32 MB, not 256.
        .set("queued.min.messages", "1000000")
        .set("fetch.queue.backoff.ms", "10")
        .set("queued.max.messages.kbytes", "32768");
}

/// Renders a client config for logs, with secrets masked.
pub fn describe(config: &ClientConfig) -> String {
    let mut pairs: Vec<(String, String)> = config
        .config_map()
        .iter()
        .map(|(k, v)| {
            let shown = if is_secret_key(k) {
                "***".to_string()
            } else {
                v.to_string()
            };
            (k.to_string(), shown)
        })
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn an_extra_property_orderflow_owns_is_refused_naming_what_to_set() {
        let mut settings = KafkaSettings::default();
        settings
            .extra
            .insert("bootstrap.servers".into(), "x:1".into());
        let err = base_config(&settings, "t").unwrap_err().to_string();
        assert!(err.contains("drop kafka.extra.bootstrap.servers"), "{err}");
        assert!(err.contains("kafka.bootstrap_servers"), "{err}");

        let mut settings = KafkaSettings::default();
        settings
            .extra
            .insert("isolation.level".into(), "read_uncommitted".into());
        assert!(base_config(&settings, "t").is_err());
    }

    #[test]
    fn an_unknown_or_invalid_extra_property_is_refused_offline_naming_it() {
        let mut settings = Settings::default();
        assert!(check_client_settings(&settings).is_ok());
        settings
            .kafka
            .extra
            .insert("fetch.wiat.max.ms".into(), "5".into());
        let error = check_client_settings(&settings).unwrap_err().to_string();
        assert!(error.contains("kafka.extra.fetch.wiat.max.ms"), "{error}");
        assert!(error.contains("librdkafka refuses it"), "{error}");

        let mut settings = Settings::default();
        settings
            .kafka
            .extra
            .insert("linger.ms".into(), "soon".into());
        let error = check_client_settings(&settings).unwrap_err().to_string();
        assert!(error.contains("kafka.extra.linger.ms"), "{error}");
    }

    #[test]
    fn extra_properties_pass_through() {
        let mut settings = KafkaSettings::default();
        settings
            .extra
            .insert("client.rack".into(), "eu-west-1a".into());
        let config = base_config(&settings, "t").unwrap();
        assert_eq!(config.get("client.rack"), Some("eu-west-1a"));
    }

    #[test]
    fn static_membership_joins_with_the_instance_id_and_only_when_asked() {
        let mut settings = Settings {
            instance_id: "orderflow-2".into(),
            ..Settings::default()
        };
        let dynamic = processor_consumer_config(&settings, "0123456789abcdef").unwrap();
        assert_eq!(dynamic.get("group.instance.id"), None);
        settings.processor.static_membership = true;
        let fixed = processor_consumer_config(&settings, "0123456789abcdef").unwrap();
        assert_eq!(fixed.get("group.instance.id"), Some("orderflow-2"));
    }

    #[test]
    fn consumers_fetch_with_a_short_wait_unless_the_operator_sets_one() {
        let mut settings = Settings::default();
        let processor = processor_consumer_config(&settings, "0123456789abcdef").unwrap();
        let reader = committed_reader_config(&settings.kafka, "t", "g").unwrap();
        assert_eq!(processor.get("fetch.wait.max.ms"), Some(FETCH_WAIT_MAX_MS));
        assert_eq!(reader.get("fetch.wait.max.ms"), Some(FETCH_WAIT_MAX_MS));
        settings
            .kafka
            .extra
            .insert("fetch.wait.max.ms".into(), "250".into());
        let processor = processor_consumer_config(&settings, "0123456789abcdef").unwrap();
        let reader = committed_reader_config(&settings.kafka, "t", "g").unwrap();
        assert_eq!(processor.get("fetch.wait.max.ms"), Some("250"));
        assert_eq!(reader.get("fetch.wait.max.ms"), Some("250"));
    }

    #[test]
    fn request_producers_partition_like_java_clients() {
        let config = request_producer_config(&KafkaSettings::default(), "t").unwrap();
        assert_eq!(config.get("partitioner"), Some("murmur2_random"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn processor_client_ids_carry_instance_and_definition_hash() {
        let id = processor_client_id("orderflow-2", "0123456789abcdef");
        assert_eq!(
            parse_processor_client_id(&id),
            Some(("orderflow-2", "0123456789abcdef"))
        );
        assert_eq!(
            parse_processor_client_id("orderflow.a.b.0123456789abcdef"),
            Some(("a.b", "0123456789abcdef"))
        );
        assert_eq!(parse_processor_client_id("rdkafka"), None);
        assert_eq!(parse_processor_client_id("orderflow.x.nothex"), None);
    }

    #[test]
    fn tls_and_scram_clients_can_be_created() {
        // librdkafka refuses SSL protocols and SCRAM at creation when built without OpenSSL.
        let settings = KafkaSettings {
            security_protocol: "SASL_SSL".into(),
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            sasl_username: Some("orderflow".into()),
            sasl_password: Some(crate::config::Secret::new("s3cret")),
            ..KafkaSettings::default()
        };
        let created: Result<rdkafka::consumer::BaseConsumer, _> =
            base_config(&settings, "tls-test").unwrap().create();
        assert!(created.is_ok(), "{:?}", created.err());
    }

    #[test]
    fn described_configs_mask_secrets() {
        let settings = KafkaSettings {
            sasl_password: serde_json::from_str::<Secret>("\"hunter2\"").ok(),
            ..KafkaSettings::default()
        };
        let text = describe(&base_config(&settings, "t").unwrap());
        assert!(text.contains("sasl.password=***"), "{text}");
        assert!(!text.contains("hunter2"));
    }
}
