//! What a strip of LEDs shows over time: one LED per pod (or, on the master, per node) that
//! keeps its place, flashes when its thing appears, changes or goes, and then settles.
//!
//! ```text
//!   set(new key)      ─► first free LED, flashes in its colour for FLASH, then steady
//!   set(new colour)   ─► same LED, flashes in the new colour, then steady
//!   remove(key)       ─► flashes, then dark and free; the first waiting key takes it
//!   more keys than LEDs: the rest wait, in arrival order
//! ```

use std::time::{Duration, Instant};

use crate::status::Rgb;

/// How long an LED flashes after a change.
pub const FLASH: Duration = Duration::from_millis(1200);
/// Half a flash cycle: on this long, then off this long.
pub const FLASH_HALF_PERIOD: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
struct Light {
    key: String,
    colour: Rgb,
    flash_until: Option<Instant>,
    flash_from: Instant,
    leaving: bool,
}

impl Light {
    fn flash(&mut self, now: Instant) {
        self.flash_from = now;
        self.flash_until = Some(now + FLASH);
    }

    fn flashing(&self, now: Instant) -> bool {
        self.flash_until.is_some_and(|until| now < until)
    }

    fn colour_at(&self, now: Instant) -> Rgb {
        if !self.flashing(now) {
            return if self.leaving { Rgb::OFF } else { self.colour };
        }
        let phase = now.saturating_duration_since(self.flash_from).as_millis()
            / FLASH_HALF_PERIOD.as_millis();
        if phase.is_multiple_of(2) {
            self.colour
        } else {
            Rgb::OFF
        }
    }
}

/// The LEDs of one strip and what each stands for.
#[derive(Debug, Clone)]
pub struct StripLights {
    slots: Vec<Option<Light>>,
    waiting: Vec<Light>,
}

impl StripLights {
    /// A strip of `len` LEDs, all dark.
    pub fn new(len: usize) -> Self {
        StripLights {
            slots: vec![None; len],
            waiting: Vec::new(),
        }
    }

    fn find(&mut self, key: &str) -> Option<&mut Light> {
        self.slots
            .iter_mut()
            .flatten()
            .chain(self.waiting.iter_mut())
            .find(|light| light.key == key && !light.leaving)
    }

    /// Shows `key` in `colour`: a new key takes the first free LED, and a new key or a new
    /// colour flashes.
    pub fn set(&mut self, key: &str, colour: Rgb, now: Instant) {
        if let Some(light) = self.find(key) {
            if light.colour != colour {
                light.colour = colour;
                light.flash(now);
            }
            return;
        }
        let mut light = Light {
            key: key.to_owned(),
            colour,
            flash_until: None,
            flash_from: now,
            leaving: false,
        };
        light.flash(now);
        self.place(light);
    }

