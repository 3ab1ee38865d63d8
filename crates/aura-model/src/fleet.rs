//! Fleet mode's shared vocabulary: a node as it registers (`NodeSpec`) and as every node sees it
//! (`NodeView`).

use crate::Timestamp;
use serde::{Deserialize, Serialize};

/// What a node offers: the figures its admission controller admits against.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeCapacity {
    /// CPUs jobs may reserve.
    pub cpus: f64,
    /// Memory jobs may reserve, bytes.
    pub memory_bytes: u64,
    /// GPUs it has.
    #[serde(default)]
    pub gpus: u32,
}

/// A node as it registers with the fleet's store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Stable identity: the data dir's instance id, so a restarted node is the same node.
    pub id: String,
    /// For people: `--node-name`, else the host name and the id's first characters.
    pub name: String,
    /// What jobs may ask for by label (`requires=gpu,nvenc`).
    pub tags: Vec<String>,
    /// Where its API answers other nodes (proxied logs and actions); `None`: not reachable.
    pub url: Option<String>,
    /// What it offers.
    pub capacity: NodeCapacity,
}

/// Whether a node holds its leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Heartbeating.
    Up,
    /// Missed its heartbeats for the timeout: its jobs were rescued; it must re-register.
    Dead,
    /// Shut down cleanly.
    Left,
}

impl NodeState {
    /// Its name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Dead => "dead",
            NodeState::Left => "left",
        }
    }
}

impl std::str::FromStr for NodeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "up" => Ok(NodeState::Up),
            "dead" => Ok(NodeState::Dead),
            "left" => Ok(NodeState::Left),
            other => Err(format!("unknown node state {other:?}")),
        }
    }
}

/// `GET /api/nodes`: one node of the fleet as every node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    /// Its stable identity (the data dir's instance id).
    pub id: String,
    /// For people.
    pub name: String,
    /// What jobs may require of it.
    pub tags: Vec<String>,
    /// Where its API answers other nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Up, dead (rescued) or left.
    pub state: NodeState,
    /// Bumped at every registration (start, or return after losing its leases).
    pub incarnation: i64,
    /// What it offers.
    pub capacity: NodeCapacity,
    /// Its jobs that run now (running, paused, stopping).
    pub running: u32,
    /// Jobs it claimed that have not started yet.
    pub claimed: u32,
    /// Milliseconds since its last heartbeat, by the store's clock.
    pub heartbeat_age_ms: u64,
    /// When this incarnation registered.
    pub registered_at: Timestamp,
    /// Whether this is the node that answered.
    #[serde(default)]
    pub this_node: bool,
}

/// The label that pins a job to nodes carrying every one of these tags: `requires=gpu,nvenc`.
pub const REQUIRES_LABEL: &str = "requires";

/// The tags a job's `requires` label asks for (comma-separated, trimmed, empty parts dropped, sorted,
/// deduplicated).
pub fn required_tags(labels: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut tags: Vec<String> = labels
        .get(REQUIRES_LABEL)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags.dedup();
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requires_label_reads_as_sorted_unique_tags() {
        let mut labels = std::collections::BTreeMap::new();
        assert!(required_tags(&labels).is_empty());
        labels.insert("requires".to_owned(), " nvenc, gpu,,gpu ".to_owned());
        assert_eq!(required_tags(&labels), vec!["gpu", "nvenc"]);
    }

    #[test]
    fn node_state_round_trips() {
        for s in [NodeState::Up, NodeState::Dead, NodeState::Left] {
            assert_eq!(s.as_str().parse::<NodeState>(), Ok(s));
        }
        assert!("gone".parse::<NodeState>().is_err());
    }
}

/// `GET /api/nodes`: the fleet as the answering node sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeList {
    /// Whether the daemon runs in fleet mode (a shared PostgreSQL store); `false`: a single node with
    /// its embedded SQLite store, and `nodes` is empty.
    pub fleet: bool,
    /// Every node the fleet knows, the answering one marked `this_node`; `up` first, then by name.
    #[serde(default)]
    pub nodes: Vec<NodeView>,
}
