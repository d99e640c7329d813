//! Kubernetes NetworkPolicy: the objects it is made of ([`model`]), read from YAML
//! manifests ([`manifest`]), compiled into per-pod rule sets ([`compile`]) that the
//! datapath enforces (`crate::core::enforce`) without evaluating a selector; what
//! does not read fails closed ([`last_good`]).

pub mod compile;
pub mod last_good;
pub mod manifest;
pub mod model;

#[cfg(test)]
mod tests;
