//! ISA detection (being written).
