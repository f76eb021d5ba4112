//! A Pi's front panel on GPIO: the status LED, a strip of APA102 LEDs (a Blinkt!) and
//! buttons, driven by one thread that polls the buttons every 10 ms and redraws the LEDs when
//! what they show changes.
//!
//! ```text
//!   agent / master ──set_health, set_light, remove_light──► PanelState ◄── view() (GET /gpio)
//!                                                              │
//!   panel thread, every 10 ms: poll buttons ──Down──► feedback (white) at once
//!                              │           └─Press/LongPress──► ButtonPress channel ─► chaos hook
//!                              └─ status LED and strip, written only when they change
//!   Panel dropped: thread stops, LEDs off
//! ```
//!
//! Opening the backend can fail (no GPIO here); a pin that cannot be had only takes its own
//! part out, recorded in [`PanelView::problems`], and the rest of the panel works.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hardware::apa102::Apa102;
use hardware::backend::{Backend, BackendChoice, GpioError, Input, Output};
use hardware::button::{Button, ButtonEvent, Debouncer};
use hardware::led::StatusLed;
use hardware::lights::StripLights;
use hardware::pins::{StatusLedPins, StripPins, DEFAULT_BRIGHTNESS};
use hardware::simulated::SimulatedGpio;
use hardware::status::{node_signal, Blink, NodeHealth, NodeSignal, Rgb};
use protocol::client::Event;
use protocol::node::Readiness;
use serde::Serialize;
use tokio::sync::mpsc;

/// How often buttons are read (and the LEDs redrawn if they changed).
pub const POLL: Duration = Duration::from_millis(10);
/// How long the panel lights white after a button goes down.
pub const FEEDBACK: Duration = Duration::from_millis(250);

/// What a button does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ButtonAction {
    /// A press kills this node, a long press revives it.
    Kill,
    /// A press starts or stops the chaos monkey (on the master).
    Monkey,
}

impl fmt::Display for ButtonAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ButtonAction::Kill => "kill",
            ButtonAction::Monkey => "monkey",
        })
    }
}

/// A button: what it does and its pin, written `kill=27`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ButtonPin {
    /// What it does.
    pub action: ButtonAction,
    /// Its pin (BCM), wired to ground.
    pub bcm: u8,
}

impl FromStr for ButtonPin {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (action, pin) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: write ACTION=PIN, e.g. kill=27 or monkey=22"))?;
        let action = match action {
            "kill" => ButtonAction::Kill,
            "monkey" => ButtonAction::Monkey,
            other => return Err(format!("unknown button action {other:?}: kill or monkey")),
        };
        Ok(ButtonPin {
            action,
            bcm: hardware::pins::bcm(pin)?,
        })
    }
}

/// Everything on the panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelConfig {
    /// Where the pins come from; [`BackendChoice::None`] for no panel.
    pub backend: BackendChoice,
    /// The status LED, if any.
    pub status_led: Option<StatusLedPins>,
    /// The LED strip, if any.
    pub strip: Option<StripPins>,
    /// The buttons.
    pub buttons: Vec<ButtonPin>,
    /// The strip's brightness, 0-31.
    pub brightness: u8,
}

impl PanelConfig {
    /// The panel the command line describes; `default_buttons` when `--buttons` is not given.
    pub fn from_args(
        args: protocol::command_line::PanelArgs,
        default_buttons: &str,
    ) -> Result<PanelConfig, String> {
        let buttons = match args.buttons.as_deref().unwrap_or(default_buttons) {
            "none" | "" => Vec::new(),
            list => list
                .split(',')
                .map(str::parse)
                .collect::<Result<_, String>>()
                .map_err(|e| format!("--buttons: {e}"))?,
        };
        Ok(PanelConfig {
            backend: args.gpio,
            status_led: args.status_led,
            strip: args.strip,
            buttons,
            brightness: args.brightness,
        })
    }
}

impl Default for PanelConfig {
    fn default() -> Self {
        PanelConfig {
            backend: BackendChoice::None,
            status_led: None,
            strip: None,
            buttons: Vec::new(),
            brightness: DEFAULT_BRIGHTNESS,
        }
    }
}

