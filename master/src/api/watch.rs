//! Watch streams: replay from a resourceVersion, initial events for watch-list, selectors, bookmarks.
//!
//! A watch subscribes to live changes *before* reading history or the initial list, then drops
//! live changes it has already sent by revision, so nothing falls between the two. A watcher
//! that falls too far behind the live fan-out is ended; clients re-watch from their last
//! revision, as they do when any watch ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::codec::ResponseFormat;
use super::error::ApiError;
use super::objects::{blocking, table_with, Call};
use super::Body;
use crate::conversion;
use crate::resources::Resource;
use crate::store::{Change, EventType};
use protocol::selector::{FieldSelector, LabelSelector};

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);
/// Longest a watch runs when the client sets no timeout (upstream's default is 30 to 60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches_object(object) && self.fields.matches_object(object)
    }

    fn everything(&self) -> bool {
        self.labels.is_everything() && self.fields.requirements().next().is_none()
    }

    /// What the watcher sees of a change: upstream turns a modification that moves an object
    /// into or out of the selection into ADDED or DELETED.
    fn view(&self, change: &Change) -> Option<(EventType, Arc<Value>)> {
        if self
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != change.namespace)
        {
            return None;
        }
        if self.everything() {
            return Some((change.event, change.object.clone()));
        }
        let now = self.matches(&change.object);
        match change.event {
            EventType::Added | EventType::Deleted => {
                now.then(|| (change.event, change.object.clone()))
            }
            EventType::Modified => match (change.previous.as_ref().map(|p| self.matches(p)), now) {
                (Some(true), true) | (None, true) => {
                    Some((EventType::Modified, change.object.clone()))
                }
                (Some(false), true) => Some((EventType::Added, change.object.clone())),
                (Some(true), false) => {
                    let mut gone = change.previous.as_deref().cloned().unwrap_or_default();
                    gone["metadata"]["resourceVersion"] = json!(change.revision.to_string());
                    Some((EventType::Deleted, Arc::new(gone)))
                }
                (Some(false), false) | (None, false) => None,
            },
        }
    }
}

struct Encoder {
    resource: &'static Resource,
    format: ResponseFormat,
    columns_sent: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, object: &Value) -> Bytes {
        let object = conversion::from_storage(self.resource, object.clone());
        let object = match self.format {
            ResponseFormat::Table(include) => {
                let table = table_with(
                    self.resource,
                    std::slice::from_ref(&object),
                    include,
                    json!({"resourceVersion": object.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))}),
                    !self.columns_sent,
                );
                self.columns_sent = true;
                table
            }
            _ => object,
        };
        line(kind, &object)
    }

    fn bookmark(&self, revision: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            &json!({"kind": self.resource.kind, "apiVersion": self.resource.api_version(), "metadata": metadata}),
        )
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Starts a watch and returns the streaming response.
pub async fn serve(call: Call) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = call.selectors()?;
    let resource = call.target.resource;
    let key = resource.storage_key();
    let query = &call.query;
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let send_initial = query.get("sendInitialEvents").is_some_and(|s| s == "true");
    if send_initial && !bookmarks {
        return Err(ApiError::new(
            422,
            "Invalid",
            "sendInitialEvents: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
        ));
    }
    let start = super::objects::parse_resource_version(query)?;
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let filter = Filter {
        namespace: call.target.namespace.clone(),
        labels,
        fields,
    };
    let store = call.state.store.clone();
    let live = store.subscribe();

    // Initial state (a list) when no revision is given or the client asks for initial events;
    // otherwise the history after the given revision.
    let wants_list = start.is_none() || send_initial;
    let backlog = {
        let store = store.clone();
        let key = key.clone();
        let namespace = filter.namespace.clone();
        let list_filter = (filter.labels.clone(), filter.fields.clone());
        blocking(move || {
            if wants_list {
                let page = store.list(&key, namespace.as_deref(), None, 0, &|o: &Value| {
                    list_filter.0.matches_object(o) && list_filter.1.matches_object(o)
                })?;
                Ok(Backlog::Initial {
                    items: page.items,
                    revision: page.revision,
                })
            } else {
                match store.changes_since(&key, start.unwrap_or_default()) {
                    Ok(changes) => Ok(Backlog::History(changes)),
                    Err(crate::store::StoreError::Expired { requested, oldest }) => {
                        Ok(Backlog::Expired(format!(
                            "too old resource version: {requested} ({oldest})"
                        )))
                    }
                    Err(e) => Err(ApiError::from(e)),
                }
            }
        })
        .await?
    };

    let (sender, receiver) = mpsc::channel::<Bytes>(64);
    let mut encoder = Encoder {
        resource,
        format: call.format,
        columns_sent: false,
    };
    tokio::spawn(async move {
        let mut last_sent = start.unwrap_or(0);
        match backlog {
            Backlog::Expired(message) => {
                let status = ApiError::gone(message).status();
                let _ = sender.send(line("ERROR", &status)).await;
                return;
            }
            Backlog::Initial { items, revision } => {
                for item in &items {
                    if sender.send(encoder.event("ADDED", item)).await.is_err() {
                        return;
                    }
                }
                if send_initial && sender.send(encoder.bookmark(revision, true)).await.is_err() {
                    return;
                }
                last_sent = revision;
            }
            Backlog::History(changes) => {
                for change in changes {
                    if let Some((kind, object)) = filter.view(&change) {
                        if sender
                            .send(encoder.event(kind.as_str(), &object))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    last_sent = last_sent.max(change.revision);
                }
            }
        }
        stream_live(
            live, sender, encoder, filter, key, last_sent, bookmarks, timeout,
        )
        .await;
    });

    let body = StreamBody::new(
        ReceiverStream::new(receiver).map(|bytes| Ok::<_, std::io::Error>(Frame::data(bytes))),
    );
    let content_type = match call.format {
        ResponseFormat::Table(_) => "application/json;as=Table;v=v1;g=meta.k8s.io",
        _ => "application/json",
    };
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(BodyExt::boxed(body))
        .map_err(|e| ApiError::internal(format!("cannot build the watch response: {e}")))
}

enum Backlog {
    Initial { items: Vec<Value>, revision: u64 },
    History(Vec<Change>),
    Expired(String),
}

#[allow(clippy::too_many_arguments)]
async fn stream_live(
    mut live: broadcast::Receiver<Arc<Change>>,
    sender: mpsc::Sender<Bytes>,
    mut encoder: Encoder,
    filter: Filter,
    key: String,
    mut last_sent: u64,
    bookmarks: bool,
    timeout: Duration,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut bookmark_timer = tokio::time::interval(BOOKMARK_INTERVAL);
    bookmark_timer.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = sender.closed() => return,
            _ = bookmark_timer.tick(), if bookmarks => {
                if sender.send(encoder.bookmark(last_sent, false)).await.is_err() {
                    return;
                }
            }
            received = live.recv() => match received {
                Ok(change) => {
                    if change.resource != key || change.revision <= last_sent {
                        continue;
                    }
                    last_sent = change.revision;
                    if let Some((kind, object)) = filter.view(&change) {
                        if sender.send(encoder.event(kind.as_str(), &object)).await.is_err() {
                            return;
                        }
                    }
                }
                // Too far behind: end the stream; the client re-watches from its last revision.
                Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
