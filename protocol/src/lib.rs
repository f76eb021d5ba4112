//! What bramble's parts agree on: the master, the agents, the simulated nodes and the dashboard
//! all speak the Kubernetes API through this crate's client, read objects with its selectors,
//! quantities and node and pod facts, and join and kill nodes through its protocols.
//!
//! Nothing here touches SQLite, containers or the terminal: a crate that needs only the API
//! (the dashboard) depends on this one and not on the master or the agent.
#![deny(missing_docs)]

pub mod address_pool;
pub mod chaos;
pub mod client;
pub mod command_line;
pub mod error;
pub mod join;
pub mod node;
pub mod pod_view;
pub mod quantity;
pub mod query;
pub mod selector;
