//! LEDs and buttons on GPIO behind embedded-hal traits, with rppal, GPIO character device and simulated backends.
//!
//! What the lights mean ([`status`]: patterns and colours, which the dashboard also shows as
//! virtual LEDs), and drivers written against embedded-hal 1.0 traits: APA102 strips such as
//! the Blinkt! ([`apa102`]), the node's status LED ([`led`]) and debounced buttons
//! ([`button`]); and a simulated GPIO header ([`simulated`]) whose pins, APA102 colours and
//! buttons can be read and pressed. The rppal and GPIO character device backends and the
//! agent's use of all this are not built yet.
#![deny(missing_docs)]

pub mod apa102;
pub mod button;
pub mod led;
pub mod simulated;
pub mod status;
