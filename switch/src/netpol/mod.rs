//! Kubernetes NetworkPolicy: the objects it is made of ([`model`]), read from YAML
//! manifests ([`manifest`]), compiled into per-pod rule sets ([`compile`]) that the
//! datapath enforces (`crate::core::enforce`) without evaluating a selector.

pub mod compile;
pub mod manifest;
pub mod model;

#[cfg(test)]
mod tests;