impl PanelConfig {
    /// A node's kit from the README's wiring guide on `backend`: a status LED on BCM17, a
    /// Blinkt! on BCM23/24 and a kill button on BCM27.
    pub fn node_kit(backend: BackendChoice) -> PanelConfig {
        PanelConfig {
            backend,
            status_led: Some(StatusLedPins::Single(17)),
            strip: Some(StripPins::BLINKT),
            buttons: vec![ButtonPin {
                action: ButtonAction::Kill,
                bcm: 27,
            }],
            brightness: DEFAULT_BRIGHTNESS,
        }
    }
}

/// A button that did something: the panel thread sends these to whoever acts on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ButtonPress {
    /// The button's action.
    pub action: ButtonAction,
    /// A long press (held for 1.5 s or more).
    pub long: bool,
}

/// The panel as it is lit now, for `GET /gpio` and `bramble gpio`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PanelView {
    /// The backend's name.
    pub backend: String,
    /// The status LED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_led: Option<StatusLedView>,
    /// The strip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip: Option<StripView>,
    /// The buttons.
    pub buttons: Vec<ButtonView>,
    /// Parts that do not work, and why.
    pub problems: Vec<String>,
}

/// The status LED as lit now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatusLedView {
    /// Its pins.
    pub pins: String,
    /// What it signals: ready, starting, notready, unknown or stopped.
    pub health: String,
    /// The blink pattern.
    pub blink: String,
    /// Lit right now.
    pub lit: bool,
    /// Its colour while lit, `#rrggbb`.
    pub colour: String,
}

/// The strip as lit now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StripView {
    /// Its pins.
    pub pins: String,
    /// Each LED's colour now, `#rrggbb`, nearest the Pi first.
    pub leds: Vec<String>,
    /// What each LED stands for (a pod `namespace/name` or a node), `None` when dark.
    pub showing: Vec<Option<String>>,
}

/// A button.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ButtonView {
    /// Its pin (BCM).
    pub pin: u8,
    /// What it does.
    pub action: ButtonAction,
    /// Held down right now.
    pub pressed: bool,
}

fn hex(colour: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", colour.r, colour.g, colour.b)
}

fn health_word(health: NodeHealth) -> &'static str {
    match health {
        NodeHealth::Ready => "ready",
        NodeHealth::Starting => "starting",
        NodeHealth::NotReady => "notready",
        NodeHealth::Unknown => "unknown",
        NodeHealth::Stopped => "stopped",
    }
}

fn blink_word(blink: Blink) -> &'static str {
    match blink {
        Blink::Off => "off",
        Blink::Steady => "steady",
        Blink::Slow => "slow",
        Blink::Fast => "fast",
    }
}

/// What the panel should show, shared between its owner and its thread.
struct PanelState {
    health: NodeHealth,
    strip: StripLights,
    feedback_until: Option<Instant>,
    view: PanelView,
}

struct Shared {
    state: Mutex<PanelState>,
    stop: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, PanelState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The pins the thread drives.
struct Parts {
    status_led: Option<StatusLed<Output>>,
    strip: Option<Apa102<Output, Output>>,
    buttons: Vec<(ButtonPin, Button<Input>)>,
}

/// A running panel; dropping it turns the LEDs off.
pub struct Panel {
    shared: Arc<Shared>,
    simulated: Option<SimulatedGpio>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Panel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Panel").field("view", &self.view()).finish()
    }
}

