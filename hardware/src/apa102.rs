//! APA102 LED strips (a Pimoroni Blinkt! is eight of them), bit-banged on two output pins.
//!
//! A frame is 32 zero bits, then per LED `0b111` and a 5-bit global brightness followed by
//! blue, green and red bytes, then zero bits so the last LED's data is clocked through (each
//! LED delays the clock by half a cycle: at least one bit per two LEDs, here whole bytes and
//! never fewer than 32 bits). Bits go out most significant first; the LED samples data on the
//! clock's rising edge. On a Blinkt! data is BCM23 and clock BCM24.

use embedded_hal::digital::OutputPin;

use crate::status::Rgb;

/// The brightest the 5-bit brightness field goes.
pub const MAX_BRIGHTNESS: u8 = 31;

/// The bytes of one frame for `colours` at `brightness` (0-31).
pub fn frame(colours: &[Rgb], brightness: u8) -> Vec<u8> {
    let brightness = brightness.min(MAX_BRIGHTNESS);
    let end_bytes = colours.len().div_ceil(16).max(4);
    let mut bytes = Vec::with_capacity(4 + colours.len() * 4 + end_bytes);
    bytes.extend([0; 4]);
    for colour in colours {
        bytes.extend([0b1110_0000 | brightness, colour.b, colour.g, colour.r]);
    }
    bytes.extend(std::iter::repeat_n(0, end_bytes));
    bytes
}

/// An APA102 strip on a data and a clock pin.
#[derive(Debug)]
pub struct Apa102<Data, Clock> {
    data: Data,
    clock: Clock,
    brightness: u8,
}

/// A pin refused a level change.
#[derive(Debug, PartialEq, Eq)]
pub enum PinError<DataError, ClockError> {
    /// The data pin.
    Data(DataError),
    /// The clock pin.
    Clock(ClockError),
}

impl<Data: OutputPin, Clock: OutputPin> Apa102<Data, Clock> {
    /// A strip on these pins, at `brightness` (0-31; a Blinkt! at 31 is too bright to look at).
    pub fn new(data: Data, clock: Clock, brightness: u8) -> Self {
        Apa102 {
            data,
            clock,
            brightness: brightness.min(MAX_BRIGHTNESS),
        }
    }

    /// Shows `colours`, one per LED from the one nearest the Pi.
    pub fn show(&mut self, colours: &[Rgb]) -> Result<(), PinError<Data::Error, Clock::Error>> {
        for byte in frame(colours, self.brightness) {
            for bit in (0..8).rev() {
                let level = byte >> bit & 1 == 1;
                self.data.set_state(level.into()).map_err(PinError::Data)?;
                self.clock.set_high().map_err(PinError::Clock)?;
                self.clock.set_low().map_err(PinError::Clock)?;
            }
        }
        Ok(())
    }

    /// Gives the pins back.
    pub fn release(self) -> (Data, Clock) {
        (self.data, self.clock)
    }
}

#[cfg(test)]
mod tests {
    use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction};

    use super::*;

    #[test]
    fn frames_are_start_leds_end() {
        let colours = [Rgb::new(255, 0, 0), Rgb::new(1, 2, 3)];
        assert_eq!(
            frame(&colours, 7),
            [
                0, 0, 0, 0, // start
                0xE7, 0x00, 0x00, 0xFF, // red: brightness 7, blue, green, red
                0xE7, 0x03, 0x02, 0x01, // blue 3, green 2, red 1
                0, 0, 0, 0, // end
            ]
        );
        // Brightness is capped; 40 LEDs need 3 end bytes, but never fewer than 4.
        assert_eq!(frame(&[Rgb::OFF], 99)[4], 0xFF);
        assert_eq!(frame(&[Rgb::OFF; 40], 1).len(), 4 + 160 + 4);
        assert_eq!(frame(&[Rgb::OFF; 100], 1).len(), 4 + 400 + 7);
    }

    /// The pin transactions that clock `bytes` out, bit by bit.
    fn transactions(bytes: &[u8]) -> (Vec<Transaction>, Vec<Transaction>) {
        let mut data = Vec::new();
        let mut clock = Vec::new();
        for byte in bytes {
            for bit in (0..8).rev() {
                let state = if byte >> bit & 1 == 1 {
                    State::High
                } else {
                    State::Low
                };
                data.push(Transaction::set(state));
                clock.push(Transaction::set(State::High));
                clock.push(Transaction::set(State::Low));
            }
        }
        (data, clock)
    }

    #[test]
    fn one_green_led_is_clocked_out_bit_by_bit() {
        // Written out by hand: start frame, 0b111_00001 then B=0, G=0x80, R=0, end frame.
        let (data, clock) = transactions(&[0, 0, 0, 0, 0b1110_0001, 0x00, 0x80, 0x00, 0, 0, 0, 0]);
        assert_eq!(data.len(), 96);
        assert_eq!(clock.len(), 192);
        // The brightness byte's first bits are ones, data high before the clock rises.
        assert!(data[32..35]
            .iter()
            .all(|t| *t == Transaction::set(State::High)));
        let mut strip = Apa102::new(PinMock::new(&data), PinMock::new(&clock), 1);
        strip.show(&[Rgb::new(0, 0x80, 0)]).unwrap();
        let (mut data, mut clock) = strip.release();
        data.done();
        clock.done();
    }

    #[test]
    fn a_failing_pin_is_reported() {
        let error = embedded_hal_mock::eh1::MockError::Io(std::io::ErrorKind::PermissionDenied);
        let data = [Transaction::set(State::Low).with_error(error.clone())];
        let mut strip = Apa102::new(PinMock::new(&data), PinMock::new(&[]), 31);
        assert_eq!(strip.show(&[Rgb::OFF]), Err(PinError::Data(error)));
        let (mut data, mut clock) = strip.release();
        data.done();
        clock.done();
    }
}
