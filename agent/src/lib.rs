//! The node agent (`bramble agent`): joining, registration, heartbeats, pods on youki's
//! libcontainer, images, pod networking, logs and exec, usage, chaos hooks; and the simulated
//! nodes (`bramble sim`) that the controllers, the scheduler and the scale benchmarks run against;
//! and the local cluster of virtual Pis (`bramble up`) made of those agents.
#![deny(missing_docs)]

pub(crate) mod host_ports;
pub mod image;
pub mod join;
pub mod local_cluster;
pub mod mounts;
pub mod network;
pub mod node;
pub(crate) mod node_server;
pub mod panel;
pub(crate) mod pod_config;
pub(crate) mod pods;
pub(crate) mod projected;
pub(crate) mod reclaim;
pub mod runtime;
pub mod seccomp;
pub(crate) mod services;
pub mod sim;
pub(crate) mod usage;
pub(crate) mod volumes;
