//! LEDs and buttons on GPIO behind embedded-hal traits, with GPIO character device, simulated
//! and (with the `rppal` feature) rppal backends.
//!
//! What the lights mean ([`status`]: patterns and colours, which the dashboard also shows as
//! virtual LEDs), and drivers written against embedded-hal 1.0 traits: APA102 strips such as
//! the Blinkt! ([`apa102`]), the node's status LED ([`led`]) and debounced buttons
//! ([`button`]); and a simulated GPIO header ([`simulated`]) whose pins, APA102 colours and
//! buttons can be read and pressed. [`backend`] opens pins on rppal, the GPIO character
//! device or the simulated header behind one pair of types; [`lights`] keeps a strip's LEDs
//! assigned to pods or nodes and flashing when they change.
#![deny(missing_docs)]

pub mod apa102;
pub mod backend;
pub mod button;
pub mod led;
pub mod lights;
pub mod pins;
pub mod simulated;
pub mod status;
