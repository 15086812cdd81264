//! diffseg-sd (being written).
