//! The dashboard's one state, `App`, and what every key does to it.
//!
//! `App` changes only through [`App::handle`], one [`Message`] at a time (a key, a feed
//! update, a tick, an action's outcome, a monkey event); keys that touch the cluster come back
//! as a [`Command`] for the runtime to carry out off the UI loop. Drawing only reads `App`.
//!
//! ```text
//!   Browse ──x/d/Del/m──► Confirm(command) ──y──► command runs   (--demo skips Confirm)
//!     │  ▲                     └──n/Esc──► Browse
//!     │  └──any key── Help ◄──?──┤
//!     └──/──► LabelFilter(text) ──Enter: filter applied / Esc──► Browse
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use protocol::chaos::{MonkeyEvent, MonkeyPolicy};
use protocol::selector::LabelSelector;
use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::cluster::{Cluster, EventLine, Ghost, Pod, Resource};
use crate::feed::Update;
use crate::look::Look;

/// How long an action's outcome stays in the status line.
const STATUS_SHOWN: Duration = Duration::from_secs(6);

/// Everything that changes the dashboard.
#[derive(Debug)]
pub enum Message {
    /// Terminal input (keys, resizes).
    Input(Event),
    /// News from the API server.
    Feed(Update),
    /// Time passed (animations, the "unreachable for" counter).
    Tick,
    /// An action finished.
    Done(Outcome),
    /// The chaos monkey did something.
    Monkey(MonkeyEvent),
}

/// What the user asked the cluster to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Kill a node through its chaos hook.
    Kill(String),
    /// Revive a killed node.
    Revive(String),
    /// Mark a node unschedulable.
    Cordon(String),
    /// Mark a node schedulable again.
    Uncordon(String),
    /// Cordon a node and evict its pods (DaemonSet pods stay).
    Drain(String),
    /// Set a deployment's replicas.
    Scale {
        /// Namespace.
        namespace: String,
        /// Deployment.
        name: String,
        /// New replica count.
        replicas: i64,
    },
    /// Delete a pod.
    DeletePod {
        /// Namespace.
        namespace: String,
        /// Pod.
        name: String,
    },
    /// Start the chaos monkey.
    StartMonkey,
    /// Stop the chaos monkey (it revives what it killed).
    StopMonkey,
    /// Leave the dashboard.
    Quit,
}

impl Command {
    /// The question asked before a destructive command, or `None` when it needs no asking.
    pub fn confirmation(&self) -> Option<String> {
        match self {
            Command::Kill(node) => Some(format!(
                "Kill node {node}? Its containers die and it stops heartbeating."
            )),
            Command::Drain(node) => Some(format!(
                "Drain node {node}? It is cordoned and its pods are evicted."
            )),
            Command::DeletePod { namespace, name } => {
                Some(format!("Delete pod {namespace}/{name}?"))
            }
            Command::StartMonkey => {
                Some("Start the chaos monkey? It kills a random node now and then.".to_owned())
            }
            _ => None,
        }
    }
}

/// The result of a command, for the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What happened, in words.
    pub message: String,
    /// It worked.
    pub ok: bool,
}

/// What the keys currently drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Moving around, acting on the selection.
    Browse,
    /// Waiting for y/n on a destructive command.
    Confirm(Command),
    /// The help screen.
    Help,
    /// Typing a label selector.
    LabelFilter(String),
}

/// Which part of the screen the arrow keys move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// Nodes and their pods.
    Placement,
    /// The deployment list.
    Deployments,
}

/// A column of the placement view: unscheduled pods, or a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lane {
    /// Pods without a node yet.
    Pending,
    /// A node, by name.
    Node(String),
}

/// A line of status under the panes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The text.
    pub text: String,
    /// Something went wrong.
    pub bad: bool,
    /// When it was set.
    pub at: Instant,
}

/// The chaos monkey as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonkeyStatus {
    /// It is running.
    pub running: bool,
    /// Its policy.
    pub policy: MonkeyPolicy,
    /// Nodes it killed and will revive.
    pub killed: BTreeSet<String>,
}

