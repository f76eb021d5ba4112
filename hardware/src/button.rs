//! Push buttons: debouncing, short and long presses, on any embedded-hal input pin.
//!
//! The debouncer acts on the first edge and then ignores the pin for the lockout time (200 ms
//! by default), so the presenter gets feedback at once while contact bounce is filtered:
//!
//! ```text
//!   released ──edge──► Down (feedback now) ──released before long_press──► Press
//!                        │
//!                        └──still held at long_press──► LongPress (its release says nothing)
//!   any accepted edge starts the lockout: edges within it are bounce
//! ```

use std::time::{Duration, Instant};

use embedded_hal::digital::InputPin;

/// What a button did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonEvent {
    /// It went down (show something now: the action follows on release or hold).
    Down,
    /// It was pressed and released before the long-press time.
    Press,
    /// It has been held for the long-press time.
    LongPress,
}

/// Turns pin readings into button events.
#[derive(Debug, Clone)]
pub struct Debouncer {
    lockout: Duration,
    long_press: Duration,
    pressed: bool,
    changed_at: Option<Instant>,
    long_sent: bool,
}

impl Default for Debouncer {
    fn default() -> Self {
        Debouncer::new(Duration::from_millis(200), Duration::from_millis(1500))
    }
}

impl Debouncer {
    /// A debouncer that ignores edges for `lockout` after each accepted one and calls a press
    /// held for `long_press` a long press.
    pub fn new(lockout: Duration, long_press: Duration) -> Self {
        Debouncer {
            lockout,
            long_press,
            pressed: false,
            changed_at: None,
            long_sent: false,
        }
    }

    /// Takes one reading (`pressed` or not) at `now`; readings must come in time order.
    pub fn update(&mut self, pressed: bool, now: Instant) -> Option<ButtonEvent> {
        let settled = self
            .changed_at
            .is_none_or(|at| now.saturating_duration_since(at) >= self.lockout);
        if pressed != self.pressed && settled {
            self.pressed = pressed;
            self.changed_at = Some(now);
            if pressed {
                self.long_sent = false;
                return Some(ButtonEvent::Down);
            }
            return (!self.long_sent).then_some(ButtonEvent::Press);
        }
        let held = self
            .changed_at
            .is_some_and(|at| now.saturating_duration_since(at) >= self.long_press);
        if self.pressed && held && !self.long_sent {
            self.long_sent = true;
            return Some(ButtonEvent::LongPress);
        }
        None
    }
}

/// A button on an input pin, pressed when the pin reads low (to ground, with a pull-up), as
/// buttons are usually wired on a Pi.
#[derive(Debug)]
pub struct Button<Pin> {
    pin: Pin,
    debouncer: Debouncer,
}

impl<Pin: InputPin> Button<Pin> {
    /// A button on `pin`.
    pub fn new(pin: Pin, debouncer: Debouncer) -> Self {
        Button { pin, debouncer }
    }

    /// Reads the pin once (call every 10-20 ms).
    pub fn poll(&mut self, now: Instant) -> Result<Option<ButtonEvent>, Pin::Error> {
        let pressed = self.pin.is_low()?;
        Ok(self.debouncer.update(pressed, now))
    }

    /// Gives the pin back.
    pub fn release(self) -> Pin {
        self.pin
    }
}

#[cfg(test)]
mod tests {
    use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction};

    use super::*;

    /// Feeds (milliseconds, pressed) readings; returns the events with their times.
    fn run(readings: &[(u64, bool)]) -> Vec<(u64, ButtonEvent)> {
        let start = Instant::now();
        let mut debouncer = Debouncer::default();
        readings
            .iter()
            .filter_map(|&(ms, pressed)| {
                let event = debouncer.update(pressed, start + Duration::from_millis(ms));
                event.map(|e| (ms, e))
            })
            .collect()
    }

    #[test]
    fn a_bouncy_press_is_one_press() {
        let readings = [
            (0, false),
            (10, true),
            (12, false), // bounce
            (14, true),
            (16, false),
            (30, true),
            (150, true),
            (240, false), // released
            (243, true),  // bounce on release, inside the lockout
            (250, false),
            (500, false),
        ];
        assert_eq!(
            run(&readings),
            [(10, ButtonEvent::Down), (240, ButtonEvent::Press)]
        );
    }

    #[test]
    fn feedback_comes_on_the_first_edge() {
        assert_eq!(run(&[(0, false), (5, true)]), [(5, ButtonEvent::Down)]);
    }

    #[test]
    fn a_held_button_is_a_long_press_once() {
        let mut readings: Vec<(u64, bool)> = (0..=200).map(|i| (i * 10, true)).collect();
        readings.push((2100, false));
        readings.push((2500, false));
        assert_eq!(
            run(&readings),
            [(0, ButtonEvent::Down), (1500, ButtonEvent::LongPress)]
        );
    }

    #[test]
    fn a_tap_shorter_than_the_lockout_still_counts() {
        // Released at 80 ms, seen as released once the lockout is over.
        let readings = [
            (0, true),
            (80, false),
            (120, false),
            (200, false),
            (220, false),
        ];
        assert_eq!(
            run(&readings),
            [(0, ButtonEvent::Down), (200, ButtonEvent::Press)]
        );
    }

    #[test]
    fn buttons_read_their_pin_active_low() {
        let pin = PinMock::new(&[
            Transaction::get(State::High),
            Transaction::get(State::Low),
            Transaction::get(State::Low),
            Transaction::get(State::High),
        ]);
        let start = Instant::now();
        let mut button = Button::new(pin, Debouncer::default());
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(button.poll(at(0)), Ok(None));
        assert_eq!(button.poll(at(20)), Ok(Some(ButtonEvent::Down)));
        assert_eq!(button.poll(at(40)), Ok(None));
        assert_eq!(button.poll(at(300)), Ok(Some(ButtonEvent::Press)));
        button.release().done();
    }
}
