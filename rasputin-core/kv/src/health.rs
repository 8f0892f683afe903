//! Whether a node is healthy, judged from its status alike by the daemon's
//! `/health` and by `rasputin health`.

use crate::wire::proto::NodeStatus;

/// Why the node behind `status` is not healthy, or None when it is: it
/// sees a leader that holds its lease, and it is neither joining nor
/// shutting down.
pub fn unhealthy_reason(status: &NodeStatus) -> Option<String> {
    if status.shutting_down {
        return Some("the node is shutting down".to_string());
    }
    if status.role == "joining" {
        return Some("the node is joining the cluster".to_string());
    }
    if status.leader_id == 0 {
        return Some(format!("no leader is known in term {}", status.term));
    }
    if !status.lease_held {
        return Some(if status.role == "leader" {
            "this node leads but holds no lease: a majority has not answered in time".to_string()
        } else {
            format!("the lease of leader {} has run out here", status.leader_id)
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_follower() -> NodeStatus {
        NodeStatus { role: "follower".into(), term: 3, leader_id: 1, lease_held: true, ..Default::default() }
    }

    #[test]
    fn health_needs_a_leased_leader_and_no_shutdown() {
        assert_eq!(unhealthy_reason(&healthy_follower()), None);
        let lapsed = NodeStatus { lease_held: false, ..healthy_follower() };
        assert!(unhealthy_reason(&lapsed).unwrap().contains("lease of leader 1"));
        let leading = NodeStatus { role: "leader".into(), lease_held: false, ..healthy_follower() };
        assert!(unhealthy_reason(&leading).unwrap().contains("holds no lease"));
        let leaderless = NodeStatus { leader_id: 0, lease_held: false, ..healthy_follower() };
        assert!(unhealthy_reason(&leaderless).unwrap().contains("no leader"));
        let stopping = NodeStatus { shutting_down: true, ..healthy_follower() };
        assert!(unhealthy_reason(&stopping).unwrap().contains("shutting down"));
        let joining = NodeStatus { role: "joining".into(), ..healthy_follower() };
        assert!(unhealthy_reason(&joining).unwrap().contains("joining"));
    }
}