/// The dashboard's state.
#[derive(Debug)]
pub struct App {
    /// What is known about the cluster.
    pub cluster: Cluster,
    /// The API server (`https://host:port`).
    pub server: String,
    /// Feeds that are live (listed, watching).
    pub live: BTreeSet<Resource>,
    /// Since when the API server has not answered, and its last error.
    pub lost: Option<(Instant, String)>,
    /// Feeds the server refuses this identity (403), with its message.
    pub refused: BTreeMap<Resource, String>,
    /// Terminal capabilities.
    pub look: Look,
    /// `--demo`: no confirmations.
    pub demo: bool,
    /// What the keys drive.
    pub mode: Mode,
    /// Where the arrows move.
    pub focus: Focus,
    /// The selected lane.
    pub lane: Option<Lane>,
    /// The selected pod (UID), inside the selected lane.
    pub pod: Option<String>,
    /// The selected deployment (namespace, name).
    pub deployment: Option<(String, String)>,
    /// Only this namespace, or all.
    pub namespace: Option<String>,
    /// Only pods matching this label selector (its text and parsed form).
    pub labels: Option<(String, LabelSelector)>,
    /// The chaos monkey.
    pub monkey: MonkeyStatus,
    /// The status line.
    pub status: Option<Status>,
    /// The dashboard's clock.
    pub now: Instant,
    /// Wall-clock time, for ages.
    pub wall: jiff::Timestamp,
    /// When the dashboard started (the phase of blinking LEDs).
    pub started: Instant,
    /// The user asked to leave.
    pub quit: bool,
    /// The cluster's join secret (kube-system/bramble-join-token), shown in the help only, so
    /// it stays off the projector unless asked for.
    pub join_token: Option<String>,
    /// The connection state changed since the last frame.
    connection_changed: bool,
}

impl App {
    /// A dashboard for the API server at `server` (`https://host:port`, shown in the header)
    /// whose host is `master_host` (to recognise the master's own node).
    pub fn new(
        server: &str,
        master_host: &str,
        look: Look,
        demo: bool,
        policy: MonkeyPolicy,
        now: Instant,
    ) -> App {
        App {
            cluster: Cluster::new(master_host),
            server: server.to_owned(),
            live: BTreeSet::new(),
            lost: None,
            refused: BTreeMap::new(),
            look,
            demo,
            mode: Mode::Browse,
            focus: Focus::Placement,
            lane: None,
            pod: None,
            deployment: None,
            namespace: None,
            labels: None,
            monkey: MonkeyStatus {
                running: false,
                policy,
                killed: BTreeSet::new(),
            },
            status: None,
            now,
            wall: jiff::Timestamp::UNIX_EPOCH,
            started: now,
            quit: false,
            join_token: None,
            connection_changed: false,
        }
    }

    /// Sets the clocks (the runtime does before every batch; tests pin them).
    pub fn set_clock(&mut self, now: Instant, wall: jiff::Timestamp) {
        self.now = now;
        self.wall = wall;
    }

    /// Applies one message; a key that acts on the cluster returns its command.
    pub fn handle(&mut self, message: Message) -> Option<Command> {
        match message {
            Message::Input(Event::Key(key)) if key.kind != KeyEventKind::Release => {
                return self.key(key)
            }
            Message::Input(_) => {}
            Message::Feed(update) => self.feed(update),
            Message::Tick => {
                self.cluster.expire(self.now);
                if self
                    .status
                    .as_ref()
                    .is_some_and(|s| self.now.saturating_duration_since(s.at) > STATUS_SHOWN)
                {
                    self.status = None;
                }
            }
            Message::Done(outcome) => {
                if outcome.ok {
                    self.note("dashboard", &outcome.message, false);
                }
                self.set_status(&outcome.message, !outcome.ok);
            }
            Message::Monkey(event) => self.monkey_event(event),
        }
        None
    }

