//! A GPIO header in memory, for machines without GPIO: the real drivers set its pins, and a
//! test, an API or the dashboard reads them and presses its buttons.
//!
//! Output pins keep their level. Input pins read high (a pull-up) until someone holds them
//! low, which is how a button press looks. A pair of pins can be watched as an APA102 strip:
//! the clock pin samples the data pin on each rising edge and decodes the frames, so the
//! colours shown come out of the same bit-banging a Blinkt! would receive.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use embedded_hal::digital::{ErrorType, InputPin, OutputPin, PinState};

use crate::status::Rgb;

/// The simulated header; clones share it.
#[derive(Debug, Clone, Default)]
pub struct SimulatedGpio {
    state: Arc<Mutex<Header>>,
}

#[derive(Debug, Default)]
struct Header {
    /// Pin levels by BCM number (true: high).
    levels: BTreeMap<u8, bool>,
    /// APA102 decoders by clock pin.
    strips: BTreeMap<u8, StripDecoder>,
}

/// One pin of the simulated header.
#[derive(Debug, Clone)]
pub struct SimulatedPin {
    gpio: SimulatedGpio,
    bcm: u8,
}

impl SimulatedGpio {
    fn header(&self) -> MutexGuard<'_, Header> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An output pin, low at first.
    pub fn output(&self, bcm: u8) -> SimulatedPin {
        self.header().levels.insert(bcm, false);
        SimulatedPin {
            gpio: self.clone(),
            bcm,
        }
    }

    /// An input pin with a pull-up: high until pressed.
    pub fn input(&self, bcm: u8) -> SimulatedPin {
        self.header().levels.entry(bcm).or_insert(true);
        SimulatedPin {
            gpio: self.clone(),
            bcm,
        }
    }

    /// Holds an input pin low (`true`: a button pressed) or lets it go.
    pub fn press(&self, bcm: u8, pressed: bool) {
        self.header().levels.insert(bcm, !pressed);
    }

    /// A pin's level, if the pin is in use.
    pub fn level(&self, bcm: u8) -> Option<bool> {
        self.header().levels.get(&bcm).copied()
    }

    /// Every pin in use and its level.
    pub fn levels(&self) -> BTreeMap<u8, bool> {
        self.header().levels.clone()
    }

    /// Decodes the APA102 frames clocked out on `clock` with data on `data`.
    pub fn watch_strip(&self, data: u8, clock: u8) {
        self.header().strips.insert(
            clock,
            StripDecoder {
                data,
                ..StripDecoder::default()
            },
        );
    }

    /// The colours of the last complete frame on the strip clocked by `clock`.
    pub fn strip(&self, clock: u8) -> Vec<Rgb> {
        self.header()
            .strips
            .get(&clock)
            .map(|strip| strip.shown.clone())
            .unwrap_or_default()
    }
}

impl ErrorType for SimulatedPin {
    type Error = Infallible;
}

impl OutputPin for SimulatedPin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.set_state(PinState::Low)
    }

    fn set_high(&mut self) -> Result<(), Infallible> {
        self.set_state(PinState::High)
    }

    fn set_state(&mut self, state: PinState) -> Result<(), Infallible> {
        let high = state == PinState::High;
        let mut header = self.gpio.header();
        let was_high = header.levels.insert(self.bcm, high).unwrap_or(false);
        if high && !was_high {
            let Header { levels, strips } = &mut *header;
            if let Some(strip) = strips.get_mut(&self.bcm) {
                let bit = levels.get(&strip.data).copied().unwrap_or(false);
                strip.clock_in(bit);
            }
        }
        Ok(())
    }
}

impl InputPin for SimulatedPin {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.gpio.level(self.bcm).unwrap_or(true))
    }

    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(!self.is_high()?)
    }
}

/// Reassembles APA102 frames from clocked bits.
#[derive(Debug, Default)]
struct StripDecoder {
    data: u8,
    byte: u8,
    bits: u8,
    /// Zero bytes in a row before the LEDs (a start frame is four).
    zeros: u8,
    /// The LED bytes of the frame being received.
    leds: Vec<u8>,
    /// The last complete frame.
    shown: Vec<Rgb>,
}

impl StripDecoder {
    fn clock_in(&mut self, bit: bool) {
        self.byte = self.byte << 1 | u8::from(bit);
        self.bits += 1;
        if self.bits == 8 {
            let byte = std::mem::take(&mut self.byte);
            self.bits = 0;
            self.take_byte(byte);
        }
    }

    fn take_byte(&mut self, byte: u8) {
        let at_led_start = self.leds.len().is_multiple_of(4);
        if self.zeros < 4 {
            self.zeros = if byte == 0 { self.zeros + 1 } else { 0 };
            return;
        }
        if at_led_start && byte & 0xE0 != 0xE0 {
            // The end frame: what came before is what the strip shows.
            if !self.leds.is_empty() {
                self.shown = self
                    .leds
                    .chunks(4)
                    .map(|led| Rgb::new(led[3], led[2], led[1]))
                    .collect();
                self.leds.clear();
            }
            self.zeros = u8::from(byte == 0);
            return;
        }
        self.leds.push(byte);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::apa102::Apa102;
    use crate::button::{Button, ButtonEvent, Debouncer};

    #[test]
    fn a_blinkt_on_simulated_pins_shows_what_was_sent() {
        let gpio = SimulatedGpio::default();
        gpio.watch_strip(23, 24);
        let mut strip = Apa102::new(gpio.output(23), gpio.output(24), 31);
        let first = [Rgb::new(255, 220, 0), Rgb::OFF, Rgb::RED];
        strip.show(&first).unwrap();
        assert_eq!(gpio.strip(24), first);
        let second = [Rgb::new(1, 2, 3); 8];
        strip.show(&second).unwrap();
        assert_eq!(gpio.strip(24), second);
        assert_eq!(gpio.strip(25), []);
    }

    #[test]
    fn pressing_a_simulated_button() {
        let gpio = SimulatedGpio::default();
        let mut button = Button::new(gpio.input(17), Debouncer::default());
        let start = Instant::now();
        assert_eq!(gpio.level(17), Some(true));
        assert_eq!(button.poll(start), Ok(None));
        gpio.press(17, true);
        assert_eq!(
            button.poll(start + Duration::from_millis(10)),
            Ok(Some(ButtonEvent::Down))
        );
        gpio.press(17, false);
        assert_eq!(
            button.poll(start + Duration::from_millis(300)),
            Ok(Some(ButtonEvent::Press))
        );
        assert_eq!(gpio.levels(), BTreeMap::from([(17, true)]));
    }
}
