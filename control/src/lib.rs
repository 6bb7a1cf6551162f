//! spate's control plane and client.
#![forbid(unsafe_code)]
