//! The trie of valid semantic IDs and beam search constrained to it: a beam is only ever
//! extended by a code that continues some real item's ID, so every finished beam is an item.

use crate::{Error, Result};

#[derive(Clone, Debug, Default)]
struct Node {
    /// (code, child node), sorted by code.
    children: Vec<(u16, u32)>,
    /// The item whose ID ends here (leaves only).
    item: Option<u32>,
}

/// Every item's ID as a path of codes from the root; all IDs have the same length.
#[derive(Clone, Debug)]
pub struct Trie {
    nodes: Vec<Node>,
    depth: usize,
    items: usize,
}

impl Trie {
    /// The trie of `ids[item]`; refuses IDs of different lengths and two items with one ID.
    pub fn new(ids: &[Vec<u16>]) -> Result<Trie> {
        let depth = ids.first().map_or(0, Vec::len);
        if depth == 0 {
            return Err(Error::InvalidRequest(
                "a trie needs at least one ID of at least one code".into(),
            ));
        }
        let mut nodes = vec![Node::default()];
        for (item, codes) in ids.iter().enumerate() {
            if codes.len() != depth {
                return Err(Error::InvalidRequest(format!(
                    "item {item} has an ID of {} codes, item 0 one of {depth}",
                    codes.len()
                )));
            }
            let mut node = 0usize;
            for &code in codes {
                node = match nodes[node].children.binary_search_by_key(&code, |c| c.0) {
                    Ok(i) => nodes[node].children[i].1 as usize,
                    Err(i) => {
                        let child = nodes.len();
                        nodes[node].children.insert(i, (code, child as u32));
                        nodes.push(Node::default());
                        child
                    }
                };
            }
            if let Some(other) = nodes[node].item.replace(item as u32) {
                return Err(Error::InvalidRequest(format!(
                    "items {other} and {item} share the ID {codes:?}"
                )));
            }
        }
        Ok(Trie {
            nodes,
            depth,
            items: ids.len(),
        })
    }

    /// Codes per ID.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Items in the trie.
    pub fn len(&self) -> usize {
        self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    fn node_of(&self, prefix: &[u16]) -> Option<usize> {
        let mut node = 0usize;
        for &code in prefix {
            let children = &self.nodes[node].children;
            let i = children.binary_search_by_key(&code, |c| c.0).ok()?;
            node = children[i].1 as usize;
        }
        Some(node)
    }

    /// Whether some item's ID starts with `prefix`.
    pub fn is_prefix(&self, prefix: &[u16]) -> bool {
        self.node_of(prefix).is_some()
    }

    /// The codes that may follow `prefix` (empty past a leaf or off the trie).
    pub fn next_codes(&self, prefix: &[u16]) -> Vec<u16> {
        self.node_of(prefix).map_or_else(Vec::new, |n| {
            self.nodes[n].children.iter().map(|c| c.0).collect()
        })
    }

    /// The items whose IDs start with `prefix`, in ID order.
    pub fn items_under(&self, prefix: &[u16]) -> Vec<u32> {
        let mut out = Vec::new();
        let mut stack: Vec<usize> = self.node_of(prefix).into_iter().collect();
        while let Some(node) = stack.pop() {
            out.extend(self.nodes[node].item);
            stack.extend(self.nodes[node].children.iter().rev().map(|c| c.1 as usize));
        }
        out
    }
}

/// One finished beam: an item and its summed log-probability.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Beam {
    pub item: u32,
    pub score: f64,
}

/// Beam search of `width` over the trie. At level `l`, `log_probs(l, prefixes)` gets the
/// live beams' code prefixes (each of length `l`, each a prefix of a real ID) and returns,
/// per prefix, the log-probability of every code of level `l` (at least up to the largest
/// code the trie uses there). Each beam is extended only by the codes the trie allows after
/// it, and the `width` best extensions by summed log-probability live on (ties to the
/// smaller codes). Returns the items of the final beams, best first.
pub fn beam_search(
    trie: &Trie,
    width: usize,
    mut log_probs: impl FnMut(usize, &[Vec<u16>]) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Beam>> {
    if width == 0 {
        return Ok(Vec::new());
    }
    // (node, prefix, score)
    let mut beams: Vec<(usize, Vec<u16>, f64)> = vec![(0, Vec::new(), 0.0)];
    for level in 0..trie.depth {
        let prefixes: Vec<Vec<u16>> = beams.iter().map(|b| b.1.clone()).collect();
        let rows = log_probs(level, &prefixes)?;
        if rows.len() != beams.len() {
            return Err(Error::InvalidRequest(format!(
                "beam search: {} rows of log-probabilities for {} beams",
                rows.len(),
                beams.len()
            )));
        }
        let mut next: Vec<(usize, Vec<u16>, f64)> = Vec::new();
        for ((node, prefix, score), row) in beams.iter().zip(&rows) {
            for &(code, child) in &trie.nodes[*node].children {
                let Some(&lp) = row.get(usize::from(code)) else {
                    return Err(Error::InvalidRequest(format!(
                        "beam search: {} log-probabilities at level {level}, but the trie \
                         has code {code} there",
                        row.len()
                    )));
                };
                let lp = if lp.is_nan() {
                    f64::NEG_INFINITY
                } else {
                    f64::from(lp)
                };
                let mut extended = prefix.clone();
                extended.push(code);
                next.push((child as usize, extended, score + lp));
            }
        }
        next.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.1.cmp(&b.1)));
        next.truncate(width);
        beams = next;
    }
    Ok(beams
        .into_iter()
        .filter_map(|(node, _, score)| trie.nodes[node].item.map(|item| Beam { item, score }))
        .collect())
}
