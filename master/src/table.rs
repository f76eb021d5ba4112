//! Server-side printing: the columns and cells `kubectl get` shows for each resource, as upstream prints them.

use std::time::Duration;

use serde_json::{json, Value};

/// One column of a Table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Header text.
    pub name: &'static str,
    /// OpenAPI type of the cells (`string`, `integer`, `date`).
    pub type_: &'static str,
    /// `name` for the NAME column, else empty.
    pub format: &'static str,
    /// What the column shows.
    pub description: &'static str,
    /// 0 always shown; 1 only with `-o wide`.
    pub priority: i32,
}

impl Column {
    /// The `meta.k8s.io/v1` TableColumnDefinition.
    pub fn to_json(self) -> Value {
        json!({
            "name": self.name,
            "type": self.type_,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

const fn col(name: &'static str, type_: &'static str, priority: i32) -> Column {
    Column {
        name,
        type_,
        format: "",
        description: "",
        priority,
    }
}

const NAME: Column = Column {
    name: "Name",
    type_: "string",
    format: "name",
    description: "Name must be unique within a namespace.",
    priority: 0,
};
const AGE: Column = col("Age", "string", 0);
const WORKLOAD_WIDE: [Column; 3] = [
    col("Containers", "string", 1),
    col("Images", "string", 1),
    col("Selector", "string", 1),
];

const fn described(name: &'static str, priority: i32, description: &'static str) -> Column {
    Column {
        name,
        type_: "string",
        format: "",
        description,
        priority,
    }
}

/// Columns for a resource, by API group ("" for core) and plural.
pub fn columns(group: &str, plural: &str) -> Vec<Column> {
    let s = |name| col(name, "string", 0);
    let i = |name| col(name, "integer", 0);
    let wide = |name| col(name, "string", 1);
    let mut columns = vec![NAME];
    match (group, plural) {
        ("", "namespaces") => columns.extend([s("Status"), AGE]),
        ("", "pods") => columns.extend([
            s("Ready"),
            s("Status"),
            s("Restarts"),
            AGE,
            wide("IP"),
            wide("Node"),
            wide("Nominated Node"),
            wide("Readiness Gates"),
        ]),
        ("", "services") => columns.extend([
            s("Type"),
            s("Cluster-IP"),
            s("External-IP"),
            s("Port(s)"),
            AGE,
            wide("Selector"),
        ]),
        ("", "endpoints") => columns.extend([s("Endpoints"), AGE]),
        ("discovery.k8s.io", "endpointslices") => {
            columns.extend([s("AddressType"), s("Ports"), s("Endpoints"), AGE])
        }
        ("", "nodes") => columns.extend([
            s("Status"),
            s("Roles"),
            AGE,
            s("Version"),
            wide("Internal-IP"),
            wide("External-IP"),
            wide("OS-Image"),
            wide("Kernel-Version"),
            wide("Container-Runtime"),
        ]),
        ("", "configmaps") => columns.extend([i("Data"), AGE]),
        ("", "secrets") => columns.extend([s("Type"), i("Data"), AGE]),
        ("", "serviceaccounts") => columns.extend([i("Secrets"), AGE]),
        ("", "resourcequotas") => columns.extend([AGE, s("Request"), s("Limit")]),
        ("coordination.k8s.io", "leases") => columns.extend([s("Holder"), AGE]),
        ("policy", "poddisruptionbudgets") => columns.extend([
            Column {
                description: "The minimum number of pods that must be available.",
                ..s("Min Available")
            },
            Column {
                description: "The maximum number of pods that may be unavailable.",
                ..s("Max Unavailable")
            },
            Column {
                description: "Calculated number of pods that may be disrupted at this time.",
                ..i("Allowed Disruptions")
            },
            AGE,
        ]),
        ("certificates.k8s.io", "certificatesigningrequests") => columns.extend([
            AGE,
            s("SignerName"),
            s("Requestor"),
            s("RequestedDuration"),
            s("Condition"),
        ]),
        ("scheduling.k8s.io", "priorityclasses") => columns.extend([
            i("Value"),
            col("Global-Default", "boolean", 0),
            AGE,
            s("PreemptionPolicy"),
        ]),
        ("", "replicationcontrollers") | ("apps", "replicasets") => {
            columns.extend([i("Desired"), i("Current"), i("Ready"), AGE]);
            columns.extend(WORKLOAD_WIDE);
        }
        ("apps", "deployments") => {
            columns.extend([s("Ready"), i("Up-to-date"), i("Available"), AGE]);
            columns.extend(WORKLOAD_WIDE);
        }
        ("apps", "daemonsets") => {
            columns.extend([
                i("Desired"),
                i("Current"),
                i("Ready"),
                i("Up-to-date"),
                i("Available"),
                s("Node Selector"),
                AGE,
            ]);
            columns.extend(WORKLOAD_WIDE);
        }
        ("apps", "statefulsets") => columns.extend([
            described("Ready", 0, "Number of the pod with ready state"),
            AGE,
            described("Containers", 1, "Names of each container in the template."),
            described(
                "Images",
                1,
                "Images referenced by each container in the template.",
            ),
        ]),
        ("apps", "controllerrevisions") => columns.extend([
            described("Controller", 0, "Controller of the object"),
            s("Revision"),
            AGE,
        ]),
        ("batch", "jobs") => {
            columns.extend([s("Status"), s("Completions"), s("Duration"), AGE]);
            columns.extend(WORKLOAD_WIDE);
        }
        ("batch", "cronjobs") => {
            columns.extend([
                s("Schedule"),
                s("Timezone"),
                col("Suspend", "boolean", 0),
                i("Active"),
                s("Last Schedule"),
                AGE,
            ]);
            columns.extend(WORKLOAD_WIDE);
        }
        ("autoscaling", "horizontalpodautoscalers") => columns.extend([
            s("Reference"),
            s("Targets"),
            s("MinPods"),
            i("MaxPods"),
            i("Replicas"),
            AGE,
        ]),
        ("", "persistentvolumes") => columns.extend([
            s("Capacity"),
            s("Access Modes"),
            s("Reclaim Policy"),
            s("Status"),
            s("Claim"),
            s("StorageClass"),
            s("VolumeAttributesClass"),
            s("Reason"),
            AGE,
            wide("VolumeMode"),
        ]),
        ("", "persistentvolumeclaims") => columns.extend([
            s("Status"),
            s("Volume"),
            s("Capacity"),
            s("Access Modes"),
            s("StorageClass"),
            s("VolumeAttributesClass"),
            AGE,
            wide("VolumeMode"),
        ]),
        ("storage.k8s.io", "storageclasses") => columns.extend([
            s("Provisioner"),
            s("ReclaimPolicy"),
            s("VolumeBindingMode"),
            s("AllowVolumeExpansion"),
            AGE,
        ]),
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => columns.extend([
            described(
                "Role",
                0,
                if plural == "rolebindings" {
                    "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error. This field is immutable."
                } else {
                    "RoleRef can only reference a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error. This field is immutable."
                },
            ),
            AGE,
            described("Users", 1, "Users in the roleBinding"),
            described("Groups", 1, "Groups in the roleBinding"),
            described("ServiceAccounts", 1, "ServiceAccounts in the roleBinding"),
        ]),
        ("", "events") => {
            return vec![
                s("Last Seen"),
                s("Type"),
                s("Reason"),
                s("Object"),
                wide("Subobject"),
                wide("Source"),
                s("Message"),
                wide("First Seen"),
                col("Count", "integer", 1),
                Column {
                    priority: 1,
                    ..NAME
                },
            ]
        }
        _ => columns.push(Column {
            name: "Created At",
            type_: "date",
            ..AGE
        }),
    }
    columns
}

/// Upstream's short human duration ("5s", "3m2s", "4h", "2d3h", "45d", "3y100d").
pub fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let rest = seconds % 60;
        return if rest == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{rest}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let rest = minutes % 60;
        return if rest == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{rest}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let rest = hours % 24;
        return if rest == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{rest}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let rest = days % 365;
        return if rest == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{rest}d")
        };
    }
    format!("{years}y")
}

/// A CSR's state as `kubectl get csr` prints it: Denied, Approved or Pending, then
/// `,Failed` and `,Issued` (upstream's `extractCSRStatus`).
fn csr_condition(csr: &Value) -> String {
    let has = |kind| crate::certificates::has_condition(csr, kind);
    let mut condition = if has("Denied") {
        "Denied"
    } else if has("Approved") {
        "Approved"
    } else {
        "Pending"
    }
    .to_owned();
    if has("Failed") {
        condition.push_str(",Failed");
    }
    if crate::certificates::issued_certificate(csr).is_some() {
        condition.push_str(",Issued");
    }
    condition
}

fn age_of(timestamp: Option<&Value>, now: jiff::Timestamp) -> String {
    let Some(time) = timestamp
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return "<unknown>".into();
    };
    let seconds = now.as_second() - time.as_second();
    if seconds < 0 {
        return "0s".into();
    }
    human_duration(Duration::from_secs(seconds as u64))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn int(value: &Value) -> i64 {
    value.as_i64().unwrap_or(0)
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "<none>".into()
    } else {
        text
    }
}

