//! Write-quorum arithmetic as pure functions on a validated newtype (no I/O here).

/// W of N: how many replicas must hold an object before it counts as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    needed: usize,
    total: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("write quorum {needed} is not between 1 and the number of replicas ({total})")]
pub struct QuorumRangeError {
    pub needed: usize,
    pub total: usize,
}

impl Quorum {
    pub fn new(needed: usize, total: usize) -> Result<Quorum, QuorumRangeError> {
        if needed == 0 || needed > total {
            return Err(QuorumRangeError { needed, total });
        }
        Ok(Quorum { needed, total })
    }

    /// A majority of `total` replicas.
    pub fn majority(total: usize) -> Result<Quorum, QuorumRangeError> {
        Quorum::new(total / 2 + 1, total)
    }

    pub fn needed(&self) -> usize {
        self.needed
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Whether `ok` successful replica writes satisfy the quorum.
    pub fn is_met(&self, ok: usize) -> bool {
        ok >= self.needed
    }

    /// Whether the quorum can still be met after `failed` replicas failed.
    pub fn still_reachable(&self, failed: usize) -> bool {
        self.total.saturating_sub(failed) >= self.needed
    }

    /// Which replicas a write leaves out, given which are `up` (not in a failure backoff):
    /// those that are down, as long as the up ones alone can meet the quorum; otherwise none
    /// (a write that cannot succeed without them tries them all). A replica that just failed
    /// then costs its backoff in missed writes (healed by repair), not a straggler wait on
    /// every C-STORE.
    pub fn left_out(&self, up: &[bool]) -> Vec<bool> {
        let up_count = up.iter().filter(|&&u| u).count();
        if up_count >= self.needed {
            up.iter().map(|&u| !u).collect()
        } else {
            vec![false; up.len()]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_of_n() {
        assert_eq!(Quorum::majority(1).unwrap().needed(), 1);
        assert_eq!(Quorum::majority(3).unwrap().needed(), 2);
        assert_eq!(Quorum::majority(4).unwrap().needed(), 3);
        assert!(Quorum::majority(0).is_err());
    }

    #[test]
    fn range_is_checked() {
        assert!(Quorum::new(0, 3).is_err());
        assert!(Quorum::new(4, 3).is_err());
        assert!(Quorum::new(3, 3).is_ok());
    }

    #[test]
    fn met_and_reachable() {
        let q = Quorum::new(2, 3).unwrap();
        assert!(!q.is_met(1));
        assert!(q.is_met(2));
        assert!(q.still_reachable(1));
        assert!(!q.still_reachable(2));
    }

    #[test]
    fn down_replicas_are_left_out_only_while_the_rest_make_the_quorum() {
        let q = Quorum::new(2, 3).unwrap();
        assert_eq!(q.left_out(&[true, true, true]), vec![false, false, false]);
        assert_eq!(q.left_out(&[true, true, false]), vec![false, false, true]);
        // One up replica cannot make the quorum: every replica is tried.
        assert_eq!(q.left_out(&[true, false, false]), vec![false, false, false]);
        assert_eq!(
            q.left_out(&[false, false, false]),
            vec![false, false, false]
        );
    }
}
