//! Talking to orderflow the way upstream services and people do: through Kafka. Requests go to the
//! requests topic; outcomes are read back from the output topics with read_committed.

pub(crate) mod gateway;
pub(crate) mod outcome;
pub(crate) mod scan;

pub use gateway::{Gateway, GatewayError};
pub use outcome::{decode_outcome, DeadLetter, Outcome};
pub use scan::scan_topic;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

/// Assigns `reader` every partition of `topics`, from their beginning or from the end they have
/// now (blocking; see `positions`).
pub fn assign_outputs<C: ConsumerContext>(
    reader: &BaseConsumer<C>,
    topics: &[&str],
    partitions: i32,
    from_beginning: bool,
) -> Result<(), GatewayError> {
    let assignment = positions(reader, topics, 0..partitions, from_beginning)?;
    reader
        .assign(&assignment)
        .map_err(|source| GatewayError::Kafka {
            doing: "assigning the output topics".into(),
            source,
        })
}

/// `partitions` of each of `topics`, positioned at their beginning or at the end they have now
/// (blocking). The end as explicit offsets, not `Offset::End`: a record written between now and
/// the reader's first fetch must not be skipped.
pub(crate) fn positions<C: ConsumerContext>(
    reader: &BaseConsumer<C>,
    topics: &[&str],
    partitions: impl Iterator<Item = i32> + Clone,
    from_beginning: bool,
) -> Result<TopicPartitionList, GatewayError> {
    let kafka = |doing: String| move |source| GatewayError::Kafka { doing, source };
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for partition in partitions.clone() {
            let offset = if from_beginning {
                Offset::Beginning
            } else {
                Offset::Offset(
                    crate::state::restore::end_offset(reader, topic, partition)
                        .map_err(kafka(format!("reading the end of {topic} [{partition}]")))?,
                )
            };
            assignment
                .add_partition_offset(topic, partition, offset)
                .map_err(kafka(format!("assigning {topic} [{partition}]")))?;
        }
    }
    Ok(assignment)
}
