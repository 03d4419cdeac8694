//! The edgestore peer protocol: versioned frames, sans-IO sessions and the QUIC transport.
//! Empty until the sync issue lands; it depends on `edgestore`, never the reverse.
