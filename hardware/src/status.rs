//! What the LEDs show: a node's status pattern and a pod's colour, the same on a Pi's GPIO and in the dashboard.
//!
//! Everything here is a pure function of the cluster's state and the clock, so the GPIO
//! drivers and the dashboard's virtual LEDs cannot disagree about what a node or a pod looks
//! like. A pod's colour comes from its app name through a fixed hash, so the audience sees the
//! same colour on every Pi's LEDs and on the projector.

/// The colour of one RGB LED, full brightness 255 per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rgb {
    /// Red.
    pub r: u8,
    /// Green.
    pub g: u8,
    /// Blue.
    pub b: u8,
}

impl Rgb {
    /// An LED that is off.
    pub const OFF: Rgb = Rgb::new(0, 0, 0);
    /// Failing pods, dead nodes.
    pub const RED: Rgb = Rgb::new(255, 0, 0);
    /// Ready nodes.
    pub const GREEN: Rgb = Rgb::new(0, 220, 0);
    /// Nodes nobody has heard from yet.
    pub const AMBER: Rgb = Rgb::new(255, 140, 0);

    /// A colour from its channels.
    pub const fn new(r: u8, g: u8, b: u8) -> Rgb {
        Rgb { r, g, b }
    }

    /// The same hue at a quarter of the brightness (pending pods).
    pub fn dimmed(self) -> Rgb {
        Rgb::new(self.r / 4, self.g / 4, self.b / 4)
    }
}

/// Hues told apart on an APA102 LED and on a projector; none is red, which means "failing".
const APP_COLOURS: [Rgb; 10] = [
    Rgb::new(255, 120, 0),   // orange
    Rgb::new(255, 220, 0),   // yellow
    Rgb::new(140, 255, 0),   // lime
    Rgb::new(0, 200, 60),    // green
    Rgb::new(0, 220, 180),   // teal
    Rgb::new(0, 200, 255),   // sky
    Rgb::new(40, 90, 255),   // blue
    Rgb::new(140, 60, 255),  // violet
    Rgb::new(255, 0, 200),   // magenta
    Rgb::new(255, 130, 170), // pink
];

/// The stable colour of an app (or owner) name: the same name gets the same colour on every
/// Pi and in the dashboard, run after run.
pub fn app_colour(app: &str) -> Rgb {
    // FNV-1a: tiny, stable across releases and platforms (std's hasher is neither).
    let hash = app.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    APP_COLOURS[(hash % APP_COLOURS.len() as u64) as usize]
}

/// How a pod looks on its LED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodLight {
    /// Not running yet (scheduled, pulling, creating): the app colour, dim.
    Pending,
    /// Running: the app colour.
    Running,
    /// Crash-looping, failed or unable to start: red.
    Failing,
}

/// The colour of a pod's LED.
pub fn pod_colour(app: &str, light: PodLight) -> Rgb {
    match light {
        PodLight::Pending => app_colour(app).dimmed(),
        PodLight::Running => app_colour(app),
        PodLight::Failing => Rgb::RED,
    }
}

/// How a node is doing, as far as its status LED is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeHealth {
    /// Ready, and every pod on it has started.
    Ready,
    /// Ready, with pods still starting.
    Starting,
    /// The master marked it NotReady, or it was killed on purpose.
    NotReady,
    /// Nothing heard yet (a node that just registered; a master that does not answer).
    Unknown,
    /// The agent is not running.
    Stopped,
}

/// How an LED blinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blink {
    /// Dark.
    Off,
    /// Lit all the time.
    Steady,
    /// 1 Hz, half on.
    Slow,
    /// 4 Hz, half on.
    Fast,
}

impl Blink {
    /// Whether the LED is lit `millis` milliseconds into the pattern.
    pub fn lit_at(self, millis: u64) -> bool {
        match self {
            Blink::Off => false,
            Blink::Steady => true,
            Blink::Slow => millis % 1000 < 500,
            Blink::Fast => millis % 250 < 125,
        }
    }
}

/// What a node's status LED shows: its pattern and, on an RGB LED, its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSignal {
    /// The blink pattern (a single-colour LED shows only this).
    pub blink: Blink,
    /// The colour while lit.
    pub colour: Rgb,
}

/// The status LED of a node: steady when Ready, blinking while pods start, fast and red
/// when NotReady, slow amber when unknown, off when the agent stops.
pub fn node_signal(health: NodeHealth) -> NodeSignal {
    let (blink, colour) = match health {
        NodeHealth::Ready => (Blink::Steady, Rgb::GREEN),
        NodeHealth::Starting => (Blink::Slow, Rgb::GREEN),
        NodeHealth::NotReady => (Blink::Fast, Rgb::RED),
        NodeHealth::Unknown => (Blink::Slow, Rgb::AMBER),
        NodeHealth::Stopped => (Blink::Off, Rgb::OFF),
    };
    NodeSignal { blink, colour }
}

/// One LED per node on the master's strip: green Ready, red NotReady, amber unknown.
pub fn node_colour(health: NodeHealth) -> Rgb {
    match health {
        NodeHealth::Ready | NodeHealth::Starting => Rgb::GREEN,
        NodeHealth::NotReady | NodeHealth::Stopped => Rgb::RED,
        NodeHealth::Unknown => Rgb::AMBER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_colours_are_stable_and_never_red() {
        assert_eq!(app_colour("web"), app_colour("web"));
        // Pinned: a release must not repaint everybody's demo.
        assert_eq!(app_colour("web"), Rgb::new(255, 220, 0));
        let names = [
            "web", "db", "cache", "hello", "api", "queue", "worker", "front",
        ];
        let distinct: std::collections::HashSet<_> = names.iter().map(|n| app_colour(n)).collect();
        assert!(
            distinct.len() >= 5,
            "8 names got only {} colours",
            distinct.len()
        );
        assert!(names.iter().all(|n| app_colour(n) != Rgb::RED));
    }

    #[test]
    fn pods_are_dim_while_pending_and_red_when_failing() {
        let colour = app_colour("web");
        assert_eq!(pod_colour("web", PodLight::Running), colour);
        assert_eq!(
            pod_colour("web", PodLight::Pending),
            Rgb::new(colour.r / 4, colour.g / 4, colour.b / 4)
        );
        assert_eq!(pod_colour("web", PodLight::Failing), Rgb::RED);
    }

    #[test]
    fn node_patterns() {
        assert_eq!(node_signal(NodeHealth::Ready).blink, Blink::Steady);
        assert_eq!(node_signal(NodeHealth::Starting).blink, Blink::Slow);
        assert_eq!(
            node_signal(NodeHealth::NotReady),
            NodeSignal {
                blink: Blink::Fast,
                colour: Rgb::RED
            }
        );
        assert_eq!(node_signal(NodeHealth::Stopped).blink, Blink::Off);
        let lit: Vec<bool> = (0..8).map(|i| Blink::Fast.lit_at(i * 63)).collect();
        assert_eq!(lit, [true, true, false, false, true, true, false, false]);
        assert!(Blink::Slow.lit_at(0) && !Blink::Slow.lit_at(500) && Blink::Slow.lit_at(1000));
        assert!(!Blink::Off.lit_at(0) && Blink::Steady.lit_at(123));
    }
}
