//! Resource limits checked before any allocation, so a hostile file or input that declares
//! huge shapes gets an error rather than an out-of-memory abort.

/// Elements in any one tensor (activation or weight): 2^31, i.e. 8 GiB of f32.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 31;
/// Any single dimension.
pub const MAX_DIM: usize = 1 << 24;
/// Per-sample rank of any value or weight.
pub const MAX_RANK: usize = 8;
/// Nodes in a graph.
pub const MAX_NODES: usize = 100_000;
/// Values (tensors) in a graph.
pub const MAX_VALUES: usize = 200_000;
/// Bytes of the JSON graph and metadata sections.
pub const MAX_JSON_SECTION_BYTES: usize = 64 << 20;
/// Workspace a session may plan: 16 GiB.
pub const MAX_WORKSPACE_BYTES: usize = 16 << 30;
/// Batch a session may be planned for.
pub const MAX_BATCH: usize = 4096;
