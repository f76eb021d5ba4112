//! A node's status LED on output pins: one plain LED, or an RGB LED with a pin per colour.
//!
//! The pattern comes from [`crate::status::node_signal`]; the driver only decides, at a given
//! moment of the pattern, which pins are high. An RGB LED on plain pins has no brightness
//! control, so each channel is on when it is at least half lit (amber shows as yellow).

use embedded_hal::digital::OutputPin;

use crate::status::NodeSignal;

/// A status LED: one pin, or red, green and blue pins.
#[derive(Debug)]
pub enum StatusLed<Pin> {
    /// One LED: lit or dark.
    Single(Pin),
    /// An RGB LED (common cathode: high lights a colour).
    Rgb {
        /// Red.
        red: Pin,
        /// Green.
        green: Pin,
        /// Blue.
        blue: Pin,
    },
}

impl<Pin: OutputPin> StatusLed<Pin> {
    /// Shows `signal` as it is `millis` milliseconds into its blink pattern.
    pub fn show(&mut self, signal: NodeSignal, millis: u64) -> Result<(), Pin::Error> {
        let lit = signal.blink.lit_at(millis);
        match self {
            StatusLed::Single(pin) => pin.set_state(lit.into()),
            StatusLed::Rgb { red, green, blue } => {
                let channel = |value: u8| (lit && value >= 128).into();
                red.set_state(channel(signal.colour.r))?;
                green.set_state(channel(signal.colour.g))?;
                blue.set_state(channel(signal.colour.b))
            }
        }
    }

    /// Turns the LED off (the agent is stopping).
    pub fn off(&mut self) -> Result<(), Pin::Error> {
        match self {
            StatusLed::Single(pin) => pin.set_low(),
            StatusLed::Rgb { red, green, blue } => {
                red.set_low()?;
                green.set_low()?;
                blue.set_low()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction};

    use super::*;
    use crate::status::{node_signal, NodeHealth};

    #[test]
    fn a_single_led_blinks_fast_when_not_ready() {
        let set = |state| Transaction::set(state);
        let mut led = StatusLed::Single(PinMock::new(&[
            set(State::High),
            set(State::Low),
            set(State::High),
            set(State::High),
            set(State::Low),
        ]));
        let not_ready = node_signal(NodeHealth::NotReady);
        led.show(not_ready, 0).unwrap();
        led.show(not_ready, 130).unwrap();
        led.show(not_ready, 250).unwrap();
        led.show(node_signal(NodeHealth::Ready), 130).unwrap();
        led.off().unwrap();
        let StatusLed::Single(mut pin) = led else {
            unreachable!()
        };
        pin.done();
    }

    #[test]
    fn an_rgb_led_shows_green_red_and_amber() {
        let set = |state| Transaction::set(state);
        use State::{High, Low};
        // Ready: green; NotReady (lit phase): red; Unknown (lit phase): amber = red + green.
        let mut led = StatusLed::Rgb {
            red: PinMock::new(&[set(Low), set(High), set(High)]),
            green: PinMock::new(&[set(High), set(Low), set(High)]),
            blue: PinMock::new(&[set(Low), set(Low), set(Low)]),
        };
        led.show(node_signal(NodeHealth::Ready), 0).unwrap();
        led.show(node_signal(NodeHealth::NotReady), 0).unwrap();
        led.show(node_signal(NodeHealth::Unknown), 0).unwrap();
        let StatusLed::Rgb {
            mut red,
            mut green,
            mut blue,
        } = led
        else {
            unreachable!()
        };
        red.done();
        green.done();
        blue.done();
    }
}