impl Panel {
    /// Opens the backend and the pins and starts the panel thread. `Ok(None)` when the config
    /// has no backend. Button presses arrive on the returned channel.
    pub fn start(
        config: &PanelConfig,
    ) -> Result<Option<(Panel, mpsc::UnboundedReceiver<ButtonPress>)>, GpioError> {
        let Some(backend) = Backend::open(&config.backend)? else {
            return Ok(None);
        };
        let mut view = PanelView {
            backend: backend.name(),
            ..PanelView::default()
        };
        let simulated = backend.simulated().cloned();
        let status_led = config.status_led.and_then(|pins| {
            let led = match pins {
                StatusLedPins::Single(pin) => backend.output(pin).map(StatusLed::Single),
                StatusLedPins::Rgb { red, green, blue } => (|| {
                    Ok(StatusLed::Rgb {
                        red: backend.output(red)?,
                        green: backend.output(green)?,
                        blue: backend.output(blue)?,
                    })
                })(),
            };
            match led {
                Ok(led) => {
                    view.status_led = Some(StatusLedView {
                        pins: pins.to_string(),
                        ..StatusLedView::default()
                    });
                    Some(led)
                }
                Err(error) => {
                    view.problems.push(format!("status LED: {error}"));
                    None
                }
            }
        });
        let strip_len = config.strip.map_or(0, |pins| pins.len);
        let strip = config.strip.and_then(|pins| {
            if let Some(gpio) = &simulated {
                gpio.watch_strip(pins.data, pins.clock);
            }
            match backend
                .output(pins.data)
                .and_then(|data| Ok((data, backend.output(pins.clock)?)))
            {
                Ok((data, clock)) => {
                    view.strip = Some(StripView {
                        pins: pins.to_string(),
                        leds: vec![hex(Rgb::OFF); pins.len],
                        showing: vec![None; pins.len],
                    });
                    Some(Apa102::new(data, clock, config.brightness))
                }
                Err(error) => {
                    view.problems.push(format!("LED strip: {error}"));
                    None
                }
            }
        });
        let mut buttons = Vec::new();
        for button in &config.buttons {
            match backend.input_pull_up(button.bcm) {
                Ok(pin) => {
                    view.buttons.push(ButtonView {
                        pin: button.bcm,
                        action: button.action,
                        pressed: false,
                    });
                    buttons.push((*button, Button::new(pin, Debouncer::default())));
                }
                Err(error) => view
                    .problems
                    .push(format!("{} button: {error}", button.action)),
            }
        }
        for problem in &view.problems {
            tracing::error!("{problem}; the rest of the panel works without it");
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(PanelState {
                health: NodeHealth::Unknown,
                strip: StripLights::new(if strip.is_some() { strip_len } else { 0 }),
                feedback_until: None,
                view,
            }),
            stop: AtomicBool::new(false),
        });
        let (presses, received) = mpsc::unbounded_channel();
        let parts = Parts {
            status_led,
            strip,
            buttons,
        };
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("panel".into())
                .spawn(move || drive(&shared, parts, &presses))
                .map_err(|e| GpioError::Unavailable {
                    backend: backend.name(),
                    why: format!("cannot start the panel thread: {e}"),
                })?
        };
        tracing::info!(backend = backend.name(), "front panel started");
        Ok(Some((
            Panel {
                shared,
                simulated,
                thread: Some(thread),
            },
            received,
        )))
    }

    /// What the status LED signals.
    pub fn set_health(&self, health: NodeHealth) {
        self.shared.state().health = health;
    }

    /// Shows `key` on the strip in `colour` (a new key or colour flashes).
    pub fn set_light(&self, key: &str, colour: Rgb) {
        self.shared.state().strip.set(key, colour, Instant::now());
    }

    /// `key` is gone from the strip (its LED flashes out).
    pub fn remove_light(&self, key: &str) {
        self.shared.state().strip.remove(key, Instant::now());
    }

    /// Keeps only the keys `keep` accepts (after a fresh list).
    pub fn retain_lights(&self, keep: impl FnMut(&str) -> bool) {
        self.shared.state().strip.retain(keep, Instant::now());
    }

    /// The panel as lit now.
    pub fn view(&self) -> PanelView {
        let mut view = self.shared.state().view.clone();
        if let Some(gpio) = &self.simulated {
            for button in &mut view.buttons {
                button.pressed = gpio.level(button.pin) == Some(false);
            }
        }
        view
    }

    /// The simulated header, when the panel runs on one.
    pub fn simulated_gpio(&self) -> Option<&SimulatedGpio> {
        self.simulated.as_ref()
    }

    /// Presses a simulated button on `pin` for `hold`. Real buttons are pressed by hand.
    pub async fn press(&self, pin: u8, hold: Duration) -> Result<(), String> {
        let view = self.view();
        let Some(gpio) = &self.simulated else {
            return Err(format!(
                "the {} backend has real buttons: press them by hand",
                view.backend
            ));
        };
        if !view.buttons.iter().any(|b| b.pin == pin) {
            return Err(format!("there is no button on BCM{pin}"));
        }
        gpio.press(pin, true);
        tokio::time::sleep(hold).await;
        gpio.press(pin, false);
        Ok(())
    }
}

