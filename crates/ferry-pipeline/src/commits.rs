//! Which apply groups have committed, shared by the workers (to wait for
//! their dependencies and, in transactional mode, for their commit turn)
//! and the dispatcher.

use std::collections::BTreeSet;

/// Committed group sequence numbers: a contiguous prefix plus any groups
/// committed out of order after it (`eventual` mode).
#[derive(Debug, Default)]
pub(crate) struct Commits {
    /// Every group up to and including this one has committed.
    pub prefix: u64,
    beyond: BTreeSet<u64>,
}

impl Commits {
    pub fn mark(&mut self, seq: u64) {
        if seq <= self.prefix {
            return;
        }
        self.beyond.insert(seq);
        while self.beyond.remove(&(self.prefix + 1)) {
            self.prefix += 1;
        }
    }

    pub fn is_committed(&self, seq: u64) -> bool {
        seq <= self.prefix || self.beyond.contains(&seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_advances_over_out_of_order_commits() {
        let mut c = Commits::default();
        c.mark(2);
        assert_eq!(c.prefix, 0);
        assert!(c.is_committed(2) && !c.is_committed(1));
        c.mark(1);
        assert_eq!(c.prefix, 2);
        c.mark(4);
        c.mark(3);
        assert_eq!(c.prefix, 4);
        assert!(c.is_committed(0));
    }
}
