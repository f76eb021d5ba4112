//! The ratatui dashboard of pod placement with chaos controls.
//!
//! Not built yet: this crate only marks where that part will live.
