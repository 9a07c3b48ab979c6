//! The import state: ONNX names bound to graph values or constants, the graph being
//! built, and the final clean-up (dead-node removal, compaction, shape inference).

use std::collections::HashMap;
use std::rc::Rc;

use super::node::Ctx;
use super::proto::tensor_proto::DataType;
use super::proto::{type_proto, ModelProto, TensorProto, ValueInfoProto};
use super::tensor::{self, checked_dims, Tensor};
use super::{ops, Imported, MAX_OPSET, MIN_OPSET};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, Op, ValueId, WeightId};
use crate::limits;

/// What an ONNX name refers to.
#[derive(Clone)]
pub(crate) enum Val<'m> {
    /// A graph value (activation): a model input or a node output.
    Dyn(ValueId),
    /// An initializer, decoded when a node uses it.
    Init(&'m TensorProto),
    /// The value of a `Constant` node.
    Const(Rc<Tensor>),
}

pub(crate) struct Builder<'m> {
    pub g: Graph,
    pub weights: Vec<Vec<f32>>,
    /// The batch size every model input declares, when they all declare the same fixed one.
    pub static_batch: Option<usize>,
    vals: HashMap<&'m str, Val<'m>>,
    /// ONNX consumers of each name: node inputs plus graph outputs.
    uses: HashMap<&'m str, usize>,
    /// Per value: consumers still to come, summed over the names bound to it.
    value_uses: Vec<usize>,
    /// Per value: index of the node producing it.
    producer: Vec<Option<usize>>,
    /// Weights made from an unmodified constant, by (constant name, stored shape).
    plain_weights: HashMap<(String, Vec<usize>), WeightId>,
}

impl<'m> Builder<'m> {
    pub fn shape(&self, v: ValueId) -> &[usize] {
        self.g.shape(v)
    }

    /// The op of the node that produces `v`, if a node does.
    pub fn producer_op(&self, v: ValueId) -> Option<(&Op, &[ValueId])> {
        let n = &self.g.nodes[(*self.producer.get(v)?)?];
        Some((&n.op, &n.inputs))
    }

    pub fn producer_op_mut(&mut self, v: ValueId) -> Option<&mut Op> {
        let i = (*self.producer.get(v)?)?;
        Some(&mut self.g.nodes[i].op)
    }

    /// How many consumers of `v` are still to come (the node being converted included).
    pub fn pending_uses(&self, v: ValueId) -> usize {
        self.value_uses.get(v).copied().unwrap_or(0)
    }

