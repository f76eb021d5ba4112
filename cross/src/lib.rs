//! Cross-compiling the static bramble binary for the Pi's targets.
//!
//! Not built yet: this crate only marks where that part will live.