    /// Whether the screen changes with time alone (pulses, ghosts, blinking LEDs, the
    /// "unreachable for" counter), so the runtime redraws on ticks.
    pub fn is_animating(&self) -> bool {
        // A node's LED blinks when it is not Ready or while a pod on it starts.
        let blinking = self
            .cluster
            .nodes
            .values()
            .any(|node| node.health(false) != hardware::status::NodeHealth::Ready)
            || self
                .cluster
                .pods
                .values()
                .any(|pod| pod.node.is_some() && pod.state.is_starting());
        self.lost.is_some()
            || self.status.is_some()
            || blinking
            || self.cluster.is_animating(self.now)
    }

    /// Whether the screen needs drawing because of what the feeds brought (a visible change
    /// in the cluster, the master lost or back); resets the flag.
    pub fn take_changes(&mut self) -> bool {
        self.cluster.take_changes() | std::mem::take(&mut self.connection_changed)
    }

    fn feed(&mut self, update: Update) {
        match update {
            Update::Listed {
                resource,
                items,
                first,
                last,
            } => {
                self.cluster
                    .list_page(resource, &items, first, last, self.now);
                self.connection_changed |= self.refused.remove(&resource).is_some();
                if last {
                    self.connection_changed |= self.live.insert(resource);
                    if self.live.len() == Resource::ALL.len() && self.lost.is_some() {
                        self.lost = None;
                    }
                }
            }
            Update::Changed {
                resource,
                kind,
                object,
            } => self.cluster.apply(resource, kind, &object, self.now),
            Update::Usage(items) => self.cluster.set_usage(&items),
            Update::Refused { resource, message } => {
                // The server answered: it is not lost, this identity is only narrower.
                self.lost = None;
                self.connection_changed |=
                    self.refused.insert(resource, message.clone()).as_ref() != Some(&message);
            }
            Update::Lost { resource, error } => {
                self.connection_changed = true;
                self.live.remove(&resource);
                match &mut self.lost {
                    Some((_, last)) => *last = error,
                    None => self.lost = Some((self.now, error)),
                }
            }
        }
    }

    fn monkey_event(&mut self, event: MonkeyEvent) {
        match event {
            MonkeyEvent::Killed { node, revive_in } => {
                self.monkey.killed.insert(node.clone());
                let message = format!(
                    "killed node {node}; it comes back in {} s",
                    revive_in.as_secs()
                );
                self.note("monkey", &message, true);
            }
            MonkeyEvent::Revived { node } => {
                self.monkey.killed.remove(&node);
                self.note("monkey", &format!("revived node {node}"), false);
            }
            MonkeyEvent::Skipped { reason } => self.note("monkey", &reason, false),
            MonkeyEvent::Failed { message } => self.set_status(&message, true),
        }
    }

    /// Adds a line of the dashboard's own to the event pane.
    fn note(&mut self, reason: &str, message: &str, warning: bool) {
        let time = self.wall.round(jiff::Unit::Second).unwrap_or(self.wall);
        self.cluster.push_event(EventLine {
            time: time.to_string(),
            warning,
            reason: reason.to_owned(),
            object: String::new(),
            message: message.to_owned(),
        });
    }

    fn set_status(&mut self, text: &str, bad: bool) {
        self.status = Some(Status {
            text: text.to_owned(),
            bad,
            at: self.now,
        });
    }

    /// Records that the monkey started or stopped (the runtime owns the monkey itself).
    pub fn set_monkey_running(&mut self, running: bool) {
        self.monkey.running = running;
        if !running {
            self.monkey.killed.clear();
        }
    }

    // ----- what is on screen -----

