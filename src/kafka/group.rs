//! Who owns which partition: the consumer group's own membership is the instances' announcement.
//! Each processor's `client.id` names its instance ([`super::processor_client_id`]) and the group
//! coordinator knows every member's assignment, so no extra topic is needed to find an owner.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};
use rdkafka::error::KafkaError;
use rdkafka::groups::GroupList;
use rdkafka::types::RDKafkaErrorCode;

use super::client::parse_processor_client_id;

/// A classic consumer-protocol assignment (`ConsumerProtocolAssignment` v0–v3) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed consumer group assignment: {0}")]
pub struct AssignmentError(&'static str);

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], AssignmentError> {
        if self.bytes.len() < n {
            return Err(AssignmentError(what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, AssignmentError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, AssignmentError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn count(&mut self, what: &'static str) -> Result<usize, AssignmentError> {
        let n = self.i32(what)?;
        // A null array (-1) is empty; a count larger than the bytes left is malformed.
        let n = usize::try_from(n.max(0)).map_err(|_| AssignmentError(what))?;
        if n > self.bytes.len() {
            return Err(AssignmentError(what));
        }
        Ok(n)
    }
}

/// Decodes the partitions of `topic` in a member's assignment bytes (as the group coordinator
/// returns them for the classic `consumer` protocol type). Empty bytes are an empty assignment.
pub fn assigned_partitions(bytes: &[u8], topic: &str) -> Result<Vec<i32>, AssignmentError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut cursor = Cursor { bytes };
    let _version = cursor.i16("version")?;
    let topics = cursor.count("topic count")?;
    let mut partitions = Vec::new();
    for _ in 0..topics {
        let name_len = usize::try_from(cursor.i16("topic name length")?.max(0))
            .map_err(|_| AssignmentError("topic name length"))?;
        let name = cursor.take(name_len, "topic name")?;
        let count = cursor.count("partition count")?;
        for _ in 0..count {
            let partition = cursor.i32("partition")?;
            if name == topic.as_bytes() {
                partitions.push(partition);
            }
        }
    }
    partitions.sort_unstable();
    Ok(partitions)
}

/// Whether a group lookup failed only because the group's coordinator is not ready yet: loading
/// its partition of `__consumer_offsets` (a broker that just started), moving, or slow to answer.
pub fn is_coordinator_transient(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
        )
    )
}

/// Describes `group`, asking again (100 ms, doubling to 2 s) while its coordinator is not ready
/// ([`is_coordinator_transient`]), for at most `patience`; other errors return at once.
pub fn describe_group<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    patience: Duration,
) -> Result<GroupList, KafkaError> {
    let deadline = Instant::now() + patience;
    let mut backoff = Duration::from_millis(100);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match client.fetch_group_list(
            Some(group),
            remaining.clamp(Duration::from_secs(1), Duration::from_secs(15)),
        ) {
            Err(e) if is_coordinator_transient(&e) && Instant::now() + backoff < deadline => {
                tracing::info!(error = %e, group, "the group coordinator is not ready; asking again");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            result => return result,
        }
    }
}

/// Maps each assigned partition of `topic` to the instance id of the processor owning it, as the
/// group coordinator of `group` sees it now. Members that are not orderflow processors are skipped.
pub fn partition_owners<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, String>, KafkaError> {
    let groups = client.fetch_group_list(Some(group), timeout)?;
    let mut owners = BTreeMap::new();
    for member in groups.groups().iter().flat_map(|g| g.members()) {
        let Some((instance, _)) = parse_processor_client_id(member.client_id()) else {
            continue;
        };
        let Some(bytes) = member.assignment() else {
            continue;
        };
        match assigned_partitions(bytes, topic) {
            Ok(partitions) => {
                for p in partitions {
                    owners.insert(p, instance.to_string());
                }
            }
            Err(e) => tracing::warn!(error = %e, member = member.id(), "skipping a group member"),
        }
    }
    Ok(owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loading_or_moving_coordinator_is_transient_other_failures_are_not() {
        for code in [
            RDKafkaErrorCode::CoordinatorLoadInProgress,
            RDKafkaErrorCode::CoordinatorNotAvailable,
            RDKafkaErrorCode::NotCoordinator,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert!(
                is_coordinator_transient(&KafkaError::GroupListFetch(code)),
                "{code:?}"
            );
        }
        for code in [
            RDKafkaErrorCode::GroupAuthorizationFailed,
            RDKafkaErrorCode::InvalidGroupId,
            RDKafkaErrorCode::BrokerTransportFailure,
        ] {
            assert!(
                !is_coordinator_transient(&KafkaError::GroupListFetch(code)),
                "{code:?}"
            );
        }
    }

    fn encode(version: i16, topics: &[(&str, &[i32])], user_data: &[u8]) -> Vec<u8> {
        let mut out = version.to_be_bytes().to_vec();
        out.extend((topics.len() as i32).to_be_bytes());
        for (name, partitions) in topics {
            out.extend((name.len() as i16).to_be_bytes());
            out.extend(name.as_bytes());
            out.extend((partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                out.extend(p.to_be_bytes());
            }
        }
        out.extend((user_data.len() as i32).to_be_bytes());
        out.extend(user_data);
        out
    }

    #[test]
    fn the_partitions_of_the_named_topic_are_read_and_others_skipped() {
        let bytes = encode(
            3,
            &[("requests", &[7, 2]), ("other", &[1]), ("requests", &[5])],
            b"sticky",
        );
        assert_eq!(
            assigned_partitions(&bytes, "requests").unwrap(),
            vec![2, 5, 7]
        );
        assert_eq!(assigned_partitions(&bytes, "other").unwrap(), vec![1]);
        assert!(assigned_partitions(&bytes, "absent").unwrap().is_empty());
    }

    #[test]
    fn an_empty_assignment_has_no_partitions() {
        assert!(assigned_partitions(&[], "t").unwrap().is_empty());
        assert!(assigned_partitions(&encode(0, &[], &[]), "t")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn truncated_or_lying_assignments_are_errors_not_panics() {
        let bytes = encode(1, &[("requests", &[1, 2, 3])], &[]);
        for cut in 1..bytes.len() - 4 {
            assert!(
                assigned_partitions(&bytes[..cut], "requests").is_err(),
                "cut at {cut}"
            );
        }
        let mut huge = 0i16.to_be_bytes().to_vec();
        huge.extend(i32::MAX.to_be_bytes());
        assert!(assigned_partitions(&huge, "requests").is_err());
    }
}
