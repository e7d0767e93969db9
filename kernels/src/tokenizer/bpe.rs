//! The merge loop both tokenizer models share: repeatedly join the adjacent pair of
//! symbols with the lowest merge rank, leftmost first, until no pair has a merge.
//!
//! Byte-level BPE starts from one symbol per byte and ranks merges by their position in
//! `tokenizer.ggml.merges`; SentencePiece BPE starts from one symbol per character and
//! ranks merges by the score of the merged piece. Both fill a [`MergeTable`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::hash::FastMap;

/// What a pair of adjacent symbols merges into, and how early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Merge {
    /// Lower merges first.
    pub rank: u32,
    /// The token the pair becomes.
    pub id: u32,
}

/// Marks a symbol that has been merged into its left neighbour. Token ids stay below it
/// because the vocabulary size is checked to fit in `u32` with room to spare.
const GONE: u32 = u32::MAX;

#[derive(Default, Debug)]
pub(super) struct MergeTable {
    merges: FastMap<(u32, u32), Merge>,
}

/// Buffers reused from one word to the next.
#[derive(Default)]
pub(super) struct MergeScratch {
    prev: Vec<usize>,
    next: Vec<usize>,
    /// (rank, position of the left symbol): the smallest pops first.
    queue: BinaryHeap<Reverse<(u32, usize)>>,
}

impl MergeTable {
    pub fn with_capacity(n: usize) -> Self {
        let mut merges = FastMap::default();
        merges.reserve(n);
        Self { merges }
    }

    /// Adds a merge unless the pair already has one (the earlier rank wins).
    pub fn insert(&mut self, left: u32, right: u32, merge: Merge) {
        self.merges.entry((left, right)).or_insert(merge);
    }

    pub fn get(&self, left: u32, right: u32) -> Option<Merge> {
        self.merges.get(&(left, right)).copied()
    }

    /// Merges `symbols` in place; the merged symbols end up at the front, and their
    /// count is returned.
    ///
    /// A heap of candidate pairs with lazy invalidation: a popped pair is applied only
    /// if both symbols are still neighbours and still form a pair of that rank, so each
    /// merge costs O(log n) instead of a rescan of the word.
    pub fn apply(&self, symbols: &mut [u32], scratch: &mut MergeScratch) -> usize {
        let n = symbols.len();
        if n < 2 {
            return n;
        }
        let MergeScratch { prev, next, queue } = scratch;
        prev.clear();
        next.clear();
        queue.clear();
        // `usize::MAX` (from 0 - 1) and `n` both mean "no neighbour".
        prev.extend((0..n).map(|i| i.wrapping_sub(1)));
        next.extend(1..=n);
        for i in 0..n - 1 {
            if let Some(merge) = self.get(symbols[i], symbols[i + 1]) {
                queue.push(Reverse((merge.rank, i)));
            }
        }
        while let Some(Reverse((rank, left))) = queue.pop() {
            let right = next[left];
            if symbols[left] == GONE || right >= n {
                continue;
            }
            match self.get(symbols[left], symbols[right]) {
                Some(merge) if merge.rank == rank => {
                    symbols[left] = merge.id;
                    symbols[right] = GONE;
                    let after = next[right];
                    next[left] = after;
                    if after < n {
                        prev[after] = left;
                        if let Some(m) = self.get(merge.id, symbols[after]) {
                            queue.push(Reverse((m.rank, left)));
                        }
                    }
                    let before = prev[left];
                    if before < n {
                        if let Some(m) = self.get(symbols[before], merge.id) {
                            queue.push(Reverse((m.rank, before)));
                        }
                    }
                }
                _ => {}
            }
        }
        let mut kept = 0;
        for i in 0..n {
            if symbols[i] != GONE {
                symbols[kept] = symbols[i];
                kept += 1;
            }
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The textbook loop: find the lowest-ranked pair (leftmost on ties), merge it, repeat.
    fn merge_slowly(table: &MergeTable, mut symbols: Vec<u32>) -> Vec<u32> {
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, pair)| table.get(pair[0], pair[1]).map(|m| (m.rank, i, m.id)))
                .min();
            let Some((_, i, id)) = best else {
                return symbols;
            };
            symbols[i] = id;
            symbols.remove(i + 1);
        }
    }

    /// A random merge table over a small alphabet, so that merges chain and compete.
    fn table_strategy() -> impl Strategy<Value = MergeTable> {
        prop::collection::vec((0u32..6, 0u32..6, 0u32..12), 0..40).prop_map(|pairs| {
            let mut table = MergeTable::default();
            for (rank, (left, right, id)) in pairs.into_iter().enumerate() {
                table.insert(
                    left,
                    right,
                    Merge {
                        rank: rank as u32,
                        id,
                    },
                );
            }
            table
        })
    }

    proptest! {
        #[test]
        fn heap_merge_equals_textbook_merge(
            table in table_strategy(),
            word in prop::collection::vec(0u32..6, 0..40),
        ) {
            let mut fast = word.clone();
            let kept = table.apply(&mut fast, &mut MergeScratch::default());
            fast.truncate(kept);
            prop_assert_eq!(fast, merge_slowly(&table, word));
        }
    }

    #[test]
    fn equal_ranks_merge_leftmost_first() {
        let mut table = MergeTable::default();
        table.insert(1, 1, Merge { rank: 0, id: 2 });
        let mut word = vec![1, 1, 1];
        let kept = table.apply(&mut word, &mut MergeScratch::default());
        assert_eq!(&word[..kept], &[2, 1]);
    }
}
