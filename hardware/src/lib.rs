//! LEDs and buttons on GPIO behind embedded-hal traits, with rppal, GPIO character device and simulated backends.
//!
//! Not built yet: this crate only marks where that part will live.
