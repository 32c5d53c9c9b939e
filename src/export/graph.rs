//! A small builder for ONNX graphs: nodes with unique output names, initializers, and the typed
//! inputs and outputs, encoded with the prost types of the official schema (`onnx_proto`).

use super::onnx_proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, NodeProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// A node attribute value.
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
}

/// One dimension of a graph input or output: fixed or named (dynamic).
pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

/// Collects nodes and initializers; every node output gets a fresh name under a scope prefix.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    initializer_names: std::collections::HashSet<String>,
    counter: usize,
}

impl GraphBuilder {
    /// Adds a node with one output and returns the output's name (`scope/op_N`).
    pub fn node(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) -> String {
        self.node_outputs(scope, op, inputs, attrs, 1).remove(0)
    }

    /// Adds a node with `count` outputs and returns their names.
    pub fn node_outputs(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        count: usize,
    ) -> Vec<String> {
        self.counter += 1;
        let name = format!("{scope}/{op}_{}", self.counter);
        let outputs: Vec<String> = (0..count).map(|i| format!("{name}:{i}")).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            name: Some(name),
            op_type: Some(op.to_string()),
            attribute: attrs.into_iter().map(|(n, a)| attribute(n, a)).collect(),
            ..Default::default()
        });
        outputs
    }

    /// Renames the last node's (single) output, so that a graph output gets its public name.
    pub fn rename_last_output(&mut self, name: &str) {
        let node = self.nodes.last_mut().expect("a node was added");
        node.output[0] = name.to_string();
    }

    /// Adds an f32 initializer (row-major values) and returns its name.
    pub fn f32_initializer(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.raw_initializer(name, dims, DataType::Float, raw)
    }

    /// Adds an i8 initializer and returns its name.
    pub fn i8_initializer(&mut self, name: &str, dims: &[usize], values: &[i8]) -> String {
        let raw = values.iter().map(|&v| v as u8).collect();
        self.raw_initializer(name, dims, DataType::Int8, raw)
    }

    /// Adds an i64 initializer and returns its name.
    pub fn i64_initializer(&mut self, name: &str, dims: &[usize], values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.raw_initializer(name, dims, DataType::Int64, raw)
    }

    /// A scalar f32 constant (a rank-0 initializer), named after its value.
    pub fn f32_scalar(&mut self, value: f32) -> String {
        let name = format!("const/f32_{:08x}", value.to_bits());
        if !self.has_initializer(&name) {
            self.f32_initializer(&name, &[], &[value]);
        }
        name
    }

    /// A scalar or 1-D i64 constant, named after its values.
    pub fn i64_constant(&mut self, values: &[i64], scalar: bool) -> String {
        let joined: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let name = format!(
            "const/i64{}_{}",
            if scalar { "s" } else { "v" },
            joined.join("_")
        );
        if !self.has_initializer(&name) {
            let dims: &[usize] = if scalar { &[] } else { &[values.len()] };
            self.i64_initializer(&name, dims, values);
        }
        name
    }

    /// True when an initializer of this name exists (shared layers reference theirs again).
    pub fn has_initializer(&self, name: &str) -> bool {
        self.initializer_names.contains(name)
    }

    /// Adds an initializer once; a second one of the same name is the same parameter.
    fn raw_initializer(
        &mut self,
        name: &str,
        dims: &[usize],
        dtype: DataType,
        raw: Vec<u8>,
    ) -> String {
        if !self.initializer_names.insert(name.to_string()) {
            return name.to_string();
        }
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(dtype as i32),
            name: Some(name.to_string()),
            raw_data: Some(raw),
            ..Default::default()
        });
        name.to_string()
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, dtype: DataType, dims: &[Dim]) {
        self.inputs.push(value_info(name, dtype, dims));
    }

    /// Declares a graph output.
    pub fn output(&mut self, name: &str, dtype: DataType, dims: &[Dim]) {
        self.outputs.push(value_info(name, dtype, dims));
    }

    /// The bytes of all initializers (for the file-size check before encoding).
    pub fn initializer_bytes(&self) -> usize {
        self.initializers
            .iter()
            .map(|t| t.raw_data.as_ref().map_or(0, |r| r.len()))
            .sum()
    }

    pub fn finish(self, name: &str) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: Some(name.to_string()),
            initializer: self.initializers,
            input: self.inputs,
            output: self.outputs,
            ..Default::default()
        }
    }
}

fn attribute(name: &str, value: Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.r#type = Some(AttributeType::Int as i32);
            a.i = Some(i);
        }
        Attr::Float(f) => {
            a.r#type = Some(AttributeType::Float as i32);
            a.f = Some(f);
        }
        Attr::Ints(v) => {
            a.r#type = Some(AttributeType::Ints as i32);
            a.ints = v;
        }
    }
    a
}

fn value_info(name: &str, dtype: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n),
                Dim::Named(s) => dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