    /// Whether a pod passes the namespace and label filters.
    pub fn shows(&self, pod: &Pod) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| &pod.namespace == ns)
            && self
                .labels
                .as_ref()
                .is_none_or(|(_, selector)| selector.matches_map(&pod.labels))
    }

    /// The lanes in screen order: unscheduled pods (when there are any), then the nodes in
    /// natural order (pi-2 before pi-10).
    pub fn lanes(&self) -> Vec<Lane> {
        let mut lanes = Vec::with_capacity(self.cluster.nodes.len() + 1);
        if self.cluster.pods_on(None).any(|p| self.shows(p)) {
            lanes.push(Lane::Pending);
        }
        let mut names: Vec<&String> = self.cluster.nodes.keys().collect();
        names.sort_by_key(|name| natural_key(name));
        lanes.extend(names.into_iter().map(|n| Lane::Node(n.clone())));
        lanes
    }

    /// The pods of a lane that pass the filters, grouped by owner.
    pub fn pods_in(&self, lane: &Lane) -> Vec<&Pod> {
        let node = match lane {
            Lane::Pending => None,
            Lane::Node(name) => Some(name),
        };
        let mut pods: Vec<&Pod> = self
            .cluster
            .pods_on(node)
            .filter(|p| self.shows(p))
            .collect();
        pods.sort_by(|a, b| {
            (&a.namespace, &a.owner.name, &a.name).cmp(&(&b.namespace, &b.owner.name, &b.name))
        });
        pods
    }

    /// Pods that just left a lane.
    pub fn ghosts_in(&self, lane: &Lane) -> Vec<&Ghost> {
        let Lane::Node(name) = lane else {
            return Vec::new();
        };
        self.cluster
            .ghosts
            .iter()
            .filter(|g| g.pod.node.as_ref() == Some(name) && self.shows(&g.pod))
            .collect()
    }

    /// The deployments that pass the namespace filter.
    pub fn deployments(&self) -> Vec<&crate::cluster::Deployment> {
        self.cluster
            .deployments
            .values()
            .filter(|d| self.namespace.as_ref().is_none_or(|ns| &d.namespace == ns))
            .collect()
    }

    /// The selected lane, falling back to the first one.
    pub fn selected_lane(&self) -> Option<Lane> {
        let lanes = self.lanes();
        match &self.lane {
            Some(lane) if lanes.contains(lane) => Some(lane.clone()),
            _ => lanes.into_iter().find(|l| matches!(l, Lane::Node(_))),
        }
    }

    /// The selected pod, if it is still in the selected lane and passes the filters.
    pub fn selected_pod(&self) -> Option<&Pod> {
        let pod = self.cluster.pods.get(self.pod.as_ref()?)?;
        let in_lane = match self.selected_lane()? {
            Lane::Pending => pod.node.is_none(),
            Lane::Node(name) => pod.node.as_ref() == Some(&name),
        };
        (in_lane && self.shows(pod)).then_some(pod)
    }

    /// The selected deployment, falling back to the first one.
    pub fn selected_deployment(&self) -> Option<&crate::cluster::Deployment> {
        let deployments = self.deployments();
        self.deployment
            .as_ref()
            .and_then(|key| {
                deployments
                    .iter()
                    .find(|d| (&d.namespace, &d.name) == (&key.0, &key.1))
                    .copied()
            })
            .or_else(|| deployments.first().copied())
    }

    /// The keys that work now, for the hint bar, most useful first.
    pub fn hints(&self) -> Vec<(&'static str, &'static str)> {
        match &self.mode {
            Mode::Confirm(_) => vec![("y", "yes"), ("n", "no")],
            Mode::Help => vec![("any key", "back")],
            Mode::LabelFilter(_) => {
                vec![("Enter", "apply"), ("Esc", "cancel"), ("empty", "all pods")]
            }
            Mode::Browse => {
                let mut hints = match self.focus {
                    Focus::Placement => vec![
                        ("←→", "node"),
                        ("↑↓", "pod"),
                        ("x", "kill"),
                        ("r", "revive"),
                        ("m", "monkey"),
                        ("+-", "scale"),
                        ("c/u", "cordon"),
                        ("d", "drain"),
                        ("Del", "delete pod"),
                    ],
                    Focus::Deployments => vec![("↑↓", "deployment"), ("+-", "scale")],
                };
                hints.extend([
                    ("Tab", "panes"),
                    ("n", "namespace"),
                    ("/", "labels"),
                    ("?", "help"),
                    ("q", "quit"),
                ]);
                hints
            }
        }
    }

    // ----- keys -----

    fn key(&mut self, key: KeyEvent) -> Option<Command> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return Some(Command::Quit);
        }
        match std::mem::replace(&mut self.mode, Mode::Browse) {
            Mode::Browse => self.browse_key(key),
            Mode::Help => None,
            Mode::Confirm(command) => match key.code {
                KeyCode::Char('y' | 'Y') | KeyCode::Enter => Some(command),
                KeyCode::Char('n' | 'N') | KeyCode::Esc | KeyCode::Char('q') => None,
                _ => {
                    self.mode = Mode::Confirm(command);
                    None
                }
            },
            Mode::LabelFilter(mut text) => {
                match key.code {
                    KeyCode::Enter => self.apply_label_filter(&text),
                    KeyCode::Esc => {}
                    KeyCode::Backspace => {
                        text.pop();
                        self.mode = Mode::LabelFilter(text);
                    }
                    KeyCode::Char(c) => {
                        text.push(c);
                        self.mode = Mode::LabelFilter(text);
                    }
                    _ => self.mode = Mode::LabelFilter(text),
                }
                None
            }
        }
    }

    fn apply_label_filter(&mut self, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            self.labels = None;
            return;
        }
        match LabelSelector::parse(text) {
            Ok(selector) => self.labels = Some((text.to_owned(), selector)),
            Err(error) => {
                self.set_status(&format!("label selector {text:?}: {error}"), true);
                self.mode = Mode::LabelFilter(text.to_owned());
            }
        }
    }

    fn browse_key(&mut self, key: KeyEvent) -> Option<Command> {
        let command = match key.code {
            KeyCode::Char('q') => {
                self.quit = true;
                return Some(Command::Quit);
            }
            KeyCode::Char('?') | KeyCode::F(1) => {
                self.mode = Mode::Help;
                return None;
            }
            KeyCode::Char('/') => {
                let current = self.labels.as_ref().map(|(t, _)| t.clone());
                self.mode = Mode::LabelFilter(current.unwrap_or_default());
                return None;
            }
            KeyCode::Char('n') => {
                self.next_namespace();
                return None;
            }
            KeyCode::Tab | KeyCode::BackTab => {
                self.focus = match self.focus {
                    Focus::Placement => Focus::Deployments,
                    Focus::Deployments => Focus::Placement,
                };
                return None;
            }
            KeyCode::Esc => {
                self.pod = None;
                return None;
            }
            KeyCode::Left | KeyCode::Char('h') => {
                self.move_lane(-1);
                return None;
            }
            KeyCode::Right | KeyCode::Char('l') => {
                self.move_lane(1);
                return None;
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.move_vertically(-1);
                return None;
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.move_vertically(1);
                return None;
            }
            KeyCode::Char('x') => self.node_command(Command::Kill),
            KeyCode::Char('r') => self.node_command(Command::Revive),
            KeyCode::Char('c') => self.node_command(Command::Cordon),
            KeyCode::Char('u') => self.node_command(Command::Uncordon),
            KeyCode::Char('d') => self.node_command(Command::Drain),
            KeyCode::Char('+' | '=') => self.scale_command(1),
            KeyCode::Char('-' | '_') => self.scale_command(-1),
            KeyCode::Delete | KeyCode::Backspace | KeyCode::Char('D') => {
                match self.selected_pod() {
                    Some(pod) => Some(Command::DeletePod {
                        namespace: pod.namespace.clone(),
                        name: pod.name.clone(),
                    }),
                    None => {
                        self.set_status("select a pod first (↑↓)", true);
                        None
                    }
                }
            }
            KeyCode::Char('m') => Some(if self.monkey.running {
                Command::StopMonkey
            } else {
                Command::StartMonkey
            }),
            _ => None,
        }?;
        match command.confirmation() {
            Some(_) if !self.demo => {
                self.mode = Mode::Confirm(command);
                None
            }
            _ => Some(command),
        }
    }

    fn node_command(&mut self, command: fn(String) -> Command) -> Option<Command> {
        match self.selected_lane() {
            Some(Lane::Node(name)) => Some(command(name)),
            _ => {
                self.set_status("select a node first (←→)", true);
                None
            }
        }
    }

    fn scale_command(&mut self, by: i64) -> Option<Command> {
        let target = match self.focus {
            Focus::Deployments => self
                .selected_deployment()
                .map(|d| (d.namespace.clone(), d.name.clone())),
            Focus::Placement => self
                .selected_pod()
                .filter(|pod| pod.owner.kind == "Deployment")
                .map(|pod| (pod.namespace.clone(), pod.owner.name.clone())),
        };
        let Some((namespace, name)) = target else {
            self.set_status(
                "select a deployment's pod (↑↓) or a deployment (Tab) to scale",
                true,
            );
            return None;
        };
        let current = self
            .cluster
            .deployments
            .get(&(namespace.clone(), name.clone()))
            .map_or(0, |d| d.desired);
        let replicas = (current + by).max(0);
        if replicas == current {
            return None;
        }
        Some(Command::Scale {
            namespace,
            name,
            replicas,
        })
    }

    fn move_lane(&mut self, by: isize) {
        let lanes = self.lanes();
        if lanes.is_empty() {
            return;
        }
        let current = self
            .selected_lane()
            .and_then(|lane| lanes.iter().position(|l| *l == lane))
            .unwrap_or(0);
        let next = (current as isize + by).rem_euclid(lanes.len() as isize) as usize;
        self.lane = Some(lanes[next].clone());
        self.pod = None;
        self.focus = Focus::Placement;
    }

    fn move_vertically(&mut self, by: isize) {
        match self.focus {
            Focus::Deployments => {
                let keys: Vec<(String, String)> = self
                    .deployments()
                    .iter()
                    .map(|d| (d.namespace.clone(), d.name.clone()))
                    .collect();
                if keys.is_empty() {
                    return;
                }
                let current = self
                    .selected_deployment()
                    .and_then(|d| {
                        keys.iter()
                            .position(|k| (&k.0, &k.1) == (&d.namespace, &d.name))
                    })
                    .unwrap_or(0);
                let next = (current as isize + by).clamp(0, keys.len() as isize - 1);
                self.deployment = Some(keys[next as usize].clone());
            }
            Focus::Placement => {
                let Some(lane) = self.selected_lane() else {
                    return;
                };
                self.lane = Some(lane.clone());
                let uids: Vec<String> = self.pods_in(&lane).iter().map(|p| p.uid.clone()).collect();
                let current = self
                    .selected_pod()
                    .and_then(|pod| uids.iter().position(|u| *u == pod.uid));
                self.pod = match (current, by > 0) {
                    (None, true) => uids.first().cloned(),
                    (None, false) => None,
                    (Some(0), false) => None,
                    (Some(i), true) => uids.get(i + 1).or(uids.get(i)).cloned(),
                    (Some(i), false) => uids.get(i - 1).cloned(),
                };
            }
        }
    }

    fn next_namespace(&mut self) {
        let namespaces: BTreeSet<&String> =
            self.cluster.pods.values().map(|p| &p.namespace).collect();
        let namespaces: Vec<&String> = namespaces.into_iter().collect();
        self.namespace = match &self.namespace {
            None => namespaces.first().map(|ns| (*ns).clone()),
            Some(current) => namespaces
                .iter()
                .position(|ns| *ns == current)
                .and_then(|i| namespaces.get(i + 1))
                .map(|ns| (*ns).clone()),
        };
        self.pod = None;
    }

    // ----- facts for the panes -----

    /// Whether any pod on `node` is still starting (its LED blinks meanwhile).
    pub fn node_has_starting_pods(&self, node: &str) -> bool {
        self.cluster
            .pods_on(Some(&node.to_owned()))
            .any(|p| p.state.is_starting())
    }

    /// How long ago an RFC 3339 time was, as kubectl prints ages (`45s`, `3m`, `2h`, `4d`).
    pub fn age(&self, time: &str) -> String {
        let Ok(then) = time.parse::<jiff::Timestamp>() else {
            return "-".to_owned();
        };
        let seconds = self.wall.as_second() - then.as_second();
        match seconds.max(0) {
            s if s < 120 => format!("{s}s"),
            s if s < 7200 => format!("{}m", s / 60),
            s if s < 172_800 => format!("{}h", s / 3600),
            s => format!("{}d", s / 86_400),
        }
    }

    /// Whether a pod changed within the pulse window.
    pub fn pulsing(&self, pod: &Pod) -> bool {
        self.now.saturating_duration_since(pod.changed_at) < crate::cluster::PULSE
    }
}

