//! Graph rewrites (being written).
