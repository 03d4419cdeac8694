//! `edge-node`: the gateway daemon. This first version opens (or initialises) the node's
//! store and reports its identity and state; sync, the local API and the shell arrive
//! with their issues.
fn main() {}