/// Sorts `pi-2` before `pi-10`: the text, then the trailing number.
fn natural_key(name: &str) -> (String, u64) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (text, number) = name.split_at(name.len() - digits);
    (text.to_owned(), number.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::{Event, KeyCode, KeyEvent};

    use super::*;
    use crate::fixtures::demo_app;

    fn press(app: &mut App, code: KeyCode) -> Option<Command> {
        app.handle(Message::Input(Event::Key(KeyEvent::from(code))))
    }

    #[test]
    fn lanes_are_in_natural_order_with_waiting_pods_first() {
        let mut app = demo_app();
        let mut node = crate::fixtures::node("pi-10", "10.99.0.20", "True");
        node["metadata"]["name"] = "pi-10".into();
        app.handle(Message::Feed(Update::Changed {
            resource: Resource::Nodes,
            kind: protocol::client::WatchKind::Added,
            object: node,
        }));
        let lanes = app.lanes();
        let names: Vec<String> = lanes
            .iter()
            .map(|l| match l {
                Lane::Pending => "waiting".to_owned(),
                Lane::Node(n) => n.clone(),
            })
            .collect();
        assert_eq!(names, ["waiting", "pi-1", "pi-2", "pi-3", "pi-10"]);
        assert_eq!(app.selected_lane(), Some(Lane::Node("pi-1".into())));
    }

    #[test]
    fn killing_asks_first_and_demo_mode_does_not() {
        let mut app = demo_app();
        press(&mut app, KeyCode::Right);
        assert_eq!(press(&mut app, KeyCode::Char('x')), None);
        assert!(matches!(app.mode, Mode::Confirm(_)));
        assert_eq!(press(&mut app, KeyCode::Char('z')), None, "other keys wait");
        assert_eq!(
            press(&mut app, KeyCode::Char('y')),
            Some(Command::Kill("pi-2".into()))
        );
        assert_eq!(press(&mut app, KeyCode::Char('x')), None);
        assert_eq!(press(&mut app, KeyCode::Esc), None);
        assert_eq!(app.mode, Mode::Browse);
        // Reviving and cordoning never ask.
        assert_eq!(
            press(&mut app, KeyCode::Char('r')),
            Some(Command::Revive("pi-2".into()))
        );
        app.demo = true;
        assert_eq!(
            press(&mut app, KeyCode::Char('d')),
            Some(Command::Drain("pi-2".into()))
        );
    }

    #[test]
    fn node_keys_need_a_node() {
        let mut app = demo_app();
        press(&mut app, KeyCode::Left); // from pi-1 to the waiting lane
        assert_eq!(app.selected_lane(), Some(Lane::Pending));
        assert_eq!(press(&mut app, KeyCode::Char('c')), None);
        assert!(app.status.as_ref().unwrap().bad);
    }

    #[test]
    fn pods_are_picked_with_the_arrows_and_scale_their_deployment() {
        let mut app = demo_app();
        // pi-1: db, log-shipper, web, web.
        press(&mut app, KeyCode::Down);
        assert_eq!(app.selected_pod().unwrap().name, "db-5d8f7c-q1r2s");
        assert_eq!(
            press(&mut app, KeyCode::Char('+')),
            Some(Command::Scale {
                namespace: "default".into(),
                name: "db".into(),
                replicas: 3
            })
        );
        press(&mut app, KeyCode::Down);
        assert_eq!(app.selected_pod().unwrap().owner.kind, "DaemonSet");
        assert_eq!(
            press(&mut app, KeyCode::Char('-')),
            None,
            "not a deployment"
        );
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Down);
        assert_eq!(
            app.selected_pod().unwrap().name,
            "web-5d8f7c-d3e4f",
            "stops at the end"
        );
        app.demo = true;
        assert_eq!(
            press(&mut app, KeyCode::Delete),
            Some(Command::DeletePod {
                namespace: "default".into(),
                name: "web-5d8f7c-d3e4f".into()
            })
        );
        for _ in 0..4 {
            press(&mut app, KeyCode::Up);
        }
        assert_eq!(
            app.selected_pod(),
            None,
            "up from the first pod selects the node"
        );
        // Tab: the deployment list.
        press(&mut app, KeyCode::Tab);
        press(&mut app, KeyCode::Down);
        assert_eq!(
            press(&mut app, KeyCode::Char('-')),
            Some(Command::Scale {
                namespace: "default".into(),
                name: "web".into(),
                replicas: 4
            })
        );
    }

    #[test]
    fn filters_by_namespace_and_labels() {
        let mut app = demo_app();
        press(&mut app, KeyCode::Char('/'));
        for c in "app=web".chars() {
            press(&mut app, KeyCode::Char(c));
        }
        press(&mut app, KeyCode::Enter);
        assert_eq!(app.mode, Mode::Browse);
        let lane = Lane::Node("pi-1".into());
        assert_eq!(app.pods_in(&lane).len(), 2);
        // A broken selector says so and stays in the editor.
        press(&mut app, KeyCode::Char('/'));
        press(&mut app, KeyCode::Char('!'));
        press(&mut app, KeyCode::Char('='));
        press(&mut app, KeyCode::Enter);
        assert!(matches!(app.mode, Mode::LabelFilter(_)));
        assert!(app.status.as_ref().unwrap().bad);
        press(&mut app, KeyCode::Esc);
        assert_eq!(app.labels.as_ref().unwrap().0, "app=web");
        // An empty selector shows everything again.
        press(&mut app, KeyCode::Char('/'));
        for _ in 0..7 {
            press(&mut app, KeyCode::Backspace);
        }
        press(&mut app, KeyCode::Enter);
        assert!(app.labels.is_none());
        assert_eq!(app.pods_in(&lane).len(), 4);
        press(&mut app, KeyCode::Char('n'));
        assert_eq!(app.namespace.as_deref(), Some("default"));
        press(&mut app, KeyCode::Char('n'));
        assert_eq!(app.namespace, None, "after the last namespace: all");
    }

    #[test]
    fn the_master_going_away_is_remembered_until_every_feed_is_back() {
        let mut app = demo_app();
        let lost = |resource| {
            Message::Feed(Update::Lost {
                resource,
                error: "connection refused".into(),
            })
        };
        app.handle(lost(Resource::Pods));
        app.handle(lost(Resource::Nodes));
        assert!(app.lost.is_some());
        assert!(app.is_animating());
        app.handle(Message::Feed(Update::whole_list(
            Resource::Pods,
            Vec::new(),
        )));
        assert!(app.lost.is_some(), "nodes are not back yet");
        app.handle(Message::Feed(Update::whole_list(
            Resource::Nodes,
            Vec::new(),
        )));
        assert!(app.lost.is_none());
        assert!(app.cluster.pods.is_empty(), "the new list replaced the old");
    }

    #[test]
    fn monkey_events_reach_the_event_pane() {
        let mut app = demo_app();
        assert_eq!(press(&mut app, KeyCode::Char('m')), None, "asks first");
        assert_eq!(press(&mut app, KeyCode::Enter), Some(Command::StartMonkey));
        app.set_monkey_running(true);
        app.handle(Message::Monkey(MonkeyEvent::Killed {
            node: "pi-3".into(),
            revive_in: Duration::from_secs(20),
        }));
        assert!(app.monkey.killed.contains("pi-3"));
        let last = app.cluster.events.back().unwrap();
        assert_eq!(
            (last.reason.as_str(), last.message.as_str()),
            ("monkey", "killed node pi-3; it comes back in 20 s")
        );
        assert_eq!(
            press(&mut app, KeyCode::Char('m')),
            Some(Command::StopMonkey)
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        let app = demo_app(); // wall clock 12:00:10
        assert_eq!(app.age("2026-11-23T12:00:00Z"), "10s");
        assert_eq!(app.age("2026-11-23T11:55:00Z"), "5m");
        assert_eq!(app.age("2026-11-21T12:00:00Z"), "2d");
        assert_eq!(app.age("garbage"), "-");
    }
}