impl Drop for Panel {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The panel thread: buttons in, LEDs out, until told to stop; then the LEDs go dark.
fn drive(shared: &Shared, mut parts: Parts, presses: &mpsc::UnboundedSender<ButtonPress>) {
    let start = Instant::now();
    let mut shown_status: Option<(bool, Rgb, NodeHealth)> = None;
    let mut shown_strip: Option<Vec<Rgb>> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let mut failed = Vec::new();
        for (index, (pin, button)) in parts.buttons.iter_mut().enumerate() {
            match button.poll(now) {
                Ok(Some(ButtonEvent::Down)) => shared.state().feedback_until = Some(now + FEEDBACK),
                Ok(Some(event)) => {
                    let long = event == ButtonEvent::LongPress;
                    tracing::info!(action = %pin.action, pin = pin.bcm, long, "button pressed");
                    let _ = presses.send(ButtonPress {
                        action: pin.action,
                        long,
                    });
                }
                Ok(None) => {}
                Err(error) => failed.push((index, format!("{} button: {error}", pin.action))),
            }
        }
        for (index, problem) in failed.into_iter().rev() {
            tracing::error!("{problem}; the button is given up");
            parts.buttons.remove(index);
            shared.state().view.problems.push(problem);
        }
        let (health, signal, colours) = {
            let mut state = shared.state();
            let feedback = state.feedback_until.is_some_and(|until| now < until);
            let signal = if feedback {
                NodeSignal {
                    blink: Blink::Steady,
                    colour: Rgb::new(255, 255, 255),
                }
            } else {
                node_signal(state.health)
            };
            let mut colours = state.strip.colours(now);
            if feedback {
                colours.fill(Rgb::new(255, 255, 255));
            }
            (state.health, signal, colours)
        };
        let millis = now.saturating_duration_since(start).as_millis() as u64;
        let lit = signal.blink.lit_at(millis);
        if let Some(led) = &mut parts.status_led {
            if shown_status != Some((lit, signal.colour, health)) {
                match led.show(signal, millis) {
                    Ok(()) => {
                        shown_status = Some((lit, signal.colour, health));
                        if let Some(view) = &mut shared.state().view.status_led {
                            view.health = health_word(health).into();
                            view.blink = blink_word(signal.blink).into();
                            view.lit = lit;
                            view.colour = hex(signal.colour);
                        }
                    }
                    Err(error) => {
                        let problem = format!("status LED: {error}");
                        tracing::error!("{problem}; the LED is given up");
                        parts.status_led = None;
                        shared.state().view.problems.push(problem);
                    }
                }
            }
        }
        if let Some(strip) = &mut parts.strip {
            if shown_strip.as_ref() != Some(&colours) {
                match strip.show(&colours) {
                    Ok(()) => {
                        let mut state = shared.state();
                        let showing = state
                            .strip
                            .keys()
                            .into_iter()
                            .map(|k| k.map(str::to_owned))
                            .collect();
                        if let Some(view) = &mut state.view.strip {
                            view.leds = colours.iter().copied().map(hex).collect();
                            view.showing = showing;
                        }
                        shown_strip = Some(colours);
                    }
                    Err(error) => {
                        let problem = format!("LED strip: {error:?}");
                        tracing::error!("{problem}; the strip is given up");
                        parts.strip = None;
                        shared.state().view.problems.push(problem);
                    }
                }
            }
        }
        std::thread::sleep(POLL);
    }
    if let Some(led) = &mut parts.status_led {
        let _ = led.off();
    }
    if let Some(strip) = &mut parts.strip {
        let _ = strip.show(&vec![Rgb::OFF; shown_strip.map_or(0, |s| s.len())]);
    }
}

/// What a node's panel shows, worked out from the node's own Node object, its pods and the
/// chaos hook: the status LED from health, one strip LED per pod in its app's colour. While
/// the chaos hook holds the node down its containers are dead, so the strip goes dark; it
/// lights up again when the node comes back.
pub struct NodePanel {
    panel: Panel,
    facts: Mutex<PanelFacts>,
}

#[derive(Default)]
struct PanelFacts {
    /// The Ready condition the master last published (None: not seen yet).
    ready: Option<bool>,
    /// Held down by the chaos hook.
    dead: bool,
    /// Pods still starting, by key.
    starting: std::collections::BTreeSet<String>,
    /// Each pod's colour, by key.
    lights: std::collections::BTreeMap<String, Rgb>,
    /// Pods seen during the current list (to drop the rest when it ends).
    listed: Option<std::collections::BTreeSet<String>>,
}

impl PanelFacts {
    fn health(&self) -> NodeHealth {
        match (self.dead, self.ready) {
            (true, _) | (false, Some(false)) => NodeHealth::NotReady,
            (false, None) => NodeHealth::Unknown,
            (false, Some(true)) if !self.starting.is_empty() => NodeHealth::Starting,
            (false, Some(true)) => NodeHealth::Ready,
        }
    }
}

