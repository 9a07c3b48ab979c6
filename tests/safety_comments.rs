//! Every `unsafe` block, impl and fn in `src/` carries a `// SAFETY:` comment (or, for an
//! `unsafe fn`, a `# Safety` doc section) just above it, and `unsafe` appears only in the
//! kernels, the SIMD layer and the file mapping.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// How far above an `unsafe` its justification may stand: dense SIMD loops state one
/// contract for the few raw loads and stores of a short loop body.
const WINDOW: usize = 16;

#[test]
fn every_unsafe_has_a_safety_comment() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut missing = Vec::new();
    let mut misplaced = Vec::new();
    let mut count = 0;
    for f in &files {
        let rel = f
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel == "onnx/proto.rs" {
            continue; // generated, and has no unsafe
        }
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let is_unsafe = code.contains("unsafe {")
                || code.contains("unsafe fn")
                || code.contains("unsafe impl")
                || code.trim_end().ends_with("unsafe");
            if !is_unsafe || code.contains("\"") {
                continue;
            }
            count += 1;
            let allowed =
                rel.starts_with("kernels/") || rel == "simd.rs" || rel.starts_with("format/");
            if !allowed {
                misplaced.push(format!("src/{rel}:{}", i + 1));
            }
            // Look back over attributes, doc lines and comments for the justification.
            let window = &lines[i.saturating_sub(WINDOW)..=i];
            let ok = window
                .iter()
                .any(|l| l.contains("SAFETY:") || l.contains("# Safety") || l.contains("Safety:"));
            if !ok {
                missing.push(format!("src/{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        count > 0,
        "the scan found no unsafe at all; is it looking at the right files?"
    );
    assert!(
        misplaced.is_empty(),
        "unsafe outside kernels / simd / format:\n{}",
        misplaced.join("\n")
    );
    assert!(
        missing.is_empty(),
        "{} unsafe without a SAFETY comment:\n{}",
        missing.len(),
        missing.join("\n")
    );
}
