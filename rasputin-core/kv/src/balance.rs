//! Leader balancing: which leadership transfers bring every node to within
//! one range of the others' leader counts. A pure policy, so that the
//! simulator and the daemon run the same one; they carry the transfers out
//! with Harpoon's leadership transfer.

use rasputin_consensus::NodeId;

use crate::range::RangeId;

/// Transfers one balancing round asks for at most: each holds writes of
/// its range for a moment, so a round moves a few leaderships, not all.
pub const BALANCE_TRANSFERS_PER_ROUND_MAX: usize = 4;

/// One range's leadership, as the balancer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub range: RangeId,
    pub leader: NodeId,
    pub replicas: Vec<NodeId>,
}

/// A transfer the balancer asks for: `range`'s leader hands over to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub range: RangeId,
    pub from: NodeId,
    pub to: NodeId,
}

/// The transfers, at most `BALANCE_TRANSFERS_PER_ROUND_MAX`, that move
/// leaderships from the nodes leading the most ranges to the replicas
/// leading the fewest, until no move would narrow the gap. A node that is
/// not in `nodes` (it is down, say) receives nothing, and a move goes only
/// to a replica of its range. The same input gives the same moves.
pub fn balancing_moves(leaderships: &[Leadership], nodes: &[NodeId]) -> Vec<Move> {
    let mut led: Vec<Leadership> = leaderships.to_vec();
    led.sort_by_key(|leadership| leadership.range);
    let mut moves = Vec::new();
    while moves.len() < BALANCE_TRANSFERS_PER_ROUND_MAX {
        let Some(found) = narrowing_move(&led, nodes) else { break };
        let leadership = led.iter_mut().find(|leadership| leadership.range == found.range);
        leadership.expect("the move names a led range").leader = found.to;
        moves.push(found);
    }
    moves
}

/// The move that takes one leadership from the busiest node that can shed
/// one to a replica leading at least two fewer: the gap narrows by two, so
/// rounds end.
fn narrowing_move(led: &[Leadership], nodes: &[NodeId]) -> Option<Move> {
    let count = |node: NodeId| led.iter().filter(|leadership| leadership.leader == node).count();
    let mut busiest: Vec<NodeId> = led.iter().map(|leadership| leadership.leader).collect();
    busiest.sort_unstable_by_key(|&node| (std::cmp::Reverse(count(node)), node));
    busiest.dedup();
    for from in busiest {
        for leadership in led.iter().filter(|leadership| leadership.leader == from) {
            let lighter = leadership
                .replicas
                .iter()
                .copied()
                .filter(|&to| to != from && nodes.contains(&to) && count(to) + 2 <= count(from))
                .min_by_key(|&to| (count(to), to));
            if let Some(to) = lighter {
                return Some(Move { range: leadership.range, from, to });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn led_by(leaders: &[NodeId], replicas: &[NodeId]) -> Vec<Leadership> {
        let range = |index: usize| index as RangeId + 1;
        leaders
            .iter()
            .enumerate()
            .map(|(index, &leader)| Leadership { range: range(index), leader, replicas: replicas.to_vec() })
            .collect()
    }

    fn counts_after(leaderships: &[Leadership], moves: &[Move], nodes: &[NodeId]) -> Vec<usize> {
        let mut led = leaderships.to_vec();
        for step in moves {
            let leadership = led.iter_mut().find(|leadership| leadership.range == step.range).unwrap();
            assert_eq!(leadership.leader, step.from, "a move starts at the range's leader");
            leadership.leader = step.to;
        }
        nodes.iter().map(|&node| led.iter().filter(|leadership| leadership.leader == node).count()).collect()
    }

    #[test]
    fn six_ranges_led_by_one_node_of_three_end_two_apiece() {
        let leaderships = led_by(&[1; 6], &[1, 2, 3]);
        let moves = balancing_moves(&leaderships, &[1, 2, 3]);
        assert_eq!(moves.len(), 4);
        assert_eq!(counts_after(&leaderships, &moves, &[1, 2, 3]), vec![2, 2, 2]);
        assert_eq!(moves, balancing_moves(&leaderships, &[1, 2, 3]), "the same input gives the same moves");
    }

    #[test]
    fn counts_within_one_need_no_move_and_a_round_is_bounded() {
        assert!(balancing_moves(&led_by(&[1, 1, 2, 3, 3, 2, 1], &[1, 2, 3]), &[1, 2, 3]).is_empty());
        let leaderships = led_by(&[1; 30], &[1, 2, 3]);
        let moves = balancing_moves(&leaderships, &[1, 2, 3]);
        assert_eq!(moves.len(), BALANCE_TRANSFERS_PER_ROUND_MAX);
        assert_eq!(counts_after(&leaderships, &moves, &[1, 2, 3]), vec![26, 2, 2]);
    }

    #[test]
    fn a_move_goes_only_to_a_live_replica_of_its_range() {
        // Node 3 is down: it gets nothing, and 4 ranges split 2 and 2.
        let leaderships = led_by(&[1, 1, 1, 1], &[1, 2, 3]);
        let moves = balancing_moves(&leaderships, &[1, 2]);
        assert_eq!(counts_after(&leaderships, &moves, &[1, 2, 3]), vec![2, 2, 0]);
        // Node 4 replicates none of these ranges, so it cannot take one.
        let leaderships = led_by(&[1, 1, 2], &[1, 2]);
        assert!(balancing_moves(&leaderships, &[1, 2, 4]).is_empty());
    }
}