fn pod_key(pod: &serde_json::Value) -> String {
    format!(
        "{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap_or("default"),
        pod["metadata"]["name"].as_str().unwrap_or_default()
    )
}

impl NodePanel {
    /// A node's panel on a started [`Panel`].
    pub fn new(panel: Panel) -> NodePanel {
        panel.set_health(NodeHealth::Unknown);
        NodePanel {
            panel,
            facts: Mutex::new(PanelFacts::default()),
        }
    }

    /// The panel itself (its view, simulated presses).
    pub fn panel(&self) -> &Panel {
        &self.panel
    }

    fn update(&self, change: impl FnOnce(&mut PanelFacts)) {
        let mut facts = self.facts.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut facts);
        self.panel.set_health(facts.health());
    }

    /// The node's own Node object changed.
    pub fn node_changed(&self, node: &serde_json::Value) {
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .map(|c| c["status"] == "True");
        self.update(|facts| facts.ready = ready);
    }

    /// The chaos hook killed (`true`) or revived the node.
    pub fn set_dead(&self, dead: bool) {
        self.update(|facts| {
            if dead && !facts.dead {
                self.panel.retain_lights(|_| false);
            } else if !dead && facts.dead {
                for (key, colour) in &facts.lights {
                    self.panel.set_light(key, *colour);
                }
            }
            facts.dead = dead;
        });
    }

    /// A watch event (`LISTING`, `ADDED`, `MODIFIED`, `DELETED`, `SYNCED`) for a pod bound here.
    pub fn pod_event(&self, event: Event<'_>) {
        self.update(|facts| match event {
            Event::Init => facts.listed = Some(Default::default()),
            Event::InitDone => {
                if let Some(listed) = facts.listed.take() {
                    facts.starting.retain(|k| listed.contains(k));
                    facts.lights.retain(|k, _| listed.contains(k));
                    self.panel.retain_lights(|k| listed.contains(k));
                }
            }
            Event::Delete(pod) => {
                let key = pod_key(pod);
                facts.starting.remove(&key);
                facts.lights.remove(&key);
                self.panel.remove_light(&key);
            }
            Event::InitApply(pod) | Event::Apply(pod) => {
                let key = pod_key(pod);
                let state = protocol::pod_view::pod_state(pod);
                let owner = protocol::pod_view::owner_of(pod);
                let app = protocol::pod_view::app_of(pod, &owner);
                if state.is_starting() {
                    facts.starting.insert(key.clone());
                } else {
                    facts.starting.remove(&key);
                }
                let colour = hardware::status::pod_colour(&app, state.light());
                if !facts.dead {
                    self.panel.set_light(&key, colour);
                }
                facts.lights.insert(key.clone(), colour);
                if let Some(listed) = &mut facts.listed {
                    listed.insert(key);
                }
            }
        });
    }
}

/// How a Node object looks on the master's strip.
pub fn node_health(node: &serde_json::Value) -> NodeHealth {
    if node["metadata"]["annotations"][protocol::chaos::CHAOS_ANNOTATION].is_string() {
        return NodeHealth::NotReady;
    }
    match protocol::node::readiness(node) {
        Readiness::Ready => NodeHealth::Ready,
        Readiness::NotReady => NodeHealth::NotReady,
        Readiness::Unknown => NodeHealth::Unknown,
    }
}

