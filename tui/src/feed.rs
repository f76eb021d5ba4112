//! The dashboard's news from the API server: one list-then-watch loop per kind, and node usage.
//!
//! Each loop lists its collection, then watches from the list's resourceVersion; when the
//! watch ends (the master restarted, the connection broke, the version expired) it lists
//! again. A failure becomes [`Update::Lost`], so the screen can say the master is unreachable
//! while it keeps showing the last state, and the loop retries by itself with a growing pause
//! (at most [`RETRY_MAX`]). Node usage has no watch in Kubernetes, so it alone is polled.

use std::sync::Arc;
use std::time::Duration;

use agent::client::Client;
use agent::pods::error_chain;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;

use crate::app::Message;
use crate::cluster::Resource;

/// The longest pause between reconnection attempts.
const RETRY_MAX: Duration = Duration::from_secs(3);
/// How often node usage is fetched.
const USAGE_EVERY: Duration = Duration::from_secs(5);

/// News from the API server.
#[derive(Debug)]
pub enum Update {
    /// A full list of a kind (first connect and every reconnect).
    Listed {
        /// The kind.
        resource: Resource,
        /// Its objects.
        items: Vec<Value>,
    },
    /// One watch event.
    Changed {
        /// The kind.
        resource: Resource,
        /// `ADDED`, `MODIFIED` or `DELETED`.
        kind: String,
        /// The object.
        object: Value,
    },
    /// Node usage (`metrics.k8s.io` NodeMetrics items).
    Usage(Vec<Value>),
    /// A feed lost the server.
    Lost {
        /// The kind.
        resource: Resource,
        /// Why, in words.
        error: String,
    },
}

/// Starts every feed; they run until the returned set is dropped.
pub fn start(client: Arc<Client>, inbox: UnboundedSender<Message>) -> JoinSet<()> {
    let mut feeds = JoinSet::new();
    for resource in Resource::ALL {
        feeds.spawn(follow(client.clone(), resource, inbox.clone()));
    }
    feeds.spawn(poll_usage(client, inbox));
    feeds
}

async fn follow(client: Arc<Client>, resource: Resource, inbox: UnboundedSender<Message>) {
    let send = |update| inbox.send(Message::Feed(update)).is_ok();
    let mut pause = Duration::from_millis(250);
    loop {
        let mut list = match client.get(resource.path()).await {
            Ok(list) => list,
            Err(error) => {
                let error = error_chain(&error);
                if !send(Update::Lost { resource, error }) {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
                continue;
            }
        };
        pause = Duration::from_millis(250);
        let mut version = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("0")
            .to_owned();
        let items = match list["items"].take() {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        if !send(Update::Listed { resource, items }) {
            return;
        }
        let mut events = match client.watch(resource.path(), &version).await {
            Ok(events) => events,
            Err(_) => continue,
        };
        while let Some(event) = events.recv().await {
            match event.kind.as_str() {
                "ERROR" => break,
                "BOOKMARK" => {}
                _ => {
                    if let Some(rv) = event.object.pointer("/metadata/resourceVersion") {
                        version = rv.as_str().unwrap_or_default().to_owned();
                    }
                    let update = Update::Changed {
                        resource,
                        kind: event.kind,
                        object: event.object,
                    };
                    if !send(update) {
                        return;
                    }
                }
            }
        }
        tracing::debug!(?resource, version, "watch ended; listing again");
    }
}

async fn poll_usage(client: Arc<Client>, inbox: UnboundedSender<Message>) {
    let mut every = tokio::time::interval(USAGE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // A missing metrics API is not an outage: the cards show allocatable only.
        if let Ok(mut list) = client.get("/apis/metrics.k8s.io/v1beta1/nodes").await {
            let items = match list["items"].take() {
                Value::Array(items) => items,
                _ => Vec::new(),
            };
            if inbox.send(Message::Feed(Update::Usage(items))).is_err() {
                return;
            }
        }
    }
}
