//! Failure on purpose: the chaos hook's client side (kill and revive a node) and the chaos monkey.
//!
//! A node is killed by setting the `bramble.dev/chaos` annotation on its Node to `kill`; its
//! agent (real or simulated) sees it, kills its containers and stops heartbeating. Removing the
//! annotation revives it. Everything that kills nodes goes through here: `bramble sim kill`, the
//! dashboard's keys, the hardware buttons and the chaos monkey, which they share:
//!
//! ```text
//!   every `interval`: list nodes ─► Ready ones > min_ready? ─► pick one at random among the
//!                                    (else skip, say why)      eligible (selector), never the master
//!                                                              └─► kill ─► after `dead_for`: revive
//!   stop: revive every node this monkey killed
//! ```

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::{Client, ClientError};
use crate::error::error_chain;

/// The annotation that kills (`kill`) a node; removing it revives the node.
pub const CHAOS_ANNOTATION: &str = "bramble.dev/chaos";

/// A chaos change that did not happen.
#[derive(Debug, thiserror::Error)]
#[error("cannot change node {node}")]
pub struct ChaosError {
    /// The node.
    pub node: String,
    /// The cause.
    #[source]
    pub source: ClientError,
}

/// Sets a node's chaos annotation: `kill`, `link-down:SECONDS`, or nothing (`None`, revive).
pub async fn set_node_chaos(
    client: &Client,
    node: &str,
    value: Option<&str>,
) -> Result<(), ChaosError> {
    client
        .merge_patch(
            &format!("/api/v1/nodes/{node}"),
            &json!({"metadata": {"annotations": {CHAOS_ANNOTATION: value}}}),
        )
        .await
        .map_err(|source| ChaosError {
            node: node.to_owned(),
            source,
        })?;
    Ok(())
}

/// Kills (`alive = false`) or revives a node through its chaos annotation.
pub async fn set_node_alive(client: &Client, node: &str, alive: bool) -> Result<(), ChaosError> {
    set_node_chaos(client, node, (!alive).then_some("kill")).await
}

/// Whether a Node object is the master's own: a control-plane role label, or an address
/// equal to the API server's host. The monkey never kills it.
pub fn is_master_node(node: &Value, master_host: &str) -> bool {
    let labels = &node["metadata"]["labels"];
    if labels["node-role.kubernetes.io/control-plane"].is_string()
        || labels["node-role.kubernetes.io/master"].is_string()
    {
        return true;
    }
    node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|address| address["address"] == master_host)
}

/// Whether a Node object is Ready and not held down by the chaos hook.
pub fn is_alive_and_ready(node: &Value) -> bool {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    ready && !node["metadata"]["annotations"][CHAOS_ANNOTATION].is_string()
}

/// How the chaos monkey behaves; the dashboard and the master's button use the same one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonkeyPolicy {
    /// Time between kills (the first comes at once).
    pub interval: Duration,
    /// How long a killed node stays dead before the monkey revives it.
    pub dead_for: Duration,
    /// Which nodes may die: a label selector (`role=worker`), all nodes when `None`.
    pub nodes: Option<String>,
    /// The monkey never leaves fewer Ready nodes than this.
    pub min_ready: usize,
}

impl Default for MonkeyPolicy {
    fn default() -> Self {
        MonkeyPolicy {
            interval: Duration::from_secs(30),
            dead_for: Duration::from_secs(20),
            nodes: None,
            min_ready: 2,
        }
    }
}

/// What the monkey did, for whoever shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonkeyEvent {
    /// It killed a node; it will revive it after `revive_in`.
    Killed {
        /// The node.
        node: String,
        /// Until the revival.
        revive_in: Duration,
    },
    /// It revived a node it had killed.
    Revived {
        /// The node.
        node: String,
    },
    /// It let a turn pass.
    Skipped {
        /// Why, in words.
        reason: String,
    },
    /// An API call failed.
    Failed {
        /// What failed, with its cause.
        message: String,
    },
}

