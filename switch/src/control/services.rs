//! ClusterIP Services in the control plane: the model from its source (the
//! policy directory, or the store's view), compiled for this node whenever it
//! changes, and handed to the datapath ([`Daemon::set_service_table`]); and the
//! query behind `weft services`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use weft_proto as proto;

use crate::control::daemon::Daemon;
use crate::control::error::DaemonError;
use crate::control::store::screen::Quiet;
use crate::services::compile::{self, Refused};
use crate::services::model::{BadObject, ServiceModel};
use crate::services::{Readiness, ServiceTable};

/// The Services the daemon holds.
#[derive(Debug, Default)]
pub struct ServiceState {
    /// Where they come from: `dir <path>`, the store's kind; empty while none was
    /// read.
    pub source: String,
    /// When the Services in force are a saved view's (put in force at boot while
    /// the store could not be read), when it was saved; `None` once the store or
    /// the policy directory gave its own, even the same.
    pub saved_at: Option<String>,
    /// The model in force.
    pub model: Arc<ServiceModel>,
    /// It, compiled for this node.
    pub table: Arc<ServiceTable>,
    /// What the compile left out, each with why.
    pub refused: Vec<Refused>,
    /// The budget of lines about refused addresses and bad objects.
    quiet: Quiet,
}

impl ServiceState {
    /// Logs, within the budget, each refused address of `now` that was not
    /// refused before, naming its object (the EndpointSlice, or the Service).
    fn log_refused(&mut self, now: &[Refused]) {
        let before: BTreeSet<&Refused> = self.refused.iter().collect();
        let at = Instant::now();
        for r in now.iter().filter(|r| !before.contains(r)) {
            self.quiet.warn(at, format_args!("services: {r}"));
        }
    }

    /// Logs, within the budget, each object of `now` that does not read and did
    /// not in the model before.
    fn log_bad(&mut self, now: &[BadObject]) {
        let before: BTreeSet<&BadObject> = self.model.bad.iter().collect();
        let at = Instant::now();
        for b in now.iter().filter(|b| !before.contains(b)) {
            self.quiet.warn(at, format_args!("services: ignoring {b}"));
        }
    }
}

impl Daemon {
    /// Compiles `model`, read from `source`, for this node and hands the table to
    /// the datapath, unless it is the model in force already. Bad objects of the
    /// policy directory are logged here (a store logs its own, `log_bad` false).
    /// The compile runs outside the state lock: ten thousand Services must not
    /// hold up an ADD. (Its callers take turns: one task applies a store's views,
    /// one reads the policy directory, and a node has one or the other.)
    pub(crate) fn apply_services(&self, model: Arc<ServiceModel>, source: &str, log_bad: bool) {
        {
            let mut state = self.state.lock();
            let s = &mut state.services;
            if Arc::ptr_eq(&s.model, &model) || (s.source == source && *s.model == *model) {
                // The same Services, now read: no longer only the saved view's.
                s.saved_at = None;
                return;
            }
        }
        let (table, refused) =
            compile::compile(&model, &self.node.name, self.settings.host.service_cidr);
        let table = Arc::new(table);
        log::info!(
            "services: {} Services, {} EndpointSlices from {source}: {} ClusterIP ports, {} addresses refused, {} objects left out",
            model.services.len(),
            model.slices.len(),
            table.ports.len(),
            refused.len(),
            model.bad.len(),
        );
        {
            let mut state = self.state.lock();
            let s = &mut state.services;
            if log_bad {
                s.log_bad(&model.bad);
            }
            s.log_refused(&refused);
            (s.source, s.model, s.refused) = (source.to_owned(), model, refused);
            s.saved_at = None;
            s.table = table.clone();
            self.save_view(&state);
        }
        match self.set_service_table(table) {
            // With `services = "kube-proxy"` the table is only shown.
            Ok(()) | Err(DaemonError::ServicesOff) => {}
            Err(e) => log::warn!("services: the table is not put in force: {e}"),
        }
    }

    /// `weft services`: every ClusterIP port of the table in force, its
    /// endpoints, and what was left out.
    pub(crate) fn services_status(&self) -> proto::ServicesStatus {
        let state = self.state.lock();
        let s = &state.services;
        proto::ServicesStatus {
            source: match (s.source.as_str(), &s.saved_at) {
                ("", _) => "none".into(),
                (source, Some(at)) => format!("the {source} view saved at {at}"),
                (source, None) => source.into(),
            },
            service_cidr: self.settings.host.service_cidr.map(|c| c.to_string()),
            services: s.model.services.len(),
            slices: s.model.slices.len(),
            ports: s.table.ports.iter().map(port_info).collect(),
            refused: s.refused.iter().map(ToString::to_string).collect(),
            bad: s.model.bad.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A Service port as `weft services` shows it.
fn port_info(p: &crate::services::ServicePort) -> proto::ServicePortInfo {
    let f = &p.frontend;
    let protocol = match f.protocol {
        crate::services::Protocol::Tcp => "TCP",
        crate::services::Protocol::Udp => "UDP",
        crate::services::Protocol::Sctp => "SCTP",
    };
    proto::ServicePortInfo {
        name: p.name.to_string(),
        frontend: format!("{}:{}/{protocol}", f.ip, f.port),
        affinity_s: p.affinity.map(|d| d.as_secs()),
        internal_local: p.internal_local,
        endpoints: (p.endpoints.iter())
            .map(|e| proto::ServiceEndpointInfo {
                address: format!("{}:{}", e.ip, e.port),
                state: match e.readiness {
                    Readiness::Ready => "ready",
                    Readiness::ServingTerminating => "serving-terminating",
                }
                .into(),
                local: e.local,
            })
            .collect(),
    }
}
