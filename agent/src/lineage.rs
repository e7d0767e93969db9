//! A program's ancestry as a graph: edges run from parent to child, and a crossover child
//! has two parents. Rendered as DOT or as a text tree that climbs from the program.

use std::collections::{HashMap, HashSet};
use std::fmt;

use petgraph::dot::{Config, Dot};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction as EdgeDirection;

use crate::db::LineageNode;

/// Which parent an edge comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parent {
    First,
    /// The other parent of a crossover.
    Second,
}

impl fmt::Display for Parent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Parent::First => "parent",
            Parent::Second => "second parent",
        })
    }
}

impl fmt::Display for LineageNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {} gen {} {}",
            self.id,
            crate::db::short_hash(&self.hash),
            self.generation,
            self.mutator
        )?;
        match self.score {
            Some(score) => write!(f, " score {score:.4}"),
            None => write!(f, " (not passed)"),
        }
    }
}

/// The ancestry of one program.
pub struct Lineage {
    pub graph: DiGraph<LineageNode, Parent>,
    /// The program whose ancestry this is.
    pub root: NodeIndex,
}

impl Lineage {
    /// Builds the graph from a program (`root_id`) and its ancestors as the database gives
    /// them; parents missing from `nodes` are left out.
    pub fn new(nodes: Vec<LineageNode>, root_id: i64) -> Option<Lineage> {
        let mut graph = DiGraph::new();
        let index: HashMap<i64, NodeIndex> = nodes
            .into_iter()
            .map(|node| (node.id, graph.add_node(node)))
            .collect();
        let mut links = Vec::new();
        for child in graph.node_indices() {
            let node = &graph[child];
            for (parent, kind) in [
                (node.parent_id, Parent::First),
                (node.second_parent_id, Parent::Second),
            ] {
                if let Some(&parent) = parent.and_then(|id| index.get(&id)) {
                    links.push((parent, child, kind));
                }
            }
        }
        for (parent, child, kind) in links {
            graph.add_edge(parent, child, kind);
        }
        let root = *index.get(&root_id)?;
        Some(Lineage { graph, root })
    }

    /// Graphviz DOT text.
    pub fn to_dot(&self) -> String {
        format!(
            "{}",
            Dot::with_attr_getters(
                &self.graph,
                &[Config::EdgeNoLabel, Config::NodeNoLabel],
                &|_, edge| match edge.weight() {
                    Parent::First => "label=\"parent\"".to_string(),
                    Parent::Second => "label=\"second parent\", style=dashed".to_string(),
                },
                &|_, (_, node)| format!("label=\"{}\"", node.to_string().replace('"', "\\\"")),
            )
        )
    }

    /// A tree from the program up through its parents; an ancestor reached twice is
    /// written in full once and named the second time.
    pub fn to_tree(&self) -> String {
        let mut out = format!("{}\n", self.graph[self.root]);
        let mut shown = HashSet::from([self.root]);
        self.write_parents(self.root, "", &mut shown, &mut out);
        out
    }

    fn write_parents(
        &self,
        child: NodeIndex,
        indent: &str,
        shown: &mut HashSet<NodeIndex>,
        out: &mut String,
    ) {
        let mut parents: Vec<(Parent, NodeIndex)> = self
            .graph
            .edges_directed(child, EdgeDirection::Incoming)
            .map(|e| (*e.weight(), petgraph::visit::EdgeRef::source(&e)))
            .collect();
        parents.sort_by_key(|(kind, _)| *kind == Parent::Second);
        for (k, (kind, parent)) in parents.iter().enumerate() {
            let last = k + 1 == parents.len();
            let (branch, next_indent) = if last {
                ("└── ", "    ")
            } else {
                ("├── ", "│   ")
            };
            let node = &self.graph[*parent];
            if shown.insert(*parent) {
                out.push_str(&format!("{indent}{branch}{kind}: {node}\n"));
                self.write_parents(*parent, &format!("{indent}{next_indent}"), shown, out);
            } else {
                out.push_str(&format!("{indent}{branch}{kind}: #{} (above)\n", node.id));
            }
        }
    }
}