fn selector_text(selector: &Value) -> String {
    if selector.get("matchLabels").is_some() || selector.get("matchExpressions").is_some() {
        crate::conversion::label_selector_string(selector)
    } else {
        let mut pairs: Vec<String> = selector
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect();
        pairs.sort();
        pairs.join(",")
    }
}

fn workload_wide(object: &Value) -> [Value; 3] {
    let containers = object
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let join = |field: &str| {
        containers
            .iter()
            .map(|c| text(&c[field]))
            .collect::<Vec<_>>()
            .join(",")
    };
    [
        json!(join("name")),
        json!(join("image")),
        json!(or_none(selector_text(&object["spec"]["selector"]))),
    ]
}

fn service_ports(spec: &Value) -> String {
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(node_port) if node_port > 0 => {
                    format!("{}:{node_port}/{protocol}", int(&p["port"]))
                }
                _ => format!("{}/{protocol}", int(&p["port"])),
            }
        })
        .collect();
    or_none(ports.join(","))
}

fn external_ip(spec: &Value, status: &Value) -> String {
    let mut addresses: Vec<String> = spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    match spec["type"].as_str().unwrap_or("ClusterIP") {
        "ExternalName" => return text(&spec["externalName"]),
        "LoadBalancer" => {
            let ingress: Vec<String> = status["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    i.get("ip")
                        .or_else(|| i.get("hostname"))
                        .map(text)
                        .unwrap_or_default()
                })
                .collect();
            if ingress.is_empty() && addresses.is_empty() {
                return "<pending>".into();
            }
            addresses.extend(ingress);
        }
        _ => {}
    }
    or_none(addresses.join(","))
}

