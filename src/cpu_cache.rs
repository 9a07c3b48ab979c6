//! The size of this CPU's last-level cache, as the OS reports it (Linux sysfs), read once.
//!
//! Why: a session decides from it whether a model's weights stay in cache between runs
//! or stream from memory on every run, which changes where the GEMMs' prefetch hints
//! should put them (`kernels::gemm::PrefetchTo`).

use std::path::Path;
use std::sync::OnceLock;

/// Bytes of the largest-level data or unified cache CPU 0 sees (shared by the cores of a
/// CCD or socket on the machines here: 32 MiB on the AMD EPYC VM), or `None` where the
/// OS does not say.
pub fn last_level_bytes() -> Option<usize> {
    static LLC: OnceLock<Option<usize>> = OnceLock::new();
    *LLC.get_or_init(|| read_sysfs(Path::new("/sys/devices/system/cpu/cpu0/cache")))
}

/// The largest `level`'s `size` among `dir/index*/` entries of type Data or Unified.
fn read_sysfs(dir: &Path) -> Option<usize> {
    let read = |p: &Path, name: &str| std::fs::read_to_string(p.join(name)).ok();
    let mut best: Option<(u32, usize)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if !entry.file_name().to_string_lossy().starts_with("index") {
            continue;
        }
        let kind = read(&p, "type").unwrap_or_default();
        if kind.trim() == "Instruction" {
            continue;
        }
        let (Some(level), Some(size)) = (
            read(&p, "level").and_then(|l| l.trim().parse::<u32>().ok()),
            read(&p, "size").and_then(|s| parse_size(&s)),
        ) else {
            continue;
        };
        if best.is_none_or(|(l, _)| level > l) {
            best = Some((level, size));
        }
    }
    best.map(|(_, size)| size)
}

/// Parses sysfs cache sizes: `"32768K"`, `"1M"`, `"512"` (bytes).
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits.parse().ok()?;
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_their_units() {
        assert_eq!(parse_size("32768K\n"), Some(32 << 20));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("12X"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn the_highest_level_wins_and_instruction_caches_are_skipped() {
        let dir = std::env::temp_dir().join(format!("cnnrt-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (i, level, kind, size) in [
            (0, "1", "Data", "48K"),
            (1, "1", "Instruction", "32K"),
            (2, "2", "Unified", "1024K"),
            (3, "3", "Unified", "32768K"),
            (4, "4", "Instruction", "64M"),
        ] {
            let p = dir.join(format!("index{i}"));
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("level"), level).unwrap();
            std::fs::write(p.join("type"), kind).unwrap();
            std::fs::write(p.join("size"), size).unwrap();
        }
        std::fs::create_dir_all(dir.join("uevent")).unwrap();
        assert_eq!(read_sysfs(&dir), Some(32 << 20));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read_sysfs(&dir), None);
    }
}
