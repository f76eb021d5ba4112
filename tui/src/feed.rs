//! The dashboard's news from the API server: one list-then-watch loop per kind, and node usage.
//!
//! Each loop lists its collection, then watches from the list's resourceVersion; when the
//! watch ends (the master restarted, the connection broke, the version expired) it lists
//! again. A failure becomes [`Update::Lost`], so the screen can say the master is unreachable
//! while it keeps showing the last state, and the loop retries by itself with a growing pause
//! (at most [`RETRY_MAX`]). Node usage has no watch in Kubernetes, so it alone is polled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::client::{Client, WatchKind};
use protocol::error::error_chain;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;

use crate::app::Message;
use crate::cluster::Resource;

/// The longest pause between reconnection attempts.
const RETRY_MAX: Duration = Duration::from_secs(3);
/// Objects per list page.
const PAGE: usize = 500;
/// How often node usage is fetched.
const USAGE_EVERY: Duration = Duration::from_secs(5);

/// News from the API server.
#[derive(Debug)]
pub enum Update {
    /// A page of a full list of a kind (first connect and every reconnect).
    Listed {
        /// The kind.
        resource: Resource,
        /// Its objects on this page.
        items: Vec<Value>,
        /// The list's first page.
        first: bool,
        /// The list's last page.
        last: bool,
    },
    /// One watch event.
    Changed {
        /// The kind.
        resource: Resource,
        /// Added, modified or deleted.
        kind: WatchKind,
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

impl Update {
    /// A whole list in one page.
    pub fn whole_list(resource: Resource, items: Vec<Value>) -> Update {
        Update::Listed {
            resource,
            items,
            first: true,
            last: true,
        }
    }
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
        let version = match list_in_pages(&client, resource, &send).await {
            Ok(Some(version)) => version,
            Ok(None) => return,
            Err(error) => {
                if !send(Update::Lost { resource, error }) {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
                continue;
            }
        };
        let watched = Instant::now();
        let mut events = match client.watch(resource.path(), &version).await {
            Ok(events) => events,
            Err(error) => {
                tracing::debug!(?resource, error = error_chain(&error), "watch refused");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
                continue;
            }
        };
        while let Some(event) = events.recv().await {
            match event.kind {
                WatchKind::Error => {
                    tracing::debug!(?resource, status = %event.object, "watch error");
                    break;
                }
                WatchKind::Bookmark => {}
                WatchKind::Added | WatchKind::Modified | WatchKind::Deleted => {
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
        tracing::debug!(?resource, "watch ended; listing again");
        // A watch that ends at once (410 Gone, a server shutting down) must not turn into a
        // tight list loop; one that ran a while resets the pause.
        if watched.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        } else {
            pause = Duration::from_millis(250);
        }
    }
}

/// Lists a kind in pages of [`PAGE`] and sends each; returns the list's resourceVersion to
/// watch from, `None` when the dashboard is gone, or the error in words.
async fn list_in_pages(
    client: &Client,
    resource: Resource,
    send: &impl Fn(Update) -> bool,
) -> Result<Option<String>, String> {
    let mut continue_token = String::new();
    let mut version = None;
    loop {
        let mut path = format!("{}?limit={PAGE}", resource.path());
        if !continue_token.is_empty() {
            path.push_str("&continue=");
            path.push_str(&continue_token);
        }
        let mut page = client.get(&path).await.map_err(|e| error_chain(&e))?;
        let metadata = &page["metadata"];
        // Later pages show the state when they are read; watching from the first page's
        // version replays whatever changed meanwhile (applying a change twice is harmless).
        version.get_or_insert_with(|| {
            metadata["resourceVersion"]
                .as_str()
                .unwrap_or("0")
                .to_owned()
        });
        let first = continue_token.is_empty();
        continue_token = metadata["continue"].as_str().unwrap_or_default().to_owned();
        let items = match page["items"].take() {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        let last = continue_token.is_empty();
        if !send(Update::Listed {
            resource,
            items,
            first,
            last,
        }) {
            return Ok(None);
        }
        if last {
            return Ok(version);
        }
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
