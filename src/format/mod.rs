//! The .cnnrt file format (being written).