    /// What input `i` of the node refers to; `None` for an absent optional input.
    pub fn input(&self, ctx: &Ctx, i: usize) -> Result<Option<Val<'m>>> {
        let Some(name) = ctx.input(i) else {
            return Ok(None);
        };
        match self.vals.get(name) {
            Some(v) => Ok(Some(v.clone())),
            None => Err(ctx.malformed(format!(
                "reads '{name}', which is not defined before it (nodes must be topologically sorted)"
            ))),
        }
    }

    /// Input `i`, which must be an activation.
    pub fn dyn_input(&self, ctx: &Ctx, i: usize) -> Result<ValueId> {
        match self.input(ctx, i)? {
            Some(Val::Dyn(v)) => Ok(v),
            Some(_) => Err(ctx.unsupported(format!(
                "input {i} ('{}') is a constant; cnnrt needs a computed tensor there (constant folding is not supported)",
                ctx.input(i).unwrap_or_default()
            ))),
            None => Err(ctx.malformed(format!("input {i} is missing"))),
        }
    }

    /// Decodes a constant (initializer or `Constant` output).
    pub fn decode(&self, ctx: &Ctx, v: &Val<'m>) -> Result<Option<Tensor>> {
        match v {
            Val::Dyn(_) => Ok(None),
            Val::Init(t) => tensor::decode(t, ctx).map(Some),
            Val::Const(t) => Ok(Some((**t).clone())),
        }
    }

    /// Optional input `i`, which must be a constant when present.
    pub fn const_input(&self, ctx: &Ctx, i: usize, role: &str) -> Result<Option<Tensor>> {
        let Some(v) = self.input(ctx, i)? else {
            return Ok(None);
        };
        match self.decode(ctx, &v)? {
            Some(t) => Ok(Some(t)),
            None => Err(ctx.unsupported(format!(
                "{role} (input {i}, '{}') is computed at run time; cnnrt needs it to be a constant (initializer)",
                ctx.input(i).unwrap_or_default()
            ))),
        }
    }

    /// Required constant input `i`.
    pub fn require_const(&self, ctx: &Ctx, i: usize, role: &str) -> Result<Tensor> {
        self.const_input(ctx, i, role)?
            .ok_or_else(|| ctx.malformed(format!("{role} (input {i}) is missing")))
    }

    pub fn add_weight(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> WeightId {
        let id = self.g.add_weight(name, shape);
        self.weights.push(data);
        id
    }

    /// A weight holding a constant's data unchanged (shared when several nodes use it).
    pub fn plain_weight(
        &mut self,
        ctx: &Ctx,
        t: Tensor,
        shape: Vec<usize>,
        role: &str,
    ) -> Result<WeightId> {
        let key = (t.name.clone(), shape.clone());
        if !t.name.is_empty() {
            if let Some(&w) = self.plain_weights.get(&key) {
                return Ok(w);
            }
        }
        let name = if t.name.is_empty() {
            format!("{}.{role}", ctx.name)
        } else {
            t.name.clone()
        };
        let data = t.into_f32s(ctx, role)?;
        let w = self.add_weight(name, shape, data);
        if !key.0.is_empty() {
            self.plain_weights.insert(key, w);
        }
        Ok(w)
    }

    /// The node's first output name; any other output must be unused.
    pub fn single_output(&self, ctx: &Ctx<'m>) -> Result<&'m str> {
        let out = ctx
            .node
            .output
            .first()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ctx.malformed("has no output"))?;
        for (i, o) in ctx.node.output.iter().enumerate().skip(1) {
            if !o.is_empty() && self.uses.get(o.as_str()).copied().unwrap_or(0) > 0 {
                return Err(ctx.unsupported(format!(
                    "output {i} ('{o}') is used; cnnrt computes only the first output"
                )));
            }
        }
        Ok(out)
    }

    fn bind(&mut self, ctx: &Ctx, name: &'m str, val: Val<'m>) -> Result<()> {
        if self.vals.contains_key(name) {
            return Err(ctx.malformed(format!("defines '{name}', which is already defined")));
        }
        if let Val::Dyn(v) = val {
            self.value_uses[v] += self.uses.get(name).copied().unwrap_or(0);
        }
        self.vals.insert(name, val);
        Ok(())
    }

    /// Adds a node writing a new value named `out_name`, and infers its shape.
    pub fn push_node(
        &mut self,
        ctx: &Ctx,
        name: String,
        op: Op,
        inputs: Vec<ValueId>,
        out_name: &str,
    ) -> Result<ValueId> {
        let node = Node {
            name,
            op,
            inputs,
            output: self.g.values.len(),
        };
        let shape = crate::graph::shape::infer_node(&self.g, &node)?;
        check_size(ctx, &shape)?;
        let v = self.g.add_value(out_name, shape);
        self.value_uses.push(0);
        self.producer.push(Some(self.g.nodes.len()));
        self.g.nodes.push(node);
        Ok(v)
    }

    /// Adds the node for `ctx` and binds its (first) output.
    pub fn emit(&mut self, ctx: &Ctx<'m>, op: Op, inputs: Vec<ValueId>) -> Result<()> {
        let out = self.single_output(ctx)?;
        let v = self.push_node(ctx, ctx.name.clone(), op, inputs, out)?;
        self.bind(ctx, out, Val::Dyn(v))
    }

    /// Binds the node's output to an existing value or constant (Identity, Dropout, no-op
    /// Reshape, a folded bias): the node itself disappears.
    pub fn alias(&mut self, ctx: &Ctx<'m>, val: Val<'m>) -> Result<()> {
        let out = self.single_output(ctx)?;
        if let Val::Dyn(v) = val {
            self.value_uses[v] = self.value_uses[v].saturating_sub(1);
        }
        self.bind(ctx, out, val)
    }

    /// Binds the output of a `Constant` node.
    pub fn bind_const(&mut self, ctx: &Ctx<'m>, t: Tensor) -> Result<()> {
        let out = self.single_output(ctx)?;
        self.bind(ctx, out, Val::Const(Rc::new(t)))
    }

    /// Removes nodes that no output depends on (e.g. the Sigmoid of a rewritten SiLU),
    /// drops unused values and weights, names outputs after the ONNX outputs, and runs
    /// shape inference over the whole graph.
    fn finish(self, outputs: Vec<(ValueId, &str)>) -> Result<(Graph, Vec<Vec<f32>>)> {
        let Builder { g, weights, .. } = self;
        let mut live = vec![false; g.values.len()];
        for &(o, _) in &outputs {
            live[o] = true;
        }
        let mut keep = vec![false; g.nodes.len()];
        for (i, n) in g.nodes.iter().enumerate().rev() {
            if live[n.output] {
                keep[i] = true;
                for &v in &n.inputs {
                    live[v] = true;
                }
            }
        }
        let mut vmap = vec![usize::MAX; g.values.len()];
        let mut out = Graph::default();
        for &i in &g.inputs {
            vmap[i] = out.values.len();
            out.values.push(g.values[i].clone());
            out.inputs.push(vmap[i]);
        }
        let mut wmap = vec![usize::MAX; g.weights.len()];
        let mut weights: Vec<Option<Vec<f32>>> = weights.into_iter().map(Some).collect();
        let mut new_weights = Vec::new();
        for (n, _) in g.nodes.into_iter().zip(&keep).filter(|(_, k)| **k) {
            let mut n = n;
            for w in n.op.weight_ids() {
                if wmap[w] == usize::MAX {
                    wmap[w] = out.weights.len();
                    out.weights.push(g.weights[w].clone());
                    new_weights.push(weights[w].take().unwrap_or_default());
                }
            }
            n.op.weight_ids_mut()
                .into_iter()
                .for_each(|w| *w = wmap[*w]);
            n.inputs.iter_mut().for_each(|v| *v = vmap[*v]);
            vmap[n.output] = out.values.len();
            out.values.push(g.values[n.output].clone());
            n.output = vmap[n.output];
            out.nodes.push(n);
        }
        let mut renamed = vec![false; out.values.len()];
        for (o, name) in outputs {
            let v = vmap[o];
            out.outputs.push(v);
            if !out.inputs.contains(&v) && !renamed[v] {
                out.values[v].name = name.to_string();
                renamed[v] = true;
            }
        }
        out.infer_shapes()?;
        Ok((out, new_weights))
    }
}

