//! Regenerates `src/onnx/proto.rs` from the vendored `proto/onnx.proto`, without `protoc`.
//!
//! Run from the repository root:
//!     cargo run --manifest-path tools/gen-onnx-proto/Cargo.toml
//! An optional argument names the repository root (default: the current directory).

use std::path::PathBuf;

const HEADER: &str = "\
// @generated from proto/onnx.proto (onnx 1.22.0, proto2) by tools/gen-onnx-proto
// (protox 0.10 + prost-build 0.14 `compile_fds`; no protoc needed). Do not edit by hand.
// To regenerate, from the repository root:
//     cargo run --manifest-path tools/gen-onnx-proto/Cargo.toml
// The ONNX schema is Apache-2.0, see proto/LICENSE.

";

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let proto_dir = root.join("proto");
    let fds = protox::compile(["onnx.proto"], [&proto_dir])
        .expect("protox failed to compile proto/onnx.proto");
    let out = tempdir(&root);
    prost_build::Config::new()
        .out_dir(&out)
        .compile_fds(fds)
        .expect("prost-build failed");
    let code = std::fs::read_to_string(out.join("onnx.rs")).expect("prost-build wrote no onnx.rs");
    let dest = root.join("src/onnx/proto.rs");
    std::fs::write(&dest, format!("{HEADER}{code}")).expect("cannot write src/onnx/proto.rs");
    let _ = std::fs::remove_dir_all(&out);
    eprintln!("wrote {}", dest.display());
}

fn tempdir(root: &std::path::Path) -> PathBuf {
    let dir = root.join("target").join("gen-onnx-proto-out");
    std::fs::create_dir_all(&dir).expect("cannot create the output folder");
    dir
}