/// The cluster as the monkey sees it; [`Client`] is the real one, tests use a fake.
pub trait ChaosTarget: Send + Sync + 'static {
    /// The Node objects, all of them or those matching a label selector.
    fn nodes(
        &self,
        selector: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Value>, ClientError>> + Send;
    /// Kills or revives a node.
    fn set_alive(
        &self,
        node: &str,
        alive: bool,
    ) -> impl Future<Output = Result<(), ChaosError>> + Send;
    /// The API server's host, to recognise the master's own node.
    fn master_host(&self) -> String;
}

impl ChaosTarget for Client {
    async fn nodes(&self, selector: Option<&str>) -> Result<Vec<Value>, ClientError> {
        let path = match selector {
            Some(selector) => format!(
                "/api/v1/nodes?labelSelector={}",
                crate::query::escape(selector)
            ),
            None => "/api/v1/nodes".to_owned(),
        };
        let mut list = self.get(&path).await?;
        Ok(match list["items"].take() {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
    }

    async fn set_alive(&self, node: &str, alive: bool) -> Result<(), ChaosError> {
        set_node_alive(self, node, alive).await
    }

    fn master_host(&self) -> String {
        let address = self.server_address();
        let host = address
            .rsplit_once(':')
            .map_or(address.as_str(), |(h, _)| h);
        host.trim_matches(['[', ']']).to_owned()
    }
}

/// Picks the node to kill, or says why none may die this turn.
pub fn choose_victim(
    all: &[Value],
    eligible: &[Value],
    policy: &MonkeyPolicy,
    master_host: &str,
    random: u64,
) -> Result<String, String> {
    let ready = all.iter().filter(|n| is_alive_and_ready(n)).count();
    if ready <= policy.min_ready {
        return Err(format!(
            "only {ready} nodes are Ready; the monkey keeps at least {}",
            policy.min_ready
        ));
    }
    let candidates: Vec<&str> = eligible
        .iter()
        .filter(|n| is_alive_and_ready(n) && !is_master_node(n, master_host))
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    if candidates.is_empty() {
        return Err("no Ready node may die (the master never does)".to_owned());
    }
    Ok(candidates[(random % candidates.len() as u64) as usize].to_owned())
}

/// A running chaos monkey; [`ChaosMonkey::stop`] revives what it killed.
pub struct ChaosMonkey<C: ChaosTarget> {
    target: Arc<C>,
    policy: MonkeyPolicy,
    task: tokio::task::JoinHandle<()>,
    killed: Arc<Mutex<BTreeSet<String>>>,
}

impl<C: ChaosTarget> ChaosMonkey<C> {
    /// Starts the monkey on the current runtime; what it does arrives on `events`.
    pub fn start(
        target: Arc<C>,
        policy: MonkeyPolicy,
        events: mpsc::UnboundedSender<MonkeyEvent>,
    ) -> Self {
        let killed = Arc::new(Mutex::new(BTreeSet::new()));
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1);
        let task = tokio::spawn(rampage(
            target.clone(),
            policy.clone(),
            killed.clone(),
            events,
            seed,
        ));
        ChaosMonkey {
            target,
            policy,
            task,
            killed,
        }
    }

    /// The policy it runs with.
    pub fn policy(&self) -> &MonkeyPolicy {
        &self.policy
    }

    /// The nodes it has killed and not yet revived.
    pub fn killed(&self) -> Vec<String> {
        self.killed
            .lock()
            .expect("monkey lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Stops the monkey and revives every node it killed; returns the revived nodes, or the
    /// first failure (the other nodes are still revived).
    pub async fn stop(self) -> Result<Vec<String>, ChaosError> {
        self.task.abort();
        let _ = self.task.await;
        let killed = std::mem::take(&mut *self.killed.lock().expect("monkey lock"));
        let mut first_error = None;
        let mut revived = Vec::new();
        for node in killed {
            match self.target.set_alive(&node, true).await {
                Ok(()) => revived.push(node),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(revived),
        }
    }
}

/// The monkey's loop: kills at every interval, revives each victim after `dead_for`.
async fn rampage<C: ChaosTarget>(
    target: Arc<C>,
    policy: MonkeyPolicy,
    killed: Arc<Mutex<BTreeSet<String>>>,
    events: mpsc::UnboundedSender<MonkeyEvent>,
    mut random: u64,
) {
    let report = |event| {
        let _ = events.send(event);
    };
    let mut next_kill = Instant::now();
    let mut revivals: VecDeque<(Instant, String)> = VecDeque::new();
    loop {
        let wake = revivals
            .front()
            .map_or(next_kill, |(at, _)| (*at).min(next_kill));
        tokio::time::sleep_until(wake).await;
        let now = Instant::now();
        while revivals.front().is_some_and(|(at, _)| *at <= now) {
            let (_, node) = revivals.pop_front().expect("checked above");
            match target.set_alive(&node, true).await {
                Ok(()) => {
                    killed.lock().expect("monkey lock").remove(&node);
                    report(MonkeyEvent::Revived { node });
                }
                Err(error) => {
                    report(MonkeyEvent::Failed {
                        message: error_chain(&error),
                    });
                    revivals.push_back((now + Duration::from_secs(2), node));
                }
            }
        }
        if next_kill > now {
            continue;
        }
        next_kill = now + policy.interval;
        // xorshift64: enough randomness to pick a node, no dependency for it.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        let nodes = async {
            let all = target.nodes(None).await?;
            let eligible = match &policy.nodes {
                Some(selector) => target.nodes(Some(selector)).await?,
                None => all.clone(),
            };
            Ok::<_, ClientError>((all, eligible))
        };
        let (all, eligible) = match nodes.await {
            Ok(lists) => lists,
            Err(error) => {
                report(MonkeyEvent::Failed {
                    message: error_chain(&error),
                });
                continue;
            }
        };
        let node = match choose_victim(&all, &eligible, &policy, &target.master_host(), random) {
            Ok(node) => node,
            Err(reason) => {
                report(MonkeyEvent::Skipped { reason });
                continue;
            }
        };
        match target.set_alive(&node, false).await {
            Ok(()) => {
                killed.lock().expect("monkey lock").insert(node.clone());
                revivals.push_back((now + policy.dead_for, node.clone()));
                report(MonkeyEvent::Killed {
                    node,
                    revive_in: policy.dead_for,
                });
            }
            Err(error) => report(MonkeyEvent::Failed {
                message: error_chain(&error),
            }),
        }
    }
}

/// Parses a duration as people type it: `20s`, `2m`, `1500ms`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 20s, 2m or 1500ms)"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s, m or h)"
            ))
        }
    };
    // `from_secs_f64` panics on what does not fit; the text may come from the network.
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: bool, ip: &str) -> Value {
        json!({
            "metadata": {"name": name, "labels": {}},
            "status": {
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "addresses": [{"type": "InternalIP", "address": ip}],
            }
        })
    }

    /// A cluster in memory: nodes with Ready flags that follow the chaos calls at once.
    struct FakeCluster {
        nodes: Mutex<Vec<Value>>,
        calls: Mutex<Vec<String>>,
    }

    impl FakeCluster {
        fn new(nodes: Vec<Value>) -> Arc<Self> {
            Arc::new(FakeCluster {
                nodes: Mutex::new(nodes),
                calls: Mutex::new(Vec::new()),
            })
        }
    }

    impl ChaosTarget for FakeCluster {
        async fn nodes(&self, selector: Option<&str>) -> Result<Vec<Value>, ClientError> {
            let nodes = self.nodes.lock().unwrap().clone();
            Ok(match selector {
                Some(selector) => {
                    let (key, value) = selector.split_once('=').unwrap();
                    nodes
                        .into_iter()
                        .filter(|n| n["metadata"]["labels"][key] == value)
                        .collect()
                }
                None => nodes,
            })
        }

        async fn set_alive(&self, name: &str, alive: bool) -> Result<(), ChaosError> {
            let verb = if alive { "revive" } else { "kill" };
            self.calls.lock().unwrap().push(format!("{verb} {name}"));
            for node in self.nodes.lock().unwrap().iter_mut() {
                if node["metadata"]["name"] == name {
                    node["metadata"]["annotations"] = if alive {
                        json!({})
                    } else {
                        json!({CHAOS_ANNOTATION: "kill"})
                    };
                }
            }
            Ok(())
        }

        fn master_host(&self) -> String {
            "10.99.0.1".to_owned()
        }
    }

    #[test]
    fn the_master_and_dead_nodes_never_die() {
        let policy = MonkeyPolicy {
            min_ready: 1,
            ..MonkeyPolicy::default()
        };
        let mut master = node("master", true, "10.99.0.1");
        let all = vec![
            master.clone(),
            node("pi-1", true, "10.99.0.11"),
            node("pi-2", false, "10.99.0.12"),
        ];
        for random in 0..20 {
            assert_eq!(
                choose_victim(&all, &all, &policy, "10.99.0.1", random).as_deref(),
                Ok("pi-1")
            );
        }
        master["status"]["addresses"][0]["address"] = json!("192.168.1.2");
        master["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("");
        let all = vec![master, node("pi-2", true, "10.99.0.12")];
        assert_eq!(
            choose_victim(&all, &all, &policy, "10.99.0.1", 0).as_deref(),
            Ok("pi-2")
        );
    }

    #[test]
    fn the_monkey_keeps_the_minimum_ready() {
        let policy = MonkeyPolicy::default(); // min_ready 2
        let all = vec![node("pi-1", true, "a"), node("pi-2", true, "b")];
        let skipped = choose_victim(&all, &all, &policy, "m", 0).unwrap_err();
        assert_eq!(
            skipped,
            "only 2 nodes are Ready; the monkey keeps at least 2"
        );
        let mut three = all.clone();
        three.push(node("pi-3", true, "c"));
        assert!(choose_victim(&three, &three, &policy, "m", 0).is_ok());
        let eligible = vec![node("pi-9", false, "z")];
        assert!(choose_victim(&three, &eligible, &policy, "m", 0)
            .unwrap_err()
            .starts_with("no Ready node may die"));
    }

    #[tokio::test(start_paused = true)]
    async fn kills_on_the_interval_revives_after_dead_for_and_on_stop() {
        let mut worker = node("pi-3", true, "10.99.0.13");
        worker["metadata"]["labels"]["role"] = json!("worker");
        let cluster = FakeCluster::new(vec![
            node("pi-1", true, "10.99.0.11"),
            node("pi-2", true, "10.99.0.12"),
            worker,
        ]);
        let policy = MonkeyPolicy {
            interval: Duration::from_secs(30),
            dead_for: Duration::from_secs(20),
            nodes: Some("role=worker".to_owned()),
            min_ready: 2,
        };
        let (sender, mut events) = mpsc::unbounded_channel();
        let monkey = ChaosMonkey::start(cluster.clone(), policy, sender);
        let killed = events.recv().await.unwrap();
        assert_eq!(
            killed,
            MonkeyEvent::Killed {
                node: "pi-3".into(),
                revive_in: Duration::from_secs(20)
            }
        );
        let started = Instant::now();
        assert_eq!(
            events.recv().await.unwrap(),
            MonkeyEvent::Revived {
                node: "pi-3".into()
            }
        );
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        assert!(matches!(
            events.recv().await.unwrap(),
            MonkeyEvent::Killed { .. }
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(monkey.killed(), ["pi-3"]);
        assert_eq!(monkey.stop().await.unwrap(), ["pi-3"]);
        assert_eq!(
            *cluster.calls.lock().unwrap(),
            ["kill pi-3", "revive pi-3", "kill pi-3", "revive pi-3"]
        );
    }

    #[test]
    fn durations_as_people_type_them() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
        // Too large for a Duration: an error, not a panic.
        let huge = parse_duration("99999999999999999999h").unwrap_err();
        assert!(huge.contains("too long"), "{huge}");
        assert!(parse_duration(&"9".repeat(400)).is_err());
    }

    #[test]
    fn selectors_are_escaped_in_the_query() {
        assert_eq!(
            crate::query::escape("role in (a,b)"),
            "role%20in%20%28a%2Cb%29"
        );
    }
}