/// Keeps every intermediate shape within the limits, so later size arithmetic cannot overflow.
fn check_size(ctx: &Ctx, shape: &[usize]) -> Result<()> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if shape.len() > limits::MAX_RANK
        || shape.iter().any(|&d| d > limits::MAX_DIM)
        || n.is_none_or(|n| n > limits::MAX_TENSOR_ELEMENTS)
    {
        return Err(Error::Limit(format!(
            "output of node '{}' ({}) has shape {shape:?}, beyond the limits",
            ctx.name, ctx.op
        )));
    }
    Ok(())
}

fn model_error(op: &str, what: String) -> Error {
    Error::Unsupported {
        node: "<model>".into(),
        op: op.into(),
        what,
    }
}

/// The opset version of the default domain.
fn default_opset(model: &ModelProto) -> Result<i64> {
    let v = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version())
        .ok_or_else(|| {
            Error::Onnx("the model imports no opset of the default ONNX domain".into())
        })?;
    if !(MIN_OPSET..=MAX_OPSET).contains(&v) {
        return Err(model_error(
            "opset_import",
            format!("ONNX opset {v} (cnnrt reads opsets {MIN_OPSET} to {MAX_OPSET})"),
        ));
    }
    Ok(v)
}

/// A model input's per-sample shape and its declared batch (if a fixed number).
fn input_shape(vi: &ValueInfoProto) -> Result<(Vec<usize>, Option<usize>)> {
    let name = vi.name();
    let unsup = |what: String| Error::Unsupported {
        node: name.to_string(),
        op: "graph input".into(),
        what,
    };
    let tt = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t,
        _ => {
            return Err(unsup(
                "not a tensor (a sequence, map or optional, or no type at all)".into(),
            ))
        }
    };
    if tt.elem_type() != DataType::Float as i32 {
        let t = DataType::try_from(tt.elem_type())
            .map_or_else(|_| tt.elem_type().to_string(), |d| d.as_str_name().into());
        return Err(unsup(format!(
            "element type {t}; cnnrt runs float32 models"
        )));
    }
    let shape = tt
        .shape
        .as_ref()
        .ok_or_else(|| unsup("no shape; cnnrt needs fixed sizes except the batch".into()))?;
    let Some((first, rest)) = shape.dim.split_first() else {
        return Err(unsup("a scalar has no batch dimension".into()));
    };
    use super::proto::tensor_shape_proto::dimension::Value as D;
    let batch = match first.value {
        Some(D::DimValue(v)) => usize::try_from(v).ok(),
        _ => None,
    };
    let mut dims = Vec::with_capacity(rest.len());
    for (i, d) in rest.iter().enumerate() {
        match &d.value {
            Some(D::DimValue(v)) => dims.push(*v),
            Some(D::DimParam(p)) => {
                return Err(unsup(format!(
                    "dimension {} is symbolic ('{p}'); only the batch (first) dimension may be",
                    i + 1
                )))
            }
            None => {
                return Err(unsup(format!(
                    "dimension {} is unknown; only the batch (first) dimension may be",
                    i + 1
                )))
            }
        }
    }
    let (dims, _) = checked_dims(&format!("input '{name}'"), &dims)?;
    Ok((dims, batch))
}

