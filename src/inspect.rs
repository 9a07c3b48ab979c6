//! The per-layer table `cnnrt inspect` prints.

use std::fmt::Write;

use crate::graph::stats::layer_stats;
use crate::graph::{Activation, Graph, Op};

/// `1256080` → `1,256,080`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn dims(shape: &[usize]) -> String {
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×")
}

fn op_label(op: &Op, residual: bool) -> String {
    let mut s = op.name().to_string();
    if let Op::Conv(c) = op {
        let _ = write!(s, " k{}x{} s{}", c.kernel[0], c.kernel[1], c.stride[0]);
        if c.pads.iter().any(|&p| p > 0) {
            let _ = write!(s, " p{}", c.pads[0]);
        }
        if c.groups > 1 {
            let _ = write!(s, " g{}", c.groups);
        }
    }
    if let Op::Pool(p) = op {
        let _ = write!(s, " k{}x{} s{}", p.kernel[0], p.kernel[1], p.stride[0]);
    }
    if residual {
        s.push_str("+Add");
    }
    let mut op = op.clone();
    if let Some(a) = op.fused_activation_mut() {
        if *a != Activation::Identity {
            let _ = write!(s, "+{}", a.name());
        }
    }
    s
}

/// Renders the table. `algorithms`, when given, adds the kernel chosen for each node.
pub fn layer_table(graph: &Graph, algorithms: Option<&[&str]>, notes: &[(String, Option<f64>)]) -> String {
    let stats = layer_stats(graph);
    let mut rows: Vec<Vec<String>> = Vec::new();
    let input = graph.inputs.first().map(|&v| dims(graph.shape(v))).unwrap_or_default();
    rows.push(vec!["0".into(), "input".into(), "Input".into(), input, String::new(), String::new(), String::new(), String::new(), String::new(), String::new()]);
    for (i, (node, st)) in graph.nodes.iter().zip(&stats).enumerate() {
        let wshape = match &node.op {
            Op::Conv(c) => dims(&graph.weights[c.weight].shape),
            Op::Linear(l) => dims(&graph.weights[l.weight].shape),
            _ => String::new(),
        };
        let residual = matches!(node.op, Op::Conv(_) | Op::Linear(_)) && node.inputs.len() == 2;
        let mut algo = algorithms.and_then(|a| a.get(i)).map(|s| s.to_string()).unwrap_or_default();
        if let Some((_, Some(err))) = notes.iter().find(|(n, _)| *n == node.name) {
            let _ = write!(algo, " (err {err:.1e})");
        }
        rows.push(vec![
            (i + 1).to_string(),
            node.name.clone(),
            op_label(&node.op, residual),
            dims(graph.shape(node.output)),
            wshape,
            thousands(st.params),
            thousands(st.macs),
            format!("{}×{}", st.receptive_field[0], st.receptive_field[1]),
            st.output_stride[0].to_string(),
            algo,
        ]);
    }
    let params: usize = stats.iter().map(|s| s.params).sum();
    let macs: usize = stats.iter().map(|s| s.macs).sum();
    rows.push(vec![
        String::new(),
        "total".into(),
        String::new(),
        String::new(),
        String::new(),
        thousands(params),
        thousands(macs),
        String::new(),
        String::new(),
        String::new(),
    ]);
    let header = ["#", "layer", "op", "output (C×H×W)", "weights", "params", "mult-adds", "recept. field", "stride", "algorithm"];
    let ncols = if algorithms.is_some() { header.len() } else { header.len() - 1 };
    let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).chain([header[c].chars().count()]).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncols).map(width).collect();
    let mut out = String::new();
    let right = |c: usize| matches!(c, 0 | 5 | 6 | 8);
    let line = |cells: &[String], out: &mut String| {
        for c in 0..ncols {
            let cell = &cells[c];
            let pad = widths[c] - cell.chars().count();
            if right(c) {
                let _ = write!(out, "{}{}  ", " ".repeat(pad), cell);
            } else {
                let _ = write!(out, "{}{}  ", cell, " ".repeat(pad));
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&header.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &mut out);
    let total = widths.iter().sum::<usize>() + 2 * (ncols - 1);
    let _ = writeln!(out, "{}", "-".repeat(total));
    let last = rows.len() - 1;
    for (i, r) in rows.iter().enumerate() {
        if i == last {
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
        line(r, &mut out);
    }
    let _ = writeln!(out, "FLOPs per sample (2 × mult-adds): {}", thousands(2 * macs));
    out
}