fn pod_status(pod: &Value) -> (String, String, i64, Option<String>) {
    let status = &pod["status"];
    let mut reason = status["reason"]
        .as_str()
        .or_else(|| status["phase"].as_str())
        .unwrap_or("Pending")
        .to_owned();
    let containers = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let mut ready = 0;
    let mut restarts = 0;
    let mut last_restart: Option<String> = None;
    let init_total = pod["spec"]["initContainers"].as_array().map_or(0, Vec::len);
    let mut initializing = false;
    for (index, init) in status["initContainerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        restarts += int(&init["restartCount"]);
        let state = &init["state"];
        if state["terminated"]["exitCode"] == 0 && state.get("terminated").is_some() {
            continue;
        }
        initializing = true;
        reason = if let Some(r) = state["terminated"]["reason"].as_str() {
            format!("Init:{r}")
        } else if let Some(r) = state["waiting"]["reason"]
            .as_str()
            .filter(|r| *r != "PodInitializing")
        {
            format!("Init:{r}")
        } else {
            format!("Init:{index}/{init_total}")
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for container in status["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .rev()
        {
            restarts += int(&container["restartCount"]);
            if let Some(finished) = container["lastState"]["terminated"]["finishedAt"].as_str() {
                if last_restart.as_deref().is_none_or(|l| l < finished) {
                    last_restart = Some(finished.to_owned());
                }
            }
            let state = &container["state"];
            if let Some(r) = state["waiting"]["reason"].as_str() {
                reason = r.to_owned();
            } else if let Some(terminated) = state.get("terminated") {
                reason = match terminated["reason"].as_str() {
                    Some(r) => r.to_owned(),
                    None if terminated.get("signal").is_some_and(|s| int(s) != 0) => {
                        format!("Signal:{}", int(&terminated["signal"]))
                    }
                    None => format!("ExitCode:{}", int(&terminated["exitCode"])),
                };
            } else if container["ready"] == true && state.get("running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if pod["metadata"].get("deletionTimestamp").is_some() {
        reason = if status["reason"] == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    (
        format!("{ready}/{containers}"),
        reason,
        restarts,
        last_restart,
    )
}

fn node_status(node: &Value) -> String {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| match c["status"].as_str() {
            Some("True") => "Ready",
            Some("False") => "NotReady",
            _ => "Unknown",
        })
        .unwrap_or("Unknown");
    if node["spec"]["unschedulable"] == true {
        format!("{ready},SchedulingDisabled")
    } else {
        ready.into()
    }
}

fn node_roles(node: &Value) -> String {
    let mut roles: Vec<String> = node["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| {
            key.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_owned)
                .or_else(|| (key == "kubernetes.io/role").then(|| text(value)))
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    or_none(roles.join(","))
}

fn node_address(node: &Value, kind: &str) -> String {
    or_none(
        node["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == kind)
            .map(|a| text(&a["address"]))
            .unwrap_or_default(),
    )
}

fn slice_ports(slice: &Value) -> String {
    let ports: Vec<String> = slice["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| int(&p["port"]).to_string())
        .collect();
    if ports.is_empty() {
        "<unset>".into()
    } else {
        ports.join(",")
    }
}

fn slice_endpoints(slice: &Value) -> String {
    let addresses: Vec<String> = slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .map(|a| text(&a))
        .collect();
    let shown = addresses.len().min(3);
    let mut out = addresses[..shown].join(",");
    if addresses.len() > 3 {
        out.push_str(&format!(" + {} more...", addresses.len() - 3));
    }
    or_none(out)
}

fn endpoints_text(endpoints: &Value) -> String {
    let mut list = Vec::new();
    for subset in endpoints["subsets"].as_array().into_iter().flatten() {
        for address in subset["addresses"].as_array().into_iter().flatten() {
            let ports: Vec<i64> = subset["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| int(&p["port"]))
                .collect();
            if ports.is_empty() {
                list.push(text(&address["ip"]));
            }
            for port in ports {
                list.push(format!("{}:{port}", text(&address["ip"])));
            }
        }
    }
    let shown = list.len().min(3);
    let mut out = list[..shown].join(",");
    if list.len() > 3 {
        out.push_str(&format!(" + {} more...", list.len() - 3));
    }
    or_none(out)
}

fn quota_pairs(quota: &Value, limits: bool) -> String {
    let hard = quota["status"]["hard"]
        .as_object()
        .or_else(|| quota["spec"]["hard"].as_object())
        .cloned()
        .unwrap_or_default();
    let used = quota["status"]["used"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut keys: Vec<&String> = hard
        .keys()
        .filter(|k| k.starts_with("limits.") == limits)
        .collect();
    keys.sort();
    keys.iter()
        .map(|key| {
            let used = used.get(*key).map(text).unwrap_or_else(|| "0".into());
            format!("{key}: {used}/{}", text(&hard[*key]))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn hpa_targets(hpa: &Value) -> String {
    let current = hpa["status"]["currentMetrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let targets: Vec<String> = hpa["spec"]["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|metric| {
            let resource = &metric["resource"];
            let name = text(&resource["name"]);
            let now = current
                .iter()
                .find(|c| c["resource"]["name"] == resource["name"])
                .and_then(|c| c["resource"]["current"]["averageUtilization"].as_i64())
                .map(|u| format!("{u}%"))
                .unwrap_or_else(|| "<unknown>".into());
            match resource["target"]["averageUtilization"].as_i64() {
                Some(target) => format!("{name}: {now}/{target}%"),
                None => format!(
                    "{name}: {now}/{}",
                    text(&resource["target"]["averageValue"])
                ),
            }
        })
        .collect();
    if targets.is_empty() {
        "<none>".into()
    } else {
        targets.join(", ")
    }
}

/// `status.phase`, or `Terminating` while the object is being deleted.
fn phase_or_terminating(object: &Value) -> String {
    if object["metadata"]["deletionTimestamp"].is_null() {
        text(&object["status"]["phase"])
    } else {
        "Terminating".into()
    }
}

fn unset_if_missing(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| "<unset>".into(), str::to_owned)
}

/// Upstream's `GetAccessModesAsString`: short names, each once, in a fixed order.
fn access_modes(modes: &Value) -> String {
    let modes: Vec<&str> = modes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(long, _)| modes.contains(long))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// A quantity as upstream's `Quantity.String()` writes it: the largest suffix of its own
/// family (binary or decimal) that keeps the number whole, so `1024Mi` is `1Gi`.
fn canonical_quantity(text: &str) -> String {
    let Some(value) = protocol::quantity::parse(text) else {
        return text.to_owned();
    };
    let binary = text.ends_with('i');
    let decimal_suffix = text.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    if value.fract() != 0.0
        || value < 0.0
        || (!binary && decimal_suffix.starts_with(['m', 'u', 'n']))
    {
        return text.to_owned();
    }
    let mut number = value as u128;
    let (base, suffixes): (u128, &[&str]) = if binary {
        (1024, &["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])
    } else {
        (1000, &["", "k", "M", "G", "T", "P", "E"])
    };
    let mut index = 0;
    while number != 0 && number.is_multiple_of(base) && index + 1 < suffixes.len() {
        number /= base;
        index += 1;
    }
    format!("{number}{}", suffixes[index])
}

/// Cells for one object, in column order.
pub fn cells(group: &str, plural: &str, object: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let metadata = &object["metadata"];
    let name = json!(text(&metadata["name"]));
    let age = json!(age_of(metadata.get("creationTimestamp"), now));
    let spec = &object["spec"];
    let status = &object["status"];
    match (group, plural) {
        ("", "namespaces") => vec![name, json!(text(&status["phase"])), age],
        ("", "pods") => {
            let (ready, reason, restarts, last) = pod_status(object);
            let restarts = match last {
                Some(finished) => {
                    format!("{restarts} ({} ago)", age_of(Some(&json!(finished)), now))
                }
                None => restarts.to_string(),
            };
            let gates = spec["readinessGates"].as_array().map_or(0, Vec::len);
            vec![
                name,
                json!(ready),
                json!(reason),
                json!(restarts),
                age,
                json!(or_none(text(&status["podIP"]))),
                json!(or_none(text(&spec["nodeName"]))),
                json!(or_none(text(&status["nominatedNodeName"]))),
                json!(if gates == 0 {
                    "<none>".into()
                } else {
                    format!("0/{gates}")
                }),
            ]
        }
        ("", "services") => vec![
            name,
            json!(text(&spec["type"])),
            json!(or_none(text(&spec["clusterIP"]))),
            json!(external_ip(spec, status)),
            json!(service_ports(spec)),
            age,
            json!(or_none(selector_text(&spec["selector"]))),
        ],
        ("", "endpoints") => vec![name, json!(endpoints_text(object)), age],
        ("discovery.k8s.io", "endpointslices") => vec![
            name,
            json!(text(&object["addressType"])),
            json!(slice_ports(object)),
            json!(slice_endpoints(object)),
            age,
        ],
        ("", "nodes") => vec![
            name,
            json!(node_status(object)),
            json!(node_roles(object)),
            age,
            json!(text(&status["nodeInfo"]["kubeletVersion"])),
            json!(node_address(object, "InternalIP")),
            json!(node_address(object, "ExternalIP")),
            json!(or_none(text(&status["nodeInfo"]["osImage"]))),
            json!(or_none(text(&status["nodeInfo"]["kernelVersion"]))),
            json!(or_none(text(
                &status["nodeInfo"]["containerRuntimeVersion"]
            ))),
        ],
        ("", "configmaps") => {
            let count = ["data", "binaryData"]
                .iter()
                .map(|f| object[*f].as_object().map_or(0, |m| m.len()))
                .sum::<usize>();
            vec![name, json!(count), age]
        }
        ("", "secrets") => vec![
            name,
            json!(text(&object["type"])),
            json!(object["data"].as_object().map_or(0, |m| m.len())),
            age,
        ],
        ("", "serviceaccounts") => vec![
            name,
            json!(object["secrets"].as_array().map_or(0, Vec::len)),
            age,
        ],
        ("", "resourcequotas") => vec![
            name,
            age,
            json!(quota_pairs(object, false)),
            json!(quota_pairs(object, true)),
        ],
        ("coordination.k8s.io", "leases") => {
            vec![name, json!(text(&spec["holderIdentity"])), age]
        }
        ("", "replicationcontrollers") | ("apps", "replicasets") => {
            let mut row = vec![
                name,
                json!(int(&spec["replicas"])),
                json!(int(&status["replicas"])),
                json!(int(&status["readyReplicas"])),
                age,
            ];
            row.extend(workload_wide(object));
            row
        }
        ("apps", "deployments") => {
            let mut row = vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(&status["readyReplicas"]),
                    int(&spec["replicas"])
                )),
                json!(int(&status["updatedReplicas"])),
                json!(int(&status["availableReplicas"])),
                age,
            ];
            row.extend(workload_wide(object));
            row
        }
        ("apps", "daemonsets") => {
            let selector = selector_text(&spec["template"]["spec"]["nodeSelector"]);
            let mut row = vec![
                name,
                json!(int(&status["desiredNumberScheduled"])),
                json!(int(&status["currentNumberScheduled"])),
                json!(int(&status["numberReady"])),
                json!(int(&status["updatedNumberScheduled"])),
                json!(int(&status["numberAvailable"])),
                json!(or_none(selector)),
                age,
            ];
            row.extend(workload_wide(object));
            row
        }
        ("apps", "statefulsets") => {
            let [containers, images, _] = workload_wide(object);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(&status["readyReplicas"]),
                    int(&spec["replicas"])
                )),
                age,
                containers,
                images,
            ]
        }
        ("apps", "controllerrevisions") => {
            let controller = metadata["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["controller"] == true)
                .map(|r| {
                    let api_version = text(&r["apiVersion"]);
                    let group = api_version.split_once('/').map_or("", |(g, _)| g);
                    let kind = text(&r["kind"]).to_lowercase();
                    let kind = if group.is_empty() {
                        kind
                    } else {
                        format!("{kind}.{group}")
                    };
                    format!("{kind}/{}", text(&r["name"]))
                })
                .unwrap_or_else(|| "<none>".to_owned());
            vec![
                name,
                json!(controller),
                json!(int(&object["revision"])),
                age,
            ]
        }
        ("batch", "jobs") => {
            let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
            let has = |kind: &str| {
                conditions
                    .iter()
                    .any(|c| c["type"] == kind && c["status"] == "True")
            };
            let state = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if metadata
                .get("deletionTimestamp")
                .is_some_and(|d| !d.is_null())
            {
                "Terminating"
            } else if has("Suspended") {
                "Suspended"
            } else if has("FailureTarget") {
                "FailureTarget"
            } else {
                "Running"
            };
            let succeeded = int(&status["succeeded"]);
            let completions = match spec["completions"].as_i64() {
                Some(total) => format!("{succeeded}/{total}"),
                None if int(&spec["parallelism"]) > 1 => {
                    format!("{succeeded}/1 of {}", int(&spec["parallelism"]))
                }
                None => format!("{succeeded}/1"),
            };
            let duration = match (status.get("startTime"), status.get("completionTime")) {
                (Some(start), Some(end)) => {
                    let parse =
                        |v: &Value| v.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
                    match (parse(start), parse(end)) {
                        (Some(s), Some(e)) => human_duration(Duration::from_secs(
                            (e.as_second() - s.as_second()).max(0) as u64,
                        )),
                        _ => String::new(),
                    }
                }
                (Some(start), None) => age_of(Some(start), now),
                _ => String::new(),
            };
            let mut row = vec![name, json!(state), json!(completions), json!(duration), age];
            row.extend(workload_wide(object));
            row
        }
        ("policy", "poddisruptionbudgets") => {
            let int_or_percent = |value: &Value| match value {
                Value::Null => "N/A".to_owned(),
                other => text(other),
            };
            vec![
                name,
                json!(int_or_percent(&spec["minAvailable"])),
                json!(int_or_percent(&spec["maxUnavailable"])),
                json!(int(&status["disruptionsAllowed"])),
                age,
            ]
        }
        ("certificates.k8s.io", "certificatesigningrequests") => vec![
            name,
            age,
            json!(text(&spec["signerName"])),
            json!(text(&spec["username"])),
            json!(match spec["expirationSeconds"].as_u64() {
                Some(seconds) => human_duration(Duration::from_secs(seconds)),
                None => "<none>".to_owned(),
            }),
            json!(csr_condition(object)),
        ],
        ("scheduling.k8s.io", "priorityclasses") => vec![
            name,
            json!(int(&object["value"])),
            json!(object["globalDefault"] == true),
            age,
            json!(text(&object["preemptionPolicy"])),
        ],
        ("batch", "cronjobs") => {
            let suspend = match spec["suspend"].as_bool() {
                Some(true) => "True",
                Some(false) => "False",
                None => "<unset>",
            };
            let last = match status.get("lastScheduleTime") {
                Some(time) if !time.is_null() => age_of(Some(time), now),
                _ => "<none>".into(),
            };
            let template = &spec["jobTemplate"];
            let mut row = vec![
                name,
                json!(text(&spec["schedule"])),
                json!(or_none(text(&spec["timeZone"]))),
                json!(suspend),
                json!(status["active"].as_array().map_or(0, Vec::len)),
                json!(last),
                age,
            ];
            row.extend(workload_wide(template));
            row
        }
        ("autoscaling", "horizontalpodautoscalers") => {
            let target = &spec["scaleTargetRef"];
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    text(&target["kind"]),
                    text(&target["name"])
                )),
                json!(hpa_targets(object)),
                json!(spec["minReplicas"]
                    .as_i64()
                    .map_or("<unset>".into(), |m| m.to_string())),
                json!(int(&spec["maxReplicas"])),
                json!(int(&status["currentReplicas"])),
                age,
            ]
        }
        ("", "persistentvolumes") => {
            let reference = &spec["claimRef"];
            let claim = if reference.is_object() {
                format!(
                    "{}/{}",
                    text(&reference["namespace"]),
                    text(&reference["name"])
                )
            } else {
                String::new()
            };
            vec![
                name,
                json!(canonical_quantity(&text(&spec["capacity"]["storage"]))),
                json!(access_modes(&spec["accessModes"])),
                json!(text(&spec["persistentVolumeReclaimPolicy"])),
                json!(phase_or_terminating(object)),
                json!(claim),
                json!(
                    metadata["annotations"]["volume.beta.kubernetes.io/storage-class"]
                        .as_str()
                        .map_or_else(|| text(&spec["storageClassName"]), str::to_owned)
                ),
                json!(unset_if_missing(&spec["volumeAttributesClassName"])),
                json!(text(&status["reason"])),
                age,
                json!(unset_if_missing(&spec["volumeMode"])),
            ]
        }
        ("", "persistentvolumeclaims") => {
            let bound = !text(&spec["volumeName"]).is_empty();
            let (capacity, modes) = if bound {
                (
                    canonical_quantity(&text(&status["capacity"]["storage"])),
                    access_modes(&status["accessModes"]),
                )
            } else {
                (String::new(), String::new())
            };
            vec![
                name,
                json!(phase_or_terminating(object)),
                json!(text(&spec["volumeName"])),
                json!(capacity),
                json!(modes),
                json!(
                    metadata["annotations"]["volume.beta.kubernetes.io/storage-class"]
                        .as_str()
                        .map_or_else(|| text(&spec["storageClassName"]), str::to_owned)
                ),
                json!(unset_if_missing(&spec["volumeAttributesClassName"])),
                age,
                json!(unset_if_missing(&spec["volumeMode"])),
            ]
        }
        ("storage.k8s.io", "storageclasses") => {
            let annotations = &metadata["annotations"];
            let default = annotations["storageclass.kubernetes.io/is-default-class"] == "true"
                || annotations["storageclass.beta.kubernetes.io/is-default-class"] == "true";
            let shown = if default {
                format!("{} (default)", text(&metadata["name"]))
            } else {
                text(&metadata["name"])
            };
            vec![
                json!(shown),
                json!(text(&object["provisioner"])),
                json!(object["reclaimPolicy"].as_str().unwrap_or("Delete")),
                json!(object["volumeBindingMode"].as_str().unwrap_or("Immediate")),
                json!(object["allowVolumeExpansion"] == true),
                age,
            ]
        }
        ("", "events") => {
            let involved = &object["involvedObject"];
            let last = object
                .get("lastTimestamp")
                .filter(|t| !t.is_null())
                .or_else(|| object.get("eventTime"))
                .or_else(|| metadata.get("creationTimestamp"));
            let first = object
                .get("firstTimestamp")
                .filter(|t| !t.is_null())
                .or_else(|| object.get("eventTime"));
            let source = object["source"]["component"]
                .as_str()
                .or_else(|| object["reportingComponent"].as_str())
                .unwrap_or_default();
            let host = text(&object["source"]["host"]);
            vec![
                json!(age_of(last, now)),
                json!(text(&object["type"])),
                json!(text(&object["reason"])),
                json!(format!(
                    "{}/{}",
                    text(&involved["kind"]).to_lowercase(),
                    text(&involved["name"])
                )),
                json!(text(&involved["fieldPath"])),
                json!(if host.is_empty() {
                    source.to_owned()
                } else {
                    format!("{source}, {host}")
                }),
                json!(text(&object["message"])),
                json!(age_of(first, now)),
                json!(object["count"].as_i64().unwrap_or(1)),
                name,
            ]
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            let role_ref = &object["roleRef"];
            let subjects = object["subjects"].as_array().cloned().unwrap_or_default();
            let of_kind = |kind: &str| {
                let names: Vec<String> = subjects
                    .iter()
                    .filter(|s| s["kind"] == kind)
                    .map(|s| match kind {
                        "ServiceAccount" => {
                            format!("{}/{}", text(&s["namespace"]), text(&s["name"]))
                        }
                        _ => text(&s["name"]),
                    })
                    .collect();
                json!(names.join(", "))
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    text(&role_ref["kind"]),
                    text(&role_ref["name"])
                )),
                age,
                of_kind("User"),
                of_kind("Group"),
                of_kind("ServiceAccount"),
            ]
        }
        _ => vec![name, json!(text(&metadata["creationTimestamp"]))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> jiff::Timestamp {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn human_durations_follow_upstream() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 120, "3h2m"),
            (30 * 3600, "30h"),
            (2 * 86400 + 3 * 3600, "2d3h"),
            (45 * 86400, "45d"),
            (3 * 365 * 86400 + 100 * 86400, "3y100d"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(human_duration(Duration::from_secs(seconds)), expected);
        }
    }

    #[test]
    fn deployment_rows() {
        let d = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-11-22T11:55:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}, {"name": "s", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        assert_eq!(
            cells("apps", "deployments", &d, now()),
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("5m"),
                json!("web,s"),
                json!("nginx:1.27,busybox"),
                json!("app=web")
            ]
        );
        assert_eq!(columns("apps", "deployments").len(), 8);
    }

    #[test]
    fn pod_status_reasons() {
        let pod = |status: Value| json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": status});
        let crash = pod(
            json!({"phase": "Running", "containerStatuses": [{"restartCount": 4, "ready": false,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"finishedAt": "2026-11-22T11:58:00Z"}}}]}),
        );
        let row = cells("", "pods", &crash, now());
        assert_eq!(row[1], "0/1");
        assert_eq!(row[2], "CrashLoopBackOff");
        assert_eq!(row[3], "4 (2m ago)");
        let running = pod(
            json!({"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [{"ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        );
        let row = cells("", "pods", &running, now());
        assert_eq!(
            (row[1].clone(), row[2].clone(), row[5].clone()),
            (json!("1/1"), json!("Running"), json!("10.42.0.5"))
        );
        let mut terminating = running.clone();
        terminating["metadata"]["deletionTimestamp"] = json!("2026-11-22T12:00:00Z");
        assert_eq!(cells("", "pods", &terminating, now())[2], "Terminating");
        assert_eq!(
            cells("", "pods", &pod(json!({"phase": "Pending"})), now())[2],
            "Pending"
        );
    }

    #[test]
    fn service_and_node_rows() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.43.0.9",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}], "selector": {"app": "web"}}});
        assert_eq!(
            cells("", "services", &svc, now())[1..5],
            [
                json!("NodePort"),
                json!("10.43.0.9"),
                json!("<none>"),
                json!("80:30080/TCP")
            ]
        );
        let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}, "status": {}});
        assert_eq!(cells("", "services", &lb, now())[3], "<pending>");
        let node = json!({"metadata": {"name": "pi-1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "False"}], "nodeInfo": {"kubeletVersion": "v1.37.0"},
                       "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]}});
        let row = cells("", "nodes", &node, now());
        assert_eq!(row[1], "NotReady,SchedulingDisabled");
        assert_eq!(row[2], "control-plane");
        assert_eq!(row[5], "192.168.1.10");
    }

    #[test]
    fn storage_rows_follow_upstreams_printers() {
        let volume = json!({"metadata": {"name": "pvc-1", "creationTimestamp": "2026-11-22T11:59:56Z"},
            "spec": {"capacity": {"storage": "2048Mi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce", "ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "local-path", "volumeMode": "Filesystem",
                     "claimRef": {"namespace": "default", "name": "data"}},
            "status": {"phase": "Bound"}});
        assert_eq!(
            cells("", "persistentvolumes", &volume, now()),
            [
                "pvc-1",
                "2Gi",
                "RWO,RWX",
                "Delete",
                "Bound",
                "default/data",
                "local-path",
                "<unset>",
                "",
                "4s",
                "Filesystem"
            ]
            .map(|c| json!(c))
        );
        let pending = json!({"metadata": {"name": "data", "creationTimestamp": "2026-11-22T11:59:00Z"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                     "storageClassName": "local-path", "volumeMode": "Filesystem"},
            "status": {"phase": "Pending"}});
        assert_eq!(
            cells("", "persistentvolumeclaims", &pending, now()),
            [
                "data",
                "Pending",
                "",
                "",
                "",
                "local-path",
                "<unset>",
                "60s",
                "Filesystem"
            ]
            .map(|c| json!(c))
        );
        let mut bound = pending.clone();
        bound["spec"]["volumeName"] = json!("pvc-1");
        bound["status"] = json!({"phase": "Bound", "capacity": {"storage": "1000M"}, "accessModes": ["ReadWriteOnce"]});
        bound["metadata"]["deletionTimestamp"] = json!("2026-11-22T12:00:00Z");
        let row = cells("", "persistentvolumeclaims", &bound, now());
        assert_eq!(
            row[1..5],
            ["Terminating", "pvc-1", "1G", "RWO"].map(|c| json!(c))
        );
        let class = json!({"metadata": {"name": "local-path", "creationTimestamp": "2026-11-22T11:00:00Z",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "bramble.dev/local-path", "volumeBindingMode": "WaitForFirstConsumer"});
        assert_eq!(
            cells("storage.k8s.io", "storageclasses", &class, now()),
            [
                json!("local-path (default)"),
                json!("bramble.dev/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(false),
                json!("60m")
            ]
        );
        assert_eq!(canonical_quantity("1536Mi"), "1536Mi");
        assert_eq!(canonical_quantity("500m"), "500m");
        assert_eq!(canonical_quantity("1073741824"), "1073741824");
    }

    #[test]
    fn every_row_fits_its_columns() {
        let resources = [
            ("", "namespaces"),
            ("", "pods"),
            ("", "services"),
            ("", "endpoints"),
            ("", "nodes"),
            ("", "configmaps"),
            ("", "secrets"),
            ("", "serviceaccounts"),
            ("", "resourcequotas"),
            ("coordination.k8s.io", "leases"),
            ("", "replicationcontrollers"),
            ("apps", "replicasets"),
            ("apps", "deployments"),
            ("apps", "daemonsets"),
            ("apps", "statefulsets"),
            ("apps", "controllerrevisions"),
            ("batch", "jobs"),
            ("batch", "cronjobs"),
            ("autoscaling", "horizontalpodautoscalers"),
            ("", "events"),
            ("", "persistentvolumes"),
            ("", "persistentvolumeclaims"),
            ("storage.k8s.io", "storageclasses"),
            ("x", "widgets"),
        ];
        let object =
            json!({"metadata": {"name": "x", "creationTimestamp": "2026-11-22T11:00:00Z"}});
        for (group, plural) in resources {
            assert_eq!(
                columns(group, plural).len(),
                cells(group, plural, &object, now()).len(),
                "{group}/{plural}"
            );
        }
    }
}
