//! Running pods' containers on this node with youki's libcontainer: no container daemon, a
//! small monitor process per container.

pub mod containers;
pub mod exec;
pub mod executor;
pub mod monitor;
pub mod sandbox;
pub mod spec;
pub mod userns;
