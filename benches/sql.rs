//! Benchmark B6: SQL joins over the converged state, next to SQLite (being written).

fn main() {}
