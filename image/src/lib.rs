//! The flashable SD-card image: its first-boot configuration (`bramble.toml`), the builder,
//! the init that boots a Pi into the cluster, and the card writer.

pub mod config;