/// Converts a decoded model.
pub(crate) fn convert(model: &ModelProto) -> Result<Imported> {
    let opset = default_opset(model)?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Onnx("the model has no graph".into()))?;
    if graph.node.len() > limits::MAX_NODES {
        return Err(Error::Limit(format!(
            "{} nodes (at most {})",
            graph.node.len(),
            limits::MAX_NODES
        )));
    }
    if !graph.sparse_initializer.is_empty() {
        return Err(model_error("initializer", "sparse initializers".into()));
    }
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &graph.node {
        for i in n.input.iter().filter(|s| !s.is_empty()) {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *uses.entry(o.name()).or_default() += 1;
    }
    let mut b = Builder {
        g: Graph::default(),
        weights: Vec::new(),
        static_batch: None,
        vals: HashMap::new(),
        uses,
        value_uses: Vec::new(),
        producer: Vec::new(),
        plain_weights: HashMap::new(),
    };
    for t in &graph.initializer {
        if b.vals.insert(t.name(), Val::Init(t)).is_some() {
            return Err(Error::Onnx(format!(
                "initializer '{}' is defined twice",
                t.name()
            )));
        }
    }
    let mut batches = Vec::new();
    for vi in &graph.input {
        if b.vals.contains_key(vi.name()) {
            continue; // an initializer listed as an input (IR < 4 style): a constant
        }
        let (shape, batch) = input_shape(vi)?;
        batches.push(batch);
        let v = b.g.add_value(vi.name(), shape);
        b.g.inputs.push(v);
        b.value_uses
            .push(b.uses.get(vi.name()).copied().unwrap_or(0));
        b.producer.push(None);
        b.vals.insert(vi.name(), Val::Dyn(v));
    }
    if b.g.inputs.is_empty() {
        return Err(Error::Onnx(
            "the model has no inputs (besides initializers)".into(),
        ));
    }
    let fixed: Vec<usize> = batches.iter().flatten().copied().collect();
    if fixed.windows(2).any(|w| w[0] != w[1]) {
        return Err(model_error(
            "graph input",
            format!("the inputs declare different batch sizes {fixed:?}; the first dimension of every input is the batch"),
        ));
    }
    if fixed.len() == batches.len() {
        b.static_batch = fixed.first().copied();
    }
    for node in &graph.node {
        let ctx = Ctx::new(node, opset);
        match node.domain() {
            "" | "ai.onnx" => {}
            d => {
                return Err(ctx.unsupported(format!(
                    "operator domain '{d}' (cnnrt reads the default ONNX domain only)"
                )))
            }
        }
        ops::convert_node(&mut b, &ctx)?;
    }
    let mut outputs = Vec::new();
    for o in &graph.output {
        match b.vals.get(o.name()) {
            Some(Val::Dyn(v)) => outputs.push((*v, o.name())),
            Some(_) => {
                return Err(model_error(
                    "graph output",
                    format!("output '{}' is a constant", o.name()),
                ))
            }
            None => {
                return Err(Error::Onnx(format!(
                    "graph output '{}' is never produced",
                    o.name()
                )))
            }
        }
    }
    if outputs.is_empty() {
        return Err(Error::Onnx("the model has no outputs".into()));
    }
    let (graph, weights) = b.finish(outputs)?;
    let producer = format!("{} {}", model.producer_name(), model.producer_version())
        .trim()
        .to_string();
    Ok(Imported {
        graph,
        weights,
        opset,
        producer,
    })
}
