//! Per-layer statistics (being written).
