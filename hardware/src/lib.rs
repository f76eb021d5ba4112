//! LEDs and buttons on GPIO behind embedded-hal traits, with rppal, GPIO character device and simulated backends.
//!
//! What the lights mean ([`status`]: patterns and colours, which the dashboard also shows as
//! virtual LEDs), and drivers written against embedded-hal 1.0 traits: APA102 strips such as
//! the Blinkt! ([`apa102`]), the node's status LED ([`led`]) and debounced buttons
//! ([`button`]). The GPIO backends (rppal, the Linux GPIO character device, simulated) and the
//! agent's use of them are not built yet.
#![deny(missing_docs)]

pub mod apa102;
pub mod button;
pub mod led;
pub mod status;
