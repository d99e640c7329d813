//! The checks the fuzz targets run on each input.
//!
//! They live here rather than in the targets so that `switch/tests/fuzz_corpus.rs`
//! can run the same checks over the committed corpus with stable Rust and no
//! libFuzzer (it includes this file as a module). Each target checks properties
//! of what it drives, not only that nothing panics; `README.md` lists them.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

mod core_frames;
mod etcd;
mod handshake;
mod kube;
mod merge;
mod netpol;
mod nodes;
mod saved;

pub use core_frames::core_frames;
pub use etcd::etcd_records;
pub use handshake::sleeve_handshake;
pub use kube::kube_objects;
pub use netpol::netpol_yaml;
pub use saved::saved_view;

/// The cluster CIDR the store targets judge nodes in.
const CLUSTER: &str = "10.244.0.0/16";
/// The tunnel port they expect of nodes.
const PORT: u16 = 8472;
/// The node they read the store as.
const ME: &str = "node-a";

/// This node as it runs, whatever the store says of it.
fn own() -> weft_switch::control::store::screen::Own {
    weft_switch::control::store::screen::Own {
        name: ME.to_owned(),
        subnet: "10.244.0.0/24".parse().expect("a CIDR"),
        underlay: std::net::Ipv4Addr::new(192, 168, 0, 1),
        vtep_mac: weft_switch::mac::MacAddr([2, 0, 0, 0, 0, 1]),
    }
}

/// The cluster CIDR, parsed.
fn cluster() -> ipnet::Ipv4Net {
    CLUSTER.parse().expect("a CIDR")
}

/// The Service CIDR the store targets compile Services in.
const SERVICE_CIDR: &str = "10.96.0.0/12";

/// A store's Services compile, for this node, with and without a Service CIDR,
/// into tables that pass the check the datapath relies on, and nothing refused
/// is in them.
fn check_service_table(model: &weft_switch::services::model::ServiceModel) {
    use weft_switch::services::compile::compile;
    for cidr in [None, Some(SERVICE_CIDR.parse().expect("a CIDR"))] {
        let (table, refused) = compile(model, ME, cidr);
        table
            .check()
            .unwrap_or_else(|e| panic!("a compiled Service table fails its check: {e}"));
        for p in &table.ports {
            for e in &p.endpoints {
                let named = |r: &&weft_switch::services::compile::Refused| {
                    r.address == e.ip && r.object.starts_with("EndpointSlice")
                };
                assert!(
                    !refused.iter().any(|r| named(&r)),
                    "{} refused and used",
                    e.ip
                );
            }
        }
    }
}
