//! filled in by another change