    fn place(&mut self, light: Light) {
        match self.slots.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(light),
            None => self.waiting.push(light),
        }
    }

    /// `key` is gone: its LED flashes, then goes dark and free.
    pub fn remove(&mut self, key: &str, now: Instant) {
        self.waiting.retain(|light| light.key != key);
        if let Some(light) = self.slots.iter_mut().flatten().find(|l| l.key == key) {
            light.leaving = true;
            light.flash(now);
        }
    }

    /// Removes every key `keep` says no to (a fresh list replaced what was known).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool, now: Instant) {
        let gone: Vec<String> = self
            .slots
            .iter()
            .flatten()
            .chain(&self.waiting)
            .filter(|light| !light.leaving && !keep(&light.key))
            .map(|light| light.key.clone())
            .collect();
        for key in gone {
            self.remove(&key, now);
        }
    }

    /// The colours to show at `now`, one per LED; LEDs whose flash-out has ended are freed for
    /// waiting keys.
    pub fn colours(&mut self, now: Instant) -> Vec<Rgb> {
        for slot in &mut self.slots {
            if slot
                .as_ref()
                .is_some_and(|light| light.leaving && !light.flashing(now))
            {
                *slot = None;
            }
        }
        while self.slots.iter().any(Option::is_none) && !self.waiting.is_empty() {
            let mut light = self.waiting.remove(0);
            light.flash(now);
            self.place(light);
        }
        self.slots
            .iter()
            .map(|slot| slot.as_ref().map_or(Rgb::OFF, |light| light.colour_at(now)))
            .collect()
    }

    /// Whether some LED is flashing (the strip must be redrawn as time passes).
    pub fn animating(&self, now: Instant) -> bool {
        self.slots.iter().flatten().any(|light| light.flashing(now))
    }

    /// The keys shown, LED by LED (`None` for a dark LED).
    pub fn keys(&self) -> Vec<Option<&str>> {
        self.slots
            .iter()
            .map(|slot| {
                slot.as_ref()
                    .filter(|light| !light.leaving)
                    .map(|light| light.key.as_str())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLUE: Rgb = Rgb::new(0, 0, 255);
    const GREEN: Rgb = Rgb::new(0, 255, 0);

    fn after(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn a_new_pod_flashes_then_stays_lit() {
        let start = Instant::now();
        let mut strip = StripLights::new(3);
        strip.set("web-1", BLUE, start);
        assert_eq!(strip.colours(start), [BLUE, Rgb::OFF, Rgb::OFF]);
        assert_eq!(strip.colours(after(start, 150)), [Rgb::OFF; 3]);
        assert_eq!(strip.colours(after(start, 250)), [BLUE, Rgb::OFF, Rgb::OFF]);
        assert!(strip.animating(after(start, 1100)));
        assert!(!strip.animating(after(start, 1300)));
        assert_eq!(
            strip.colours(after(start, 1350)),
            [BLUE, Rgb::OFF, Rgb::OFF]
        );
    }

    #[test]
    fn a_change_flashes_in_the_new_colour_and_the_same_colour_does_not() {
        let start = Instant::now();
        let mut strip = StripLights::new(2);
        strip.set("web-1", BLUE, start);
        let later = after(start, 5000);
        strip.set("web-1", BLUE, later);
        assert!(!strip.animating(later));
        strip.set("web-1", GREEN, later);
        assert!(strip.animating(later));
        assert_eq!(strip.colours(later)[0], GREEN);
        assert_eq!(strip.colours(after(later, 100))[0], Rgb::OFF);
    }

    #[test]
    fn a_deleted_pod_flashes_out_and_its_led_goes_to_a_waiting_pod() {
        let start = Instant::now();
        let mut strip = StripLights::new(2);
        strip.set("a", BLUE, start);
        strip.set("b", BLUE, start);
        strip.set("c", GREEN, start);
        assert_eq!(strip.keys(), [Some("a"), Some("b")]);
        let later = after(start, 5000);
        strip.remove("a", later);
        assert_eq!(strip.keys(), [None, Some("b")]);
        assert_eq!(strip.colours(later), [BLUE, BLUE]);
        assert_eq!(strip.colours(after(later, 100)), [Rgb::OFF, BLUE]);
        let gone = after(later, 1300);
        assert_eq!(strip.colours(gone), [GREEN, BLUE]);
        assert_eq!(strip.keys(), [Some("c"), Some("b")]);
        assert!(strip.animating(gone), "the newcomer flashes");
    }

    #[test]
    fn retain_removes_what_a_fresh_list_no_longer_has() {
        let start = Instant::now();
        let mut strip = StripLights::new(2);
        for key in ["a", "b", "c"] {
            strip.set(key, BLUE, start);
        }
        strip.retain(|key| key == "b", after(start, 10));
        assert_eq!(strip.keys(), [None, Some("b")]);
        let settled = after(start, 2000);
        assert_eq!(strip.colours(settled), [Rgb::OFF, BLUE]);
        assert_eq!(strip.keys(), [None, Some("b")]);
    }
}
