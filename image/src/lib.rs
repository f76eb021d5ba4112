//! The flashable SD-card image builder.
//!
//! Not built yet: this crate only marks where that part will live.
