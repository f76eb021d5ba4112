//! Events that controllers record about objects, aggregated the way `kubectl describe` expects.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::api::ApiState;

/// How many distinct recent events are remembered for aggregation.
const REMEMBERED: usize = 4_096;

/// (involved object uid, reason, message) of an event.
type Identity = (String, String, String);

/// Records events; a repeat of the same reason and message for the same object bumps the
/// count of the existing event instead of creating another.
#[derive(Default)]
pub struct EventRecorder {
    recent: Mutex<HashMap<Identity, (String, String)>>,
}

impl EventRecorder {
    /// Records one event; returns the revision it was written at.
    pub fn record(
        &self,
        api: &ApiState,
        component: &str,
        object: &Value,
        kind: &str,
        reason: &str,
        message: &str,
    ) -> Option<u64> {
        let meta = &object["metadata"];
        let uid = meta["uid"].as_str().unwrap_or_default().to_owned();
        let name = meta["name"].as_str().unwrap_or_default();
        let namespace = meta["namespace"]
            .as_str()
            .filter(|ns| !ns.is_empty())
            .unwrap_or("default");
        let now = super::now_time();
        let identity = (uid.clone(), reason.to_owned(), message.to_owned());
        let existing = self
            .recent
            .lock()
            .expect("event lock")
            .get(&identity)
            .cloned();
        if let Some((ns, event_name)) = existing {
            let bumped = api.store.update::<crate::store::StoreError>(
                "core/events",
                &ns,
                &event_name,
                |event| {
                    let mut event = event.clone();
                    let count = event["count"].as_i64().unwrap_or(1) + 1;
                    event["count"] = json!(count);
                    event["lastTimestamp"] = json!(now);
                    Ok(event)
                },
            );
            if let Ok(event) = bumped {
                return super::revision_of(&event).into();
            }
        }
        let event_name = format!("{name}.{:016x}", rand::random::<u64>());
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name, "namespace": namespace},
            "involvedObject": {
                "kind": object["kind"],
                "namespace": meta["namespace"],
                "name": name,
                "uid": uid,
                "apiVersion": object["apiVersion"],
                "resourceVersion": meta["resourceVersion"],
            },
            "reason": reason,
            "message": message,
            "source": {"component": component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": kind,
            "eventTime": null,
            "reportingComponent": component,
            "reportingInstance": "bramble-master",
        });
        let events = super::resource_of("core/events");
        match crate::api::objects::create_object(api, events, event, false) {
            Ok(created) => {
                let mut recent = self.recent.lock().expect("event lock");
                if recent.len() >= REMEMBERED {
                    recent.clear();
                }
                recent.insert(identity, (namespace.to_owned(), event_name));
                Some(super::revision_of(&created))
            }
            Err(error) => {
                tracing::debug!(reason, error = %error.message, "cannot record an event");
                None
            }
        }
    }
}
