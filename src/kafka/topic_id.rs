//! A topic's id (KIP-516), which rust-rdkafka does not expose: librdkafka's DescribeTopics
//! through its C API. A topic deleted and created again under the same name gets a new id, which
//! is how a local store tells that the state topic it was written for is gone.

use std::ffi::{c_char, CStr, CString};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};

/// Why a topic's id could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopicIdError {
    /// The name cannot be passed to librdkafka.
    #[error("topic name {0:?} contains a NUL byte")]
    Name(String),
    /// The cluster answered with an error (the topic does not exist, no authorization, …).
    #[error("describing topic {topic}: {message}")]
    Refused {
        /// The topic.
        topic: String,
        /// librdkafka's description of the error.
        message: String,
    },
    /// No answer in time.
    #[error("describing topic {topic}: no answer within {timeout:?}")]
    Timeout {
        /// The topic.
        topic: String,
        /// How long it waited.
        timeout: Duration,
    },
}

/// Frees librdkafka objects when the call is done, whichever way it ends.
struct Owned<T> {
    ptr: *mut T,
    free: unsafe extern "C" fn(*mut T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from the librdkafka constructor matching `free` and is freed once.
            unsafe { (self.free)(self.ptr) }
        }
    }
}

/// The id of `topic` (base64, as Kafka's tools print it), asked of the cluster `client` talks to.
pub fn topic_id<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<String, TopicIdError> {
    let name = CString::new(topic).map_err(|_| TopicIdError::Name(topic.to_string()))?;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let rk = client.native_ptr();
    // SAFETY: every pointer passed below is either `rk` (alive as long as `client`) or was just
    // returned by librdkafka and is freed by its `Owned` guard after its last use; `name` outlives
    // the collection that points at it; strings read from the result are copied before the event
    // that owns them is destroyed.
    unsafe {
        let mut names: [*const c_char; 1] = [name.as_ptr()];
        let collection = Owned {
            ptr: rd::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), 1),
            free: rd::rd_kafka_TopicCollection_destroy,
        };
        let options = Owned {
            ptr: rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            ),
            free: rd::rd_kafka_AdminOptions_destroy,
        };
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.ptr,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let queue = Owned {
            ptr: rd::rd_kafka_queue_new(rk),
            free: rd::rd_kafka_queue_destroy,
        };
        rd::rd_kafka_DescribeTopics(rk, collection.ptr, options.ptr, queue.ptr);
        let event = Owned {
            ptr: rd::rd_kafka_queue_poll(queue.ptr, timeout_ms.saturating_add(1000)),
            free: rd::rd_kafka_event_destroy,
        };
        if event.ptr.is_null() {
            return Err(TopicIdError::Timeout {
                topic: topic.to_string(),
                timeout,
            });
        }
        let refused = |message: String| TopicIdError::Refused {
            topic: topic.to_string(),
            message,
        };
        if rd::rd_kafka_event_error(event.ptr)
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return Err(refused(text(rd::rd_kafka_event_error_string(event.ptr))));
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(event.ptr);
        if result.is_null() {
            return Err(refused("an answer that is not DescribeTopics'".into()));
        }
        let mut count = 0;
        let descriptions = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        if descriptions.is_null() || count == 0 {
            return Err(refused("no topic in the answer".into()));
        }
        let description = *descriptions;
        let error = rd::rd_kafka_TopicDescription_error(description);
        if !error.is_null()
            && rd::rd_kafka_error_code(error) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return Err(refused(text(rd::rd_kafka_error_string(error))));
        }
        let id = rd::rd_kafka_TopicDescription_topic_id(description);
        if id.is_null() {
            return Err(refused("the answer has no topic id".into()));
        }
        Ok(text(rd::rd_kafka_Uuid_base64str(id)))
    }
}

/// A copy of a C string owned by librdkafka (empty for a null pointer).
///
/// # Safety
/// `ptr` is null or points at a NUL-terminated string alive for the call.
unsafe fn text(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: the caller's contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}
