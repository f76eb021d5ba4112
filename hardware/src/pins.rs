//! Where the LEDs are wired, as people write it on a command line or in bramble.toml:
//! BCM pin numbers, an RGB status LED, an APA102 strip such as the Blinkt!.

use std::fmt;
use std::str::FromStr;

/// The strip's brightness (0-31): bright enough for a stage, not blinding up close.
pub const DEFAULT_BRIGHTNESS: u8 = 8;

/// The status LED's pins: one LED, or an RGB LED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusLedPins {
    /// One LED on this BCM pin.
    Single(u8),
    /// An RGB LED, a BCM pin per colour.
    Rgb {
        /// Red.
        red: u8,
        /// Green.
        green: u8,
        /// Blue.
        blue: u8,
    },
}

/// A BCM pin number on the 40-pin header, written `17`, `BCM17` or `GPIO17`.
pub fn bcm(text: &str) -> Result<u8, String> {
    let pin: u8 = text
        .trim()
        .trim_start_matches("BCM")
        .trim_start_matches("GPIO")
        .parse()
        .map_err(|_| format!("{text:?} is not a BCM pin number"))?;
    if pin > 27 {
        return Err(format!("BCM{pin} is not on the 40-pin header (BCM0-27)"));
    }
    Ok(pin)
}

impl FromStr for StatusLedPins {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.strip_prefix("rgb:") {
            Some(pins) => match pins.split(',').map(bcm).collect::<Result<Vec<_>, _>>()?[..] {
                [red, green, blue] => Ok(StatusLedPins::Rgb { red, green, blue }),
                _ => Err(format!(
                    "{text:?}: an RGB LED needs three pins, rgb:RED,GREEN,BLUE"
                )),
            },
            None => bcm(text).map(StatusLedPins::Single),
        }
    }
}

impl fmt::Display for StatusLedPins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusLedPins::Single(pin) => write!(f, "{pin}"),
            StatusLedPins::Rgb { red, green, blue } => write!(f, "rgb:{red},{green},{blue}"),
        }
    }
}

/// An APA102 strip's pins and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripPins {
    /// Data pin (BCM).
    pub data: u8,
    /// Clock pin (BCM).
    pub clock: u8,
    /// LEDs on the strip.
    pub len: usize,
}

impl StripPins {
    /// A Pimoroni Blinkt!: 8 LEDs, data on BCM23, clock on BCM24.
    pub const BLINKT: StripPins = StripPins {
        data: 23,
        clock: 24,
        len: 8,
    };
}

impl FromStr for StripPins {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "blinkt" {
            return Ok(StripPins::BLINKT);
        }
        let usage = || format!("{text:?}: use blinkt, or apa102:DATA,CLOCK,LEDS (BCM pins)");
        let fields: Vec<&str> = text
            .strip_prefix("apa102:")
            .ok_or_else(usage)?
            .split(',')
            .collect();
        let [data, clock, len] = fields[..] else {
            return Err(usage());
        };
        let len: usize = len.trim().parse().map_err(|_| usage())?;
        if !(1..=144).contains(&len) {
            return Err(format!("{text:?}: a strip has 1 to 144 LEDs"));
        }
        Ok(StripPins {
            data: bcm(data)?,
            clock: bcm(clock)?,
            len,
        })
    }
}

impl fmt::Display for StripPins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == StripPins::BLINKT {
            return f.write_str("blinkt");
        }
        write!(f, "apa102:{},{},{}", self.data, self.clock, self.len)
    }
}
