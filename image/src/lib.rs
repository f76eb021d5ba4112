//! The flashable SD-card image: its first-boot configuration (`bramble.toml`), the builder,
//! the init that boots a Pi into the cluster, and the card writer.

pub mod boot;
pub mod build;
pub mod config;
pub mod cpio;
pub mod debian;
pub mod elf;
pub mod flash;
pub mod mbr;
pub mod tree;
