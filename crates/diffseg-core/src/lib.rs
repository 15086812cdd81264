//! diffseg-core (being written).
