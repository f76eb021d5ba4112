//! The node agent: registration, heartbeats, pods on youki's libcontainer, images, pod networking, service proxy, logs and exec, chaos hooks.
//!
//! Not built yet: this crate only marks where that part will live.
