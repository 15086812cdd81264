//! Hosts the workspace's runnable examples (examples/) and criterion benchmarks (benches/).
