//! The dashboard's news from the API server: one list-then-watch loop per kind, and node usage.
//!
//! Each loop is the protocol client's list-then-watch ([`Client::follow_with`]): it lists its
//! collection in pages, then watches from the list's resourceVersion; when the watch ends (the
//! master restarted, the connection broke, the version expired) it lists again. A failure
//! becomes [`Update::Lost`], so the screen can say the master is unreachable while it keeps
//! showing the last state, and the client retries by itself with a growing pause. Node usage
//! has no watch in Kubernetes, so it alone is polled.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use protocol::client::{Client, ClientError, Event, Follower, WatchKind};
use protocol::error::error_chain;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;

use crate::app::Message;
use crate::cluster::Resource;

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
    /// The server refused this identity the feed (403): the cluster is reachable, but the
    /// kubeconfig's user may not list or watch `resource`.
    Refused {
        /// The kind.
        resource: Resource,
        /// The server's message (`pods is forbidden: User "alice" cannot list ...`).
        message: String,
    },
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
    let send = |update| {
        if inbox.send(Message::Feed(update)).is_ok() {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    };
    // The list arrives in screenfuls of PAGE objects, so a big cluster shows up as it loads.
    let mut listed: Vec<Value> = Vec::new();
    let mut first = true;
    let follower = Follower {
        page: PAGE,
        handle: |event: Event<'_>| match event {
            Event::Init => {
                first = true;
                ControlFlow::Continue(())
            }
            Event::InitApply(object) => {
                listed.push(object.clone());
                if listed.len() < PAGE {
                    return ControlFlow::Continue(());
                }
                let items = std::mem::take(&mut listed);
                let last = false;
                let update = Update::Listed {
                    resource,
                    items,
                    first: std::mem::take(&mut first),
                    last,
                };
                send(update)
            }
            Event::InitDone => {
                let items = std::mem::take(&mut listed);
                let first = std::mem::take(&mut first);
                send(Update::Listed {
                    resource,
                    items,
                    first,
                    last: true,
                })
            }
            Event::Apply(object) => send(Update::Changed {
                resource,
                kind: WatchKind::Modified,
                object: object.clone(),
            }),
            Event::Delete(object) => send(Update::Changed {
                resource,
                kind: WatchKind::Deleted,
                object: object.clone(),
            }),
        },
        lost: |error: &ClientError| match error {
            ClientError::Status {
                code: 403, message, ..
            } => send(Update::Refused {
                resource,
                message: message.clone(),
            }),
            _ => send(Update::Lost {
                resource,
                error: error_chain(error),
            }),
        },
    };
    client.follow_with(resource.path(), follower).await;
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