/// Shows a node watch event on the master's strip: one LED per node, in its health's colour.
/// `listed` collects the names of a fresh list, so nodes gone meanwhile go dark when it ends.
pub fn show_node_event(
    panel: &Panel,
    listed: &mut Option<std::collections::BTreeSet<String>>,
    event: Event<'_>,
) {
    let name = |node: &serde_json::Value| {
        node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    match event {
        Event::Init => *listed = Some(Default::default()),
        Event::InitDone => {
            if let Some(listed) = listed.take() {
                panel.retain_lights(|k| listed.contains(k));
            }
        }
        Event::Delete(node) => panel.remove_light(&name(node)),
        Event::InitApply(node) | Event::Apply(node) => {
            let name = name(node);
            panel.set_light(&name, hardware::status::node_colour(node_health(node)));
            if let Some(listed) = listed {
                listed.insert(name);
            }
        }
    }
}

/// The master's monkey button: each press starts or stops the chaos monkey (stopping revives
/// what it killed); the status LED blinks while the monkey runs. Returns when the panel stops.
pub async fn monkey_button<C: protocol::chaos::ChaosTarget>(
    target: Arc<C>,
    panel: &Panel,
    presses: &mut mpsc::UnboundedReceiver<ButtonPress>,
    policy: &protocol::chaos::MonkeyPolicy,
) {
    let mut monkey: Option<protocol::chaos::ChaosMonkey<C>> = None;
    let (events, mut monkey_events) = mpsc::unbounded_channel();
    loop {
        tokio::select! {
            press = presses.recv() => {
                let Some(press) = press else { break };
                if press.action != ButtonAction::Monkey {
                    tracing::warn!("the kill button works on a node's panel; ignored on the master");
                    continue;
                }
                match monkey.take() {
                    Some(running) => {
                        match running.stop().await {
                            Ok(revived) => tracing::info!(?revived, "chaos monkey stopped by the master's button"),
                            Err(error) => tracing::error!(error = %protocol::error::error_chain(&error), "chaos monkey stopped; a node could not be revived"),
                        }
                        panel.set_health(NodeHealth::Ready);
                    }
                    None => {
                        tracing::warn!(?policy, "chaos monkey started by the master's button");
                        monkey = Some(protocol::chaos::ChaosMonkey::start(target.clone(), policy.clone(), events.clone()));
                        panel.set_health(NodeHealth::Starting);
                    }
                }
            }
            Some(event) = monkey_events.recv() => tracing::info!(?event, "chaos monkey"),
        }
    }
    if let Some(running) = monkey {
        let _ = running.stop().await;
    }
}

/// Runs the master's panel until the task is dropped: one strip LED per node (green Ready,
/// red NotReady, amber unknown), the status LED steady while the master serves and blinking
/// while the chaos monkey runs, and the monkey button starting and stopping the monkey.
pub async fn run_master_panel(
    client: Arc<protocol::client::Client>,
    config: PanelConfig,
    policy: protocol::chaos::MonkeyPolicy,
) {
    let (panel, mut presses) = match Panel::start(&config) {
        Ok(Some(started)) => started,
        Ok(None) => return,
        Err(error) => {
            tracing::error!("{error}; the master runs without its LEDs and buttons");
            return;
        }
    };
    panel.set_health(NodeHealth::Ready);
    let mut listed = None;
    tokio::join!(
        monkey_button(client.clone(), &panel, &mut presses, &policy),
        client.follow("/api/v1/nodes", |event| {
            show_node_event(&panel, &mut listed, event)
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_and_print_back() {
        for text in ["17", "rgb:5,6,13"] {
            assert_eq!(text.parse::<StatusLedPins>().unwrap().to_string(), text);
        }
        assert_eq!("GPIO17".parse(), Ok(StatusLedPins::Single(17)));
        assert!("rgb:5,6"
            .parse::<StatusLedPins>()
            .unwrap_err()
            .contains("three pins"));
        assert!("40"
            .parse::<StatusLedPins>()
            .unwrap_err()
            .contains("BCM0-27"));
        for text in ["blinkt", "apa102:10,11,30"] {
            assert_eq!(text.parse::<StripPins>().unwrap().to_string(), text);
        }
        assert_eq!("apa102:23,24,8".parse(), Ok(StripPins::BLINKT));
        assert!("apa102:1,2"
            .parse::<StripPins>()
            .unwrap_err()
            .contains("apa102:DATA,CLOCK,LEDS"));
        assert!("apa102:1,2,0"
            .parse::<StripPins>()
            .unwrap_err()
            .contains("1 to 144"));
        assert_eq!(
            "monkey=22".parse(),
            Ok(ButtonPin {
                action: ButtonAction::Monkey,
                bcm: 22
            })
        );
        assert!("reboot=3"
            .parse::<ButtonPin>()
            .unwrap_err()
            .contains("kill or monkey"));
        assert!("27".parse::<ButtonPin>().unwrap_err().contains("kill=27"));
    }

    fn simulated_kit() -> PanelConfig {
        PanelConfig::node_kit(BackendChoice::Simulated)
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn no_backend_no_panel() {
        assert!(Panel::start(&PanelConfig::default()).unwrap().is_none());
    }

    #[test]
    fn the_simulated_kit_shows_health_and_pods_and_goes_dark_when_dropped() {
        let (panel, _presses) = Panel::start(&simulated_kit()).unwrap().unwrap();
        let gpio = panel.simulated.clone().unwrap();
        panel.set_health(NodeHealth::Ready);
        wait_for("the status LED", || gpio.level(17) == Some(true));
        let blue = Rgb::new(0, 0, 255);
        panel.set_light("default/web-1", blue);
        wait_for("the pod LED to settle", || {
            gpio.strip(24).first() == Some(&blue)
                && !panel.shared.state().strip.animating(Instant::now())
        });
        let view = panel.view();
        assert_eq!(view.backend, "simulated");
        let strip = view.strip.unwrap();
        assert_eq!(strip.leds[0], "#0000ff");
        assert_eq!(strip.showing[0].as_deref(), Some("default/web-1"));
        assert_eq!(view.status_led.unwrap().health, "ready");
        drop(panel);
        assert_eq!(gpio.level(17), Some(false));
        assert_eq!(gpio.strip(24), [Rgb::OFF; 8]);
    }

    #[tokio::test]
    async fn a_press_lights_the_panel_and_is_reported() {
        let (panel, mut presses) = Panel::start(&simulated_kit()).unwrap().unwrap();
        let gpio = panel.simulated.clone().unwrap();
        panel.set_health(NodeHealth::NotReady);
        gpio.press(27, true);
        // How fast is measured by `cargo run --release -p agent --example panel_bench`.
        wait_for("white feedback while the button is down", || {
            gpio.strip(24) == [Rgb::new(255, 255, 255); 8]
        });
        gpio.press(27, false);
        let press = tokio::time::timeout(Duration::from_secs(2), presses.recv()).await;
        assert_eq!(
            press.unwrap(),
            Some(ButtonPress {
                action: ButtonAction::Kill,
                long: false
            })
        );
        panel.press(27, Duration::from_secs(2)).await.unwrap();
        let press = tokio::time::timeout(Duration::from_secs(2), presses.recv()).await;
        assert_eq!(press.unwrap().map(|p| p.long), Some(true));
        assert!(panel
            .press(5, Duration::ZERO)
            .await
            .unwrap_err()
            .contains("no button on BCM5"));
    }

    #[test]
    fn a_pin_in_use_takes_out_only_its_part() {
        let mut config = simulated_kit();
        config.status_led = Some(StatusLedPins::Single(24));
        let (panel, _presses) = Panel::start(&config).unwrap().unwrap();
        let view = panel.view();
        assert!(view.status_led.is_some());
        assert!(view.strip.is_none());
        assert_eq!(view.buttons.len(), 1);
        assert_eq!(view.problems.len(), 1);
        assert!(
            view.problems[0].starts_with("LED strip: GPIO pin BCM24: already in use"),
            "{:?}",
            view.problems
        );
    }

    #[test]
    fn a_missing_chip_is_named() {
        let mut config = simulated_kit();
        config.backend = BackendChoice::Chip(Some("/dev/gpiochip-none".into()));
        let error = Panel::start(&config).unwrap_err();
        assert!(error.to_string().contains("/dev/gpiochip-none"), "{error}");
    }

    fn pod(name: &str, app: &str, phase: &str, ready: bool) -> serde_json::Value {
        serde_json::json!({
            "metadata": {"namespace": "default", "name": name, "labels": {"app": app}},
            "spec": {"nodeName": "pi-1"},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        })
    }

    #[test]
    fn a_node_panel_follows_health_pods_and_the_chaos_hook() {
        let (panel, _presses) = Panel::start(&simulated_kit()).unwrap().unwrap();
        let gpio = panel.simulated.clone().unwrap();
        let node = NodePanel::new(panel);
        let health = |node: &NodePanel| node.panel().view().status_led.unwrap().health;
        wait_for("unknown at first", || health(&node) == "unknown");
        node.node_changed(
            &serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        );
        node.pod_event(Event::Apply(&pod("web-1", "web", "Pending", false)));
        wait_for("starting while a pod starts", || {
            health(&node) == "starting"
        });
        let web = hardware::status::app_colour("web");
        node.pod_event(Event::Apply(&pod("web-1", "web", "Running", true)));
        node.pod_event(Event::Apply(&pod("db-1", "cache", "Running", true)));
        let db = hardware::status::app_colour("cache");
        assert_ne!(web, db);
        wait_for("ready, two pods lit", || {
            health(&node) == "ready" && gpio.strip(24)[..2] == [web, db]
        });
        node.set_dead(true);
        wait_for("dark and red when killed", || {
            health(&node) == "notready" && gpio.strip(24) == [Rgb::OFF; 8]
        });
        node.pod_event(Event::Delete(&pod("db-1", "cache", "Running", true)));
        node.set_dead(false);
        wait_for("the remaining pod back on revival", || {
            gpio.strip(24)[0] == web && gpio.strip(24)[1..] == [Rgb::OFF; 7]
        });
    }

    fn node(name: &str, ready: &str) -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": ready}]},
        })
    }

    #[test]
    fn the_master_strip_has_one_led_per_node() {
        let (panel, _presses) = Panel::start(&simulated_kit()).unwrap().unwrap();
        let gpio = panel.simulated.clone().unwrap();
        let mut listed = None;
        show_node_event(&panel, &mut listed, Event::Init);
        for (name, ready) in [
            ("pi-1", "True"),
            ("pi-2", "False"),
            ("pi-3", "Unknown"),
            ("pi-4", "True"),
        ] {
            show_node_event(&panel, &mut listed, Event::InitApply(&node(name, ready)));
        }
        show_node_event(&panel, &mut listed, Event::InitDone);
        let (green, red, amber) = (Rgb::GREEN, Rgb::RED, Rgb::AMBER);
        wait_for("the nodes' colours", || {
            gpio.strip(24).get(..4) == Some(&[green, red, amber, green][..])
        });
        show_node_event(&panel, &mut listed, Event::Init);
        show_node_event(&panel, &mut listed, Event::InitApply(&node("pi-1", "True")));
        show_node_event(&panel, &mut listed, Event::InitDone);
        wait_for("nodes gone from a fresh list going dark", || {
            gpio.strip(24)
                == [
                    green,
                    Rgb::OFF,
                    Rgb::OFF,
                    Rgb::OFF,
                    Rgb::OFF,
                    Rgb::OFF,
                    Rgb::OFF,
                    Rgb::OFF,
                ]
        });
    }

    /// Three Ready nodes; remembers what the monkey did to them.
    #[derive(Default)]
    struct Nodes(Mutex<Vec<(String, bool)>>);

    impl protocol::chaos::ChaosTarget for Nodes {
        async fn nodes(
            &self,
            _selector: Option<&str>,
        ) -> Result<Vec<serde_json::Value>, protocol::client::ClientError> {
            Ok(["pi-1", "pi-2", "pi-3"].map(|n| node(n, "True")).to_vec())
        }

        async fn set_alive(
            &self,
            node: &str,
            alive: bool,
        ) -> Result<(), protocol::chaos::ChaosError> {
            self.0.lock().unwrap().push((node.to_owned(), alive));
            Ok(())
        }

        fn master_host(&self) -> String {
            "10.0.0.1".into()
        }
    }

    #[tokio::test]
    async fn the_monkey_button_starts_and_stops_the_monkey() {
        let mut config = simulated_kit();
        config.buttons = vec![ButtonPin {
            action: ButtonAction::Monkey,
            bcm: 22,
        }];
        let (panel, mut presses) = Panel::start(&config).unwrap().unwrap();
        let target = Arc::new(Nodes::default());
        let policy = protocol::chaos::MonkeyPolicy {
            min_ready: 1,
            ..Default::default()
        };
        let health = |panel: &Panel| panel.view().status_led.unwrap().health;
        let pressing = async {
            panel.press(22, Duration::from_millis(50)).await.unwrap();
            wait_for_async("the monkey to kill a node", || {
                !target.0.lock().unwrap().is_empty()
            })
            .await;
            wait_for_async("a blinking status LED", || health(&panel) == "starting").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            panel.press(22, Duration::from_millis(50)).await.unwrap();
            wait_for_async("the monkey to revive its victim", || {
                target.0.lock().unwrap().len() == 2
            })
            .await;
            wait_for_async("a steady status LED", || health(&panel) == "ready").await;
        };
        tokio::select! {
            _ = monkey_button(target.clone(), &panel, &mut presses, &policy) => panic!("the button loop ended"),
            _ = pressing => {}
        }
        let done = target.0.lock().unwrap().clone();
        assert_eq!(done[0].0, done[1].0);
        assert_eq!((done[0].1, done[1].1), (false, true));
    }

    async fn wait_for_async(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
