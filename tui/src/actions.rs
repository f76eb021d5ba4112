//! What the dashboard's keys do to the cluster: chaos, cordon, drain, scale and delete, as API calls.
//!
//! Each runs on its own task and reports one [`Outcome`]; the screen then follows from the
//! watches like any other change, so a key press and a `kubectl` command look the same.

use protocol::client::{Client, ClientError};
use protocol::error::error_chain;
use serde_json::{json, Value};

use crate::app::{Command, Outcome};

/// Carries out a cluster command (not `Quit` or the monkey, which the runtime handles).
pub async fn run(client: &Client, command: &Command) -> Outcome {
    let result = match command {
        Command::Kill(node) => protocol::chaos::set_node_alive(client, node, false)
            .await
            .map(|()| format!("killed node {node}"))
            .map_err(|e| error_chain(&e)),
        Command::Revive(node) => protocol::chaos::set_node_alive(client, node, true)
            .await
            .map(|()| format!("revived node {node}"))
            .map_err(|e| error_chain(&e)),
        Command::Cordon(node) => set_unschedulable(client, node, true)
            .await
            .map(|()| format!("cordoned node {node}")),
        Command::Uncordon(node) => set_unschedulable(client, node, false)
            .await
            .map(|()| format!("uncordoned node {node}")),
        Command::Drain(node) => drain(client, node).await,
        Command::Scale {
            namespace,
            name,
            replicas,
        } => client
            .merge_patch(
                &format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"),
                &json!({"spec": {"replicas": replicas}}),
            )
            .await
            .map(|_| format!("scaled deployment {name} to {replicas}"))
            .map_err(|e| error_chain(&e)),
        Command::DeletePod { namespace, name } => client
            .delete(
                &format!("/api/v1/namespaces/{namespace}/pods/{name}"),
                &json!({}),
            )
            .await
            .map(|_| format!("deleted pod {name}"))
            .map_err(|e| error_chain(&e)),
        Command::StartMonkey | Command::StopMonkey | Command::Quit => {
            Err("not an API command".to_owned())
        }
    };
    match result {
        Ok(message) => Outcome { message, ok: true },
        Err(message) => Outcome { message, ok: false },
    }
}

async fn set_unschedulable(client: &Client, node: &str, unschedulable: bool) -> Result<(), String> {
    client
        .merge_patch(
            &format!("/api/v1/nodes/{node}"),
            &json!({"spec": {"unschedulable": unschedulable}}),
        )
        .await
        .map(|_| ())
        .map_err(|e| error_chain(&e))
}

/// Cordons the node and evicts its pods like `kubectl drain --ignore-daemonsets`: DaemonSet
/// pods stay, and a pod whose disruption budget forbids eviction is named in the outcome.
async fn drain(client: &Client, node: &str) -> Result<String, String> {
    set_unschedulable(client, node, true).await?;
    let pods = client
        .get(&format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"
        ))
        .await
        .map_err(|e| error_chain(&e))?;
    let mut evicted = 0;
    let mut refused = Vec::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        if is_daemon_pod(pod) || pod["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let eviction = json!({
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        });
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}/eviction");
        match client.create(&path, &eviction).await {
            Ok(_) => evicted += 1,
            Err(ClientError::Status { code: 404, .. }) => {}
            Err(error) => refused.push(format!("{name} ({})", error_chain(&error))),
        }
    }
    if refused.is_empty() {
        Ok(format!("drained node {node}: {evicted} pods evicted"))
    } else {
        Err(format!(
            "drained node {node} partly: {evicted} evicted, not evicted: {}",
            refused.join(", ")
        ))
    }
}

fn is_daemon_pod(pod: &Value) -> bool {
    pod["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|owner| owner["kind"] == "DaemonSet")
}
