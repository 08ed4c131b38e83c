//! `unwind dag`: a workflow's DAG as a tree in the terminal (from `GET /v1/ects?wid=`, which
//! carries the `ext` the markers need), or as Graphviz DOT / Mermaid from
//! `GET /v1/workflows/{wid}/dag?format=`.

use std::collections::{HashMap, HashSet};

use clap::{Args, ValueEnum};
use serde_json::Value;

use super::CliError;
use super::client::{Client, ClientArgs, Output};

#[derive(Debug, Args)]
pub struct DagArgs {
    /// The workflow to show.
    #[arg(long)]
    pub wid: String,
    /// `tree` prints in the terminal; `dot` and `mermaid` print text for other tools.
    #[arg(long, value_enum, default_value = "tree")]
    pub format: DagFormatArg,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DagFormatArg {
    Tree,
    Dot,
    Mermaid,
}

pub async fn run(args: DagArgs) -> Result<(), CliError> {
    let client = Client::new(&args.client)?;
    let segments = ["v1", "workflows", args.wid.as_str(), "dag"];
    let format = match args.format {
        DagFormatArg::Dot => "dot",
        DagFormatArg::Mermaid => "mermaid",
        DagFormatArg::Tree if client.output == Output::Json => {
            return super::rollback::print_json(&client.get(&segments, &[]).await?);
        }
        DagFormatArg::Tree => {
            // The workflow's existence is checked first so an unknown wid is `not_found`, not
            // an empty tree.
            client.get(&segments, &[]).await?;
            let items = client
                .get_all(&["v1", "ects"], &[("wid", &args.wid), ("limit", "1000")])
                .await?;
            let nodes: Vec<Node> = items.iter().filter_map(Node::from_view).collect();
            print!("{}", render_tree(&args.wid, &nodes));
            return Ok(());
        }
    };
    let response = client
        .get_raw(&segments, &[("format", format)], "*/*")
        .await?;
    let text = response
        .text()
        .await
        .map_err(|e| CliError::Failed(format!("unreadable answer: {e}")))?;
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

/// What the tree shows of one token.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub jti: String,
    pub iss: String,
    pub exec_act: String,
    pub parents: Vec<String>,
    pub checkpoint: bool,
    pub irreversible: bool,
    pub error: bool,
}

impl Node {
    /// From one item of `GET /v1/ects`; `None` for an item without a `jti`.
    fn from_view(v: &Value) -> Option<Self> {
        let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
        let ext = v["ext"].as_object().cloned().unwrap_or_default();
        let exec_act = s("exec_act");
        let checkpoint = exec_act == crate::ect::claims::EXEC_ACT_CHECKPOINT;
        Some(Self {
            jti: v["jti"].as_str()?.to_string(),
            iss: s("iss"),
            checkpoint,
            irreversible: checkpoint && ext.get("cascade.reversible") == Some(&Value::Bool(false)),
            error: crate::ect::is_error_node(&exec_act, &ext),
            exec_act,
            parents: v["par"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    fn label(&self) -> String {
        let mut marks = Vec::new();
        if self.checkpoint {
            marks.push("checkpoint");
        }
        if self.irreversible {
            marks.push("irreversible");
        }
        if self.error {
            marks.push("error");
        }
        let mut label = format!("{}  {}  {}", self.exec_act, self.iss, short(&self.jti));
        if !marks.is_empty() {
            label.push_str(&format!("  [{}]", marks.join(", ")));
        }
        label
    }
}

/// The first 8 characters of a jti (a UUID's first group), enough to tell nodes apart.
fn short(jti: &str) -> String {
    match jti.char_indices().nth(8) {
        Some((i, _)) => format!("{}…", &jti[..i]),
        None => jti.to_string(),
    }
}

/// The DAG as an indented tree: roots (nodes without a parent in the workflow) in ledger order,
/// each child under its parent in ledger order. A node with several parents is printed in full
/// under the first one reached and referred to as `↗ <jti> (above)` afterwards, so every node
/// appears in full exactly once.
pub fn render_tree(wid: &str, nodes: &[Node]) -> String {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.jti.as_str(), i))
        .collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut has_parent = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        let mut seen = HashSet::new();
        for p in &n.parents {
            if let Some(&pi) = index.get(p.as_str())
                && pi != i
                && seen.insert(pi)
            {
                children[pi].push(i);
                has_parent[i] = true;
            }
        }
    }
    let roots: Vec<usize> = (0..nodes.len()).filter(|&i| !has_parent[i]).collect();
    let mut out = format!(
        "workflow {wid}: {} nodes, {} roots\n",
        nodes.len(),
        roots.len()
    );
    let mut printed = vec![false; nodes.len()];
    // Nodes no root reaches (only possible on a cycle) are printed as roots at the end.
    let mut starts = roots;
    let mut next_unprinted = 0;
    loop {
        for &root in &starts {
            render_from(root, nodes, &children, &mut printed, &mut out);
        }
        while next_unprinted < nodes.len() && printed[next_unprinted] {
            next_unprinted += 1;
        }
        if next_unprinted == nodes.len() {
            return out;
        }
        starts = vec![next_unprinted];
    }
}

/// Depth-first from `root` with an explicit stack (a long chain must not overflow the stack).
fn render_from(
    root: usize,
    nodes: &[Node],
    children: &[Vec<usize>],
    printed: &mut [bool],
    out: &mut String,
) {
    // (node, prefix of its line, connector, prefix its children continue with)
    let mut stack: Vec<(usize, String, &str, String)> =
        vec![(root, String::new(), "", String::new())];
    while let Some((i, prefix, connector, child_prefix)) = stack.pop() {
        if printed[i] {
            out.push_str(&format!(
                "{prefix}{connector}↗ {} (above)\n",
                short(&nodes[i].jti)
            ));
            continue;
        }
        printed[i] = true;
        out.push_str(&format!("{prefix}{connector}{}\n", nodes[i].label()));
        let kids = &children[i];
        for (k, &child) in kids.iter().enumerate().rev() {
            let last = k + 1 == kids.len();
            let (connector, more) = if last {
                ("└── ", "    ")
            } else {
                ("├── ", "│   ")
            };
            stack.push((
                child,
                child_prefix.clone(),
                connector,
                format!("{child_prefix}{more}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(jti: &str, exec_act: &str, parents: &[&str]) -> Node {
        Node {
            jti: jti.into(),
            iss: "a".into(),
            exec_act: exec_act.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            checkpoint: exec_act == "checkpoint",
            irreversible: false,
            error: exec_act == "error",
        }
    }

    #[test]
    fn shared_child_is_printed_once_and_referred_to() {
        let nodes = vec![
            node("cp", "checkpoint", &[]),
            node("x", "left", &["cp"]),
            node("y", "right", &["cp"]),
            node("join", "error", &["x", "y"]),
        ];
        let tree = render_tree("w", &nodes);
        let lines: Vec<&str> = tree.lines().collect();
        assert_eq!(
            lines,
            vec![
                "workflow w: 4 nodes, 1 roots",
                "checkpoint  a  cp  [checkpoint]",
                "├── left  a  x",
                "│   └── error  a  join  [error]",
                "└── right  a  y",
                "    └── ↗ join (above)",
            ],
            "{tree}"
        );
    }

    #[test]
    fn a_cycle_still_ends_and_shows_every_node() {
        let nodes = vec![node("p", "a", &["q"]), node("q", "b", &["p"])];
        let tree = render_tree("w", &nodes);
        assert!(
            tree.contains("a  a  p") && tree.contains("b  a  q"),
            "{tree}"
        );
        assert!(tree.contains("↗ p (above)"), "{tree}");
    }

    #[test]
    fn long_jtis_are_shortened() {
        assert_eq!(short("7f3c2a9e-5d1b-4e8a"), "7f3c2a9e…");
        assert_eq!(short("cp-a"), "cp-a");
    }
}
