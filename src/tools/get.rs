//! `orderflow get`: an order's current state, from the state topic or a running instance.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::Message;
use serde_json::{json, Value};

use crate::cli::GetArgs;
use crate::client::scan_topic;
use crate::codec::decode_order_state;
use crate::config::Settings;
use crate::kafka::partition_for;
use crate::machine::Definition;

/// What `get` found: `None` when the order is unknown.
pub type Found = Option<Value>;

/// What `get` found about one order.
#[derive(Debug, Clone)]
pub struct GetReport {
    /// The order id asked for.
    pub order: String,
    /// Its state, `None` when unknown.
    pub found: Found,
}

impl super::Report for GetReport {
    fn describe(&self) -> String {
        match &self.found {
            Some(state) => format!(
                "{} is {} (version {}, partition {}, updated at {} ms{})",
                self.order,
                state["state"].as_str().unwrap_or("?"),
                state["version"],
                state["partition"],
                state["updated_at_ms"],
                match state["parked_requests"].as_u64() {
                    Some(n) if n > 0 => format!(", {n} parked request(s) waiting"),
                    _ => String::new(),
                }
            ),
            None => format!(
                "{} is unknown (never created, or forgotten after its retention)",
                self.order
            ),
        }
    }

    fn to_json(&self) -> Value {
        match &self.found {
            Some(state) => state.clone(),
            None => json!({"error": "unknown order", "order_id": self.order}),
        }
    }

    fn exit_code(&self) -> u8 {
        if self.found.is_some() {
            0
        } else {
            3
        }
    }
}

/// Looks the order up in the state topic, or asks a running instance (`--via`).
pub async fn run(settings: &Settings, args: &GetArgs) -> anyhow::Result<GetReport> {
    let found = match &args.via {
        Some(url) => via_ops_server(url, &args.order).await?,
        None => {
            let settings = super::connected(settings).await?;
            let definition = Arc::new(super::definition(&settings)?);
            let order = args.order.clone();
            tokio::task::spawn_blocking(move || {
                let partitions = settings.topics.partitions;
                from_state_topic(&settings, &definition, partitions, &order)
            })
            .await??
        }
    };
    Ok(GetReport {
        order: args.order.clone(),
        found,
    })
}

/// Reads the order's partition of the compacted state topic to its end; the last record of the
/// order wins (a tombstone means forgotten).
pub fn from_state_topic(
    settings: &Settings,
    definition: &Definition,
    partitions: i32,
    order_id: &str,
) -> anyhow::Result<Found> {
    let partition = partition_for(order_id.as_bytes(), partitions);
    let mut last: Option<Option<Vec<u8>>> = None;
    scan_topic(
        &settings.kafka,
        "orderflow-get",
        &settings.topics.state,
        &[partition],
        Duration::from_secs(30),
        |message| {
            if message.key() == Some(order_id.as_bytes()) {
                last = Some(message.payload().map(<[u8]>::to_vec));
            }
        },
    )?;
    let Some(Some(value)) = last else {
        return Ok(None);
    };
    let (_, state) = decode_order_state(definition, &value)
        .with_context(|| format!("decoding the state record of {order_id}"))?;
    Ok(Some(json!({
        "order_id": order_id,
        "partition": partition,
        "state": definition.state(state.state).name,
        "version": state.version,
        "created_at_ms": state.created_at_ms,
        "updated_at_ms": state.updated_at_ms,
        "parked_requests": state.parked.len(),
    })))
}

/// Asks `base_url`'s `GET /orders/{id}`, following one 421 to the owner it names.
async fn via_ops_server(base_url: &str, order_id: &str) -> anyhow::Result<Found> {
    let mut url = format!("{}/orders/{}", base_url.trim_end_matches('/'), order_id);
    for _ in 0..2 {
        let target = url.clone();
        let (status, body) = tokio::task::spawn_blocking(move || http_get(&target)).await??;
        let answer: Value = serde_json::from_str(&body)
            .with_context(|| format!("{url} answered {status} with a body that is not JSON"))?;
        match status {
            200 => return Ok(Some(answer)),
            404 => return Ok(None),
            421 => match answer["owner_url"].as_str() {
                Some(owner) => url = owner.to_string(),
                None => bail!(
                    "{url}: another instance owns partition {} ({}); ask it, or read the state topic (omit --via)",
                    answer["partition"],
                    answer["owner_instance"].as_str().unwrap_or("owner unknown")
                ),
            },
            _ => bail!("{url} answered {status}: {body}"),
        }
    }
    bail!("{url}: the owner named by the first instance does not own the order either (a rebalance is in progress?); retry")
}

/// A plain HTTP/1.1 GET of an `http://host:port/path` URL: (status, body).
fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs are supported"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{url}: not an HTTP response"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
