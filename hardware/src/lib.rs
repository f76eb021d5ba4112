//! LEDs and buttons on GPIO behind embedded-hal traits, with rppal, GPIO character device and simulated backends.
//!
//! So far this crate holds what the lights mean ([`status`]): the patterns and colours that the
//! GPIO drivers will show and that the dashboard already shows as virtual LEDs.
#![deny(missing_docs)]

pub mod status;
