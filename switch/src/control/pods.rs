//! Pods: attach, detach, check, garbage collection, and bringing pods back after a
//! restart. One attach or detach runs at a time, under the daemon's state lock: they
//! are rare next to packets, and ordering them keeps slots, snapshots and the pool
//! consistent.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use weft_ipam::Key;
use weft_proto::{
    AttachRequest, Attachment, AttachmentKey, CheckRequest, DetachRequest, PodRef, PortType,
};

use crate::control::daemon::{Daemon, Pod, State};
use crate::control::error::{io_err, DaemonError};
use crate::control::host::{host_end_name, Plug, PodPort, Queues};
use crate::control::netlink::{self, Ipv6Spec, LinkSpec, LinkState, Mark, NetlinkError, RouteSpec};
use crate::control::netns::{NetnsError, NsId};
use crate::mac::MacAddr;
use crate::tables::counters::Counters;
use crate::tables::{PortEntry, PortKind};

/// Where a pod is: its netns (by path, and which namespace the path named), what
/// its runtime called it, and its kind of port.
#[derive(Debug)]
struct Where<'a> {
    netns: &'a str,
    ns: NsId,
    pod: Option<PodRef>,
    port: PortType,
}

/// What [`Daemon::retire`] does with a pod's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Device {
    /// Delete it: the pod is detached, or its attach failed.
    Delete,
    /// Keep it: a pod from before a restart that could not be reopened may still run.
    Keep,
}

/// What the pool records with an address, so a restarted daemon finds the pod again.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct AttachMeta {
    netns: String,
    /// Which namespace `netns` named at the attach (none in records older than
    /// this): DEL and restore touch nothing in another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ns: Option<NsId>,
    /// The Kubernetes pod (none in records older than policy).
    #[serde(default)]
    pod: Option<PodRef>,
    /// The kind of port (TAP in records older than AF_XDP).
    #[serde(default)]
    port: PortType,
}

impl AttachMeta {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain struct serializes")
    }

    fn decode(bytes: &[u8]) -> Result<AttachMeta, DaemonError> {
        serde_json::from_slice(bytes)
            .map_err(|e| DaemonError::BadRecord(format!("unreadable attachment record: {e}")))
    }
}

/// The addresses a detach released: IPv4 and IPv6.
pub type Released = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// Whether a pod that could not be restored is surely gone, so that its address
/// may go to another pod.
fn surely_gone(e: &DaemonError) -> bool {
    match e {
        DaemonError::PodGone(_) | DaemonError::BadRecord(_) => true,
        DaemonError::Netlink(NetlinkError::Netns(e)) => e.is_gone(),
        _ => false,
    }
}

impl Daemon {
    /// Attaches a pod: address, interface in its netns, queues, routes.
    pub fn attach(&self, req: &AttachRequest) -> Result<Attachment, DaemonError> {
        // The pool's rules for a key are Linux's for the interface name.
        let key = Key::new(&req.container_id, &req.ifname);
        key.validate()?;
        // Before anything is taken: a path that is no pod's namespace fails here.
        let ns = self.host.netns_id(Path::new(&req.netns))?;
        let mut state = self.state.lock();
        // Checked under the lock, so no attach starts once shutdown has begun.
        if self.stopping() {
            return Err(DaemonError::ShuttingDown);
        }
        if let Some(pod) = state.pods.iter().find(|p| p.key == key) {
            return self.attached_again(req, &ns, pod);
        }
        let wanted = req.port.unwrap_or(self.settings.datapath.pod_port);
        let meta = AttachMeta {
            netns: req.netns.clone(),
            ns: Some(ns),
            pod: req.pod.clone(),
            port: wanted,
        };
        let reservation = self.pool.reserve(&key, req.requested_ip, &meta.encode())?;
        let ip = reservation.allocation().ip;
        let reservation6 = self.reserve6(&key, req)?;
        let ip6 = reservation6.as_ref().map(|r| r.allocation().ip);
        // The address is decided; its commit (an fsync) runs while the interface is
        // made, which takes longer. A crash in between leaves either no record (the
        // runtime's DEL then deletes the interface by name, as for any failed ADD) or
        // a record whose interface restore reopens or, if it is missing, releases.
        // The IPv6 record is committed first: a crash between the two leaves an IPv6
        // record without its IPv4 one, which restore releases, never an IPv4 record
        // whose pod holds an IPv6 address the pool thinks free.
        let (committed, plugged) = std::thread::scope(|s| {
            let commit = s.spawn(move || {
                reservation6.map(|r| r.commit()).transpose()?;
                reservation.commit()
            });
            let at = Where {
                netns: &req.netns,
                ns,
                pod: req.pod.clone(),
                port: wanted,
            };
            let plugged = self.plug(&mut state, key.clone(), at, (ip, ip6), Plug::Create);
            let committed = match commit.join() {
                Ok(committed) => committed.map(drop).map_err(DaemonError::from),
                Err(_) => Err(io_err("committing the allocation")(std::io::Error::other(
                    "the commit thread panicked",
                ))),
            };
            (committed, plugged)
        });
        let entry = self.settle_attach(&mut state, &key, ip, committed, plugged)?;
        let port = self.attachment(&entry).port;
        if port != wanted {
            // It fell back to TAP: the record says so, for a restart to reopen it.
            // (Should this fail, the record says AF_XDP, a restart finds no host end
            // and keeps the pod and its address until its DEL.)
            let meta = AttachMeta { port, ..meta };
            if let Err(e) = self.pool.update_meta(&key, &meta.encode()) {
                log::error!("recording the TAP fallback of {ip}: {e}");
            }
        }
        log::info!(
            "attached {} {} in {} as {ip} on a {port} port",
            req.container_id,
            req.ifname,
            req.netns,
        );
        Ok(self.attachment(&entry))
    }

    /// Decides the IPv6 address of an attach, on a dual-stack node. It is a second
    /// record, in the IPv6 pool's own database; the IPv4 one, which holds the pod's
    /// details, decides whether a pod is restored, and an IPv6 record without one
    /// is released at restore.
    fn reserve6(
        &self,
        key: &Key,
        req: &AttachRequest,
    ) -> Result<Option<weft_ipam::Reservation<'_, ipnet::Ipv6Net>>, DaemonError> {
        match (&self.pool6, req.requested_ip6) {
            (Some(pool6), requested) => Ok(Some(pool6.reserve(key, requested, b"")?)),
            (None, Some(ip6)) => Err(DaemonError::Invalid(format!(
                "{ip6} was requested, but this node has no IPv6 pod subnet"
            ))),
            (None, None) => Ok(None),
        }
    }

    /// The answer to an attach of a key that is attached already: the same
    /// attachment, if it asks for the same netns (`ns`, by the same path) and
    /// address.
    fn attached_again(
        &self,
        req: &AttachRequest,
        ns: &NsId,
        pod: &Pod,
    ) -> Result<Attachment, DaemonError> {
        if pod.entry.netns.as_deref() != Some(req.netns.as_str()) || !pod.ns.same(ns) {
            return Err(DaemonError::Invalid(format!(
                "container {} interface {} is already attached in {}",
                req.container_id,
                req.ifname,
                pod.entry.netns.as_deref().unwrap_or("?")
            )));
        }
        if let Some(wanted) = req.requested_ip.filter(|ip| *ip != pod.entry.ip) {
            return Err(DaemonError::Invalid(format!(
                "container {} interface {} already holds {}, not the requested {wanted}",
                req.container_id, req.ifname, pod.entry.ip,
            )));
        }
        if let Some(wanted) = req.requested_ip6.filter(|ip| Some(*ip) != pod.entry.ip6) {
            return Err(DaemonError::Invalid(format!(
                "container {} interface {} does not hold the requested {wanted}",
                req.container_id, req.ifname,
            )));
        }
        Ok(self.attachment(&pod.entry))
    }

    /// Finishes an attach whose address commit and interface are done, each well or
    /// not: publishes the port, or undoes whatever was made and releases the address.
    fn settle_attach(
        &self,
        state: &mut State,
        key: &Key,
        ip: Ipv4Addr,
        committed: Result<(), DaemonError>,
        plugged: Result<PortEntry, DaemonError>,
    ) -> Result<PortEntry, DaemonError> {
        let result = match (committed, plugged) {
            (Ok(()), Ok(entry)) => match self.publish(state) {
                Ok(()) => return Ok(entry),
                Err(e) => {
                    self.unplug(state, key);
                    Err(e)
                }
            },
            (Ok(()), Err(e)) => Err(e),
            // The IPv6 record may be written though the IPv4 one is not: both are
            // released (releasing what was never written does nothing).
            (Err(e), Ok(_)) => {
                self.unplug(state, key);
                Err(e)
            }
            (Err(_), Err(e)) => Err(e),
        };
        if let Err(re) = self.pool.release(key) {
            log::error!("releasing {ip} after a failed attach: {re}");
        }
        self.release6(key);
        result
    }

    /// Creates (or, after a restart, reopens) the pod's interface in its netns, hands
    /// its queues to the workers and records the port. The caller publishes.
    fn plug(
        &self,
        state: &mut State,
        key: Key,
        at: Where<'_>,
        (ip, ip6): (Ipv4Addr, Option<Ipv6Addr>),
        how: Plug,
    ) -> Result<PortEntry, DaemonError> {
        let netns = at.netns;
        let mac = MacAddr::for_ip(ip);
        let spec = LinkSpec {
            name: key.ifname.clone(),
            mac,
            mtu: self.node.pod_mtu,
            addr: ip,
            prefix_len: self.node.subnet.prefix_len(),
            ipv6: (self.node.v6.zip(ip6)).map(|(v6, addr)| Ipv6Spec {
                addr,
                prefix_len: v6.subnet.prefix_len(),
                gateway: Some(v6.gateway),
            }),
            routes: vec![RouteSpec::DefaultVia(self.node.gateway)],
            alias: Some(netlink::pod_alias(&key.container_id)),
        };
        let (queues, port) = self.open_port(&key, netns, &at.ns, &spec, how, at.port)?;
        let entry = PortEntry {
            id: state.next_port_id(),
            kind: PortKind::Pod,
            name: key.ifname.clone(),
            mac,
            ip,
            ip6,
            container_id: Some(key.container_id.clone()),
            pod: at.pod.clone(),
            netns: Some(netns.to_owned()),
            queues: queues.len() as u16,
            offloads: port == PortType::Tap,
            uso: queues.first().is_some_and(|q| q.takes_uso()),
            counters: Arc::new(Counters::new(self.settings.datapath.workers)),
            policy: None,
        };
        state.pods.push(Pod {
            key,
            entry: entry.clone(),
            pod: at.pod,
            ns: at.ns,
        });
        if let Err(e) = self.hand_queues(entry.id, &entry.counters, queues) {
            let pod = state.pods.pop().expect("the pod just pushed");
            let device = match how {
                Plug::Create => Device::Delete,
                Plug::Reopen => Device::Keep,
            };
            self.retire(state, pod, device);
            return Err(e);
        }
        Ok(entry)
    }

    /// Opens the pod's port of kind `port` in the namespace `ns` at `netns`; an
    /// AF_XDP port that cannot be made on a new attach becomes a TAP port if the
    /// settings allow. Returns the queues and the kind of port they are.
    fn open_port(
        &self,
        key: &Key,
        netns: &str,
        ns: &NsId,
        spec: &LinkSpec,
        how: Plug,
        port: PortType,
    ) -> Result<(Queues, PortType), DaemonError> {
        let queues = self.settings.datapath.port_queues;
        let plan = match port {
            PortType::Tap => PodPort::Tap,
            PortType::Afxdp => PodPort::Afxdp {
                host_end: host_end_name(&key.container_id, &key.ifname),
                afxdp: self.settings.afxdp,
            },
        };
        let netns = Path::new(netns);
        match self.host.open_pod_port(netns, ns, spec, queues, how, &plan) {
            Ok(q) => Ok((q, port)),
            // The failed attempt left nothing behind; a TAP port is made afresh.
            Err(e @ DaemonError::Afxdp(_))
                if how == Plug::Create && self.settings.afxdp.fallback =>
            {
                log::warn!(
                    "{} {}: {e}; falling back to a TAP port (afxdp-fallback)",
                    key.container_id,
                    key.ifname
                );
                let q = self
                    .host
                    .open_pod_port(netns, ns, spec, queues, how, &PodPort::Tap)?;
                Ok((q, PortType::Tap))
            }
            Err(e) => Err(e),
        }
    }

    /// Undoes a [`Daemon::plug`] that created the pod's interface, as far as it got.
    fn unplug(&self, state: &mut State, key: &Key) {
        if let Some(i) = state.pods.iter().position(|p| &p.key == key) {
            let pod = state.pods.swap_remove(i);
            self.retire(state, pod, Device::Delete);
        }
    }

    /// Retires `pod`, already out of `state.pods`: the workers close its queues, its
    /// slot is freed, and its (persistent) device is deleted from the pod's netns or
    /// kept. Every step tolerates what is already gone.
    fn retire(&self, state: &mut State, pod: Pod, device: Device) {
        let key = &pod.key;
        if let Err(e) = self.close_queues(pod.entry.id) {
            log::error!(
                "closing the queues of {} {}: {e}",
                key.container_id,
                key.ifname
            );
        }
        state.free.push(pod.entry.id.slot);
        if let (Device::Delete, Some(netns)) = (device, &pod.entry.netns) {
            let mark = Mark {
                alias: netlink::pod_alias(&key.container_id),
                port: Some(self.attachment(&pod.entry).port),
            };
            let path = Path::new(netns);
            self.host
                .delete_interface(path, Some(&pod.ns), &key.ifname, &mark);
        }
    }

    /// Brings back the pods recorded in the pool after a restart: their interfaces
    /// persisted, so the daemon reopens their queues. An attachment is released
    /// only when it is surely gone: its netns path is missing (`ENOENT`) or names
    /// another namespace than the one recorded, its interface is gone, or its
    /// record is unreadable. On any other failure (`EACCES`, `EMFILE`...) the pod
    /// may still run, so its address and interface stay.
    pub(crate) fn restore(&self) -> Result<(), DaemonError> {
        let allocations = self.pool.list()?;
        if let Some(pool6) = &self.pool6 {
            // An IPv6 record whose IPv4 one is gone (an attach that crashed between
            // the two commits) belongs to no pod.
            let keys: HashSet<&Key> = allocations.iter().map(|a| &a.key).collect();
            for orphan in pool6.retain(|k| keys.contains(k))? {
                log::warn!("releasing {} of {}: no pod holds it", orphan.ip, orphan.key);
            }
        }
        if allocations.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock();
        let (mut restored, mut released, mut kept) = (0, 0, 0);
        for alloc in allocations {
            let ip6 = match &self.pool6 {
                Some(pool6) => pool6.get(&alloc.key)?.map(|a| a.ip),
                None => None,
            };
            let outcome = AttachMeta::decode(&alloc.meta)
                .and_then(|meta| self.reopen(&mut state, &alloc.key, (alloc.ip, ip6), meta));
            let (who, ip) = (&alloc.key, alloc.ip);
            match outcome {
                Ok(()) => restored += 1,
                Err(e) if surely_gone(&e) => {
                    log::warn!(
                        "not restoring {} {} ({ip}): {e}; releasing it",
                        who.container_id,
                        who.ifname
                    );
                    self.pool.release(who)?;
                    self.release6(who);
                    released += 1;
                }
                // The pod may still be running: its address and interface stay until
                // its DEL, or GC, says it is gone.
                Err(e) => {
                    log::error!(
                        "could not restore {} {} ({ip}): {e}; keeping its address and \
                         interface, with no traffic, until its DEL or a GC",
                        who.container_id,
                        who.ifname
                    );
                    kept += 1;
                }
            }
        }
        self.publish(&mut state)?;
        log::info!(
            "restored {restored} pods, released {released} that are gone, \
             kept {kept} that could not be restored"
        );
        Ok(())
    }

    /// Reopens the pod `meta` records, in the namespace it recorded. A record older
    /// than namespace identities gets the identity its path names now.
    fn reopen(
        &self,
        state: &mut State,
        key: &Key,
        (ip, ip6): (Ipv4Addr, Option<Ipv6Addr>),
        meta: AttachMeta,
    ) -> Result<(), DaemonError> {
        let found = self.host.netns_id(Path::new(&meta.netns))?;
        if let Some(recorded) = meta.ns.filter(|r| !r.same(&found)) {
            let path = meta.netns.clone();
            return Err(NetlinkError::from(NetnsError::Replaced {
                path,
                recorded,
                found,
            })
            .into());
        }
        let at = Where {
            netns: &meta.netns,
            ns: found,
            pod: meta.pod.clone(),
            port: meta.port,
        };
        self.plug(state, key.clone(), at, (ip, ip6), Plug::Reopen)?;
        if meta.ns.is_none() {
            let meta = AttachMeta {
                ns: Some(found),
                ..meta
            };
            if let Err(e) = self.pool.update_meta(key, &meta.encode()) {
                log::warn!("recording the namespace of {ip}: {e}");
            }
        }
        Ok(())
    }

    /// Detaches a pod. Succeeds when it, or any part of it, is already gone; always
    /// releases the address.
    pub fn detach(&self, req: &DetachRequest) -> Result<Released, DaemonError> {
        let key = Key::new(&req.container_id, &req.ifname);
        let mut state = self.state.lock();
        let known = state.pods.iter().any(|p| p.key == key);
        let released = self.detach_locked(&mut state, &key)?;
        // An ADD that failed, or that weftd died in the middle of, may have left its
        // interface behind without a record; delete it by name, as the reference
        // plugins' DEL does, unless another attachment owns that name there.
        let stray = req.netns.as_deref().filter(|netns| {
            !known
                && !state
                    .pods
                    .iter()
                    .any(|p| p.entry.netns.as_deref() == Some(*netns) && p.key.ifname == req.ifname)
        });
        if let Some(netns) = stray {
            // With no record, only its mark says whether weft made it.
            let mark = Mark {
                alias: netlink::pod_alias(&req.container_id),
                port: None,
            };
            let path = Path::new(netns);
            if self.host.delete_interface(path, None, &req.ifname, &mark) {
                log::info!("deleted stray interface {} in {netns}", req.ifname);
            }
        }
        Ok(released)
    }

    fn detach_locked(&self, state: &mut State, key: &Key) -> Result<Released, DaemonError> {
        if let Some(i) = state.pods.iter().position(|p| &p.key == key) {
            // Unroute first, then close the queues and delete the device.
            let pod = state.pods.swap_remove(i);
            if let Err(e) = self.publish(state) {
                state.pods.push(pod);
                return Err(e);
            }
            self.retire(state, pod, Device::Delete);
            log::info!("detached {} {}", key.container_id, key.ifname);
        }
        let ip = self.pool.release(key)?.map(|a| a.ip);
        let ip6 = match &self.pool6 {
            Some(pool6) => pool6.release(key)?.map(|a| a.ip),
            None => None,
        };
        Ok((ip, ip6))
    }

    /// Releases `key`'s IPv6 address, if the node has an IPv6 pool, logging a
    /// failure (the caller is undoing something already).
    fn release6(&self, key: &Key) {
        if let Some(Err(e)) = self.pool6.as_ref().map(|p| p.release(key)) {
            log::error!("releasing the IPv6 address of {key}: {e}");
        }
    }

    /// Verifies that an attachment's interface, address and routes are in place.
    pub fn check(&self, req: &CheckRequest) -> Result<Attachment, DaemonError> {
        let key = Key::new(&req.container_id, &req.ifname);
        let found = {
            let state = self.state.lock();
            let pod = state.pods.iter().find(|p| p.key == key);
            pod.map(|p| (p.entry.clone(), p.ns))
        };
        let (entry, ns) = found.ok_or_else(|| {
            DaemonError::CheckFailed(format!(
                "no attachment for container {} interface {}",
                req.container_id, req.ifname
            ))
        })?;
        if entry.netns.as_deref() != Some(req.netns.as_str()) {
            return Err(DaemonError::CheckFailed(format!(
                "container {} interface {} is attached in {}, not {}",
                req.container_id,
                req.ifname,
                entry.netns.as_deref().unwrap_or("?"),
                req.netns
            )));
        }
        let link = match self.host.inspect(Path::new(&req.netns), &ns, &req.ifname) {
            Ok(link) => link,
            Err(e @ (NetlinkError::Netns(_) | NetlinkError::Setns { .. })) => {
                return Err(DaemonError::CheckFailed(e.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        let fail = |what: String| {
            DaemonError::CheckFailed(format!("{} in {}: {what}", req.ifname, req.netns))
        };
        let link = link.ok_or_else(|| fail("the interface is missing".into()))?;
        self.link_as_attached(&entry, &link).map_err(fail)?;
        Ok(self.attachment(&entry))
    }

    /// What differs between `link` and how `entry` was attached, if anything.
    fn link_as_attached(&self, entry: &PortEntry, link: &LinkState) -> Result<(), String> {
        let prefix = self.node.subnet.prefix_len();
        if link.mac != Some(entry.mac) {
            return Err(format!("MAC is {:?}, want {}", link.mac, entry.mac));
        }
        if link.mtu != Some(self.node.pod_mtu) {
            return Err(format!("MTU is {:?}, want {}", link.mtu, self.node.pod_mtu));
        }
        if !link.up {
            return Err("the interface is down".into());
        }
        if !link.addrs.contains(&(entry.ip, prefix)) {
            return Err(format!(
                "address {}/{prefix} is missing (has {:?})",
                entry.ip, link.addrs
            ));
        }
        if !link.default_gateways.contains(&self.node.gateway) {
            return Err(format!("no default route via {}", self.node.gateway));
        }
        if let Some((v6, ip6)) = self.node.v6.zip(entry.ip6) {
            let prefix = v6.subnet.prefix_len();
            if !link.addrs6.contains(&(ip6, prefix)) {
                return Err(format!(
                    "address {ip6}/{prefix} is missing (has {:?})",
                    link.addrs6
                ));
            }
            if !link.default_gateways6.contains(&v6.gateway) {
                return Err(format!("no IPv6 default route via {}", v6.gateway));
            }
        }
        Ok(())
    }

    /// Releases every attachment and address whose key is not in `valid`.
    pub fn gc(&self, valid: &[AttachmentKey]) -> Result<Vec<AttachmentKey>, DaemonError> {
        let keep: std::collections::HashSet<Key> = valid
            .iter()
            .map(|k| Key::new(&k.container_id, &k.ifname))
            .collect();
        // Under the state lock: no attach can allocate between the sweep and `retain`.
        let mut state = self.state.lock();
        let stale: Vec<Key> = state
            .pods
            .iter()
            .filter(|p| !keep.contains(&p.key))
            .map(|p| p.key.clone())
            .collect();
        // As much as can be collected is, as the CNI spec asks; the first failure is
        // reported after.
        let mut failed = None;
        for key in &stale {
            if let Err(e) = self.detach_locked(&mut state, key) {
                log::warn!("gc of {} {}: {e}", key.container_id, key.ifname);
                failed.get_or_insert(e);
            }
        }
        let mut orphans: Vec<Key> = (self.pool.retain(|k| keep.contains(k))?.into_iter())
            .map(|a| a.key)
            .collect();
        if let Some(pool6) = &self.pool6 {
            orphans.extend(
                pool6
                    .retain(|k| keep.contains(k))?
                    .into_iter()
                    .map(|a| a.key),
            );
        }
        let mut released: Vec<AttachmentKey> = stale
            .into_iter()
            .chain(orphans)
            .map(|k| AttachmentKey {
                container_id: k.container_id,
                ifname: k.ifname,
            })
            .collect();
        released.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        released.dedup();
        if !released.is_empty() {
            log::info!("gc released {} attachments", released.len());
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::os::fd::{AsRawFd, RawFd};
    use std::os::unix::net::UnixDatagram;
    use std::path::PathBuf;

    use ipnet::Ipv4Net;
    use parking_lot::Mutex;
    use weft_proto::{AttachRequest, DetachRequest, ErrorKind, Reply, Request, Response};

    use super::*;
    use crate::control::config::{Mode, Options, Settings};
    use crate::control::host::{Host, Queues};
    use crate::control::routes::{DirectRoute, RouteTo};
    use crate::control::saved;
    use crate::control::store::{
        ClusterStore, ClusterView, Joined, Joining, NoStore, NodeEntry, OnChange, StoreError,
    };
    use crate::io::port::{Offload, PortQueue};
    use crate::mac::MacAddr;
    use crate::tables::fib::NextHop;

    /// A queue that never has a frame. It polls on one end of a socket pair, or, to
    /// make a worker refuse it, on a regular file, which epoll does not take.
    #[derive(Debug)]
    enum FakeQueue {
        Pollable(UnixDatagram),
        Unpollable(std::fs::File),
    }

    impl PortQueue for FakeQueue {
        fn recv(&mut self, _: &mut [u8]) -> std::io::Result<Option<(Offload, usize)>> {
            Ok(None)
        }
        fn send(&mut self, _: &Offload, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn fd(&self) -> RawFd {
            match self {
                FakeQueue::Pollable(a) => a.as_raw_fd(),
                FakeQueue::Unpollable(f) => f.as_raw_fd(),
            }
        }
    }

    /// How the fake host's next pod port goes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Next {
        Works,
        /// The device cannot be made.
        Fails,
        /// The device is made, but its queues cannot be polled.
        Unpollable,
        /// An AF_XDP port cannot be made; a TAP port can.
        NoAfxdp,
    }

    /// A host whose interfaces are names in a set, and whose routes are a table.
    #[derive(Debug)]
    struct FakeHost {
        next: Mutex<Next>,
        interfaces: Mutex<BTreeSet<(String, String)>>,
        /// What each netns path names: a namespace (by its inode), or the errno
        /// opening it fails with. A path not listed names the namespace 1.
        namespaces: Mutex<std::collections::BTreeMap<String, Result<u64, i32>>>,
        dir: PathBuf,
        /// How the host reaches addresses.
        reach: Mutex<std::collections::BTreeMap<Ipv4Addr, RouteTo>>,
        /// weft's host routes now.
        routes: Mutex<Vec<DirectRoute>>,
        forwarding: std::sync::atomic::AtomicBool,
        /// weft's nftables table now, if it is installed.
        masquerade: Mutex<Option<crate::control::masquerade::Masquerade>>,
        /// The last pod interface's specification.
        last_spec: Mutex<Option<LinkSpec>>,
    }

    impl FakeHost {
        fn queues(&self, n: usize, pollable: bool) -> Queues {
            (0..n)
                .map(|_| {
                    let q = if pollable {
                        let (a, _) = UnixDatagram::pair().expect("a socket pair");
                        FakeQueue::Pollable(a)
                    } else {
                        let file = std::fs::File::create(self.dir.join("unpollable"))
                            .expect("a regular file");
                        FakeQueue::Unpollable(file)
                    };
                    Box::new(q) as Box<dyn PortQueue>
                })
                .collect()
        }
    }

    impl Host for FakeHost {
        fn open_host_port(&self, _: &LinkSpec, queues: usize) -> Result<Queues, DaemonError> {
            Ok(self.queues(queues, true))
        }

        fn netns_id(&self, netns: &Path) -> Result<NsId, NetlinkError> {
            let path = netns.display().to_string();
            match self.namespaces.lock().get(&path).copied().unwrap_or(Ok(1)) {
                Ok(ino) => Ok(NsId {
                    dev: 4,
                    ino,
                    cookie: Some(ino * 1000),
                }),
                Err(errno) => Err(NetnsError::Open {
                    path,
                    source: std::io::Error::from_raw_os_error(errno),
                }
                .into()),
            }
        }

        fn open_pod_port(
            &self,
            netns: &Path,
            ns: &NsId,
            spec: &LinkSpec,
            queues: usize,
            _how: Plug,
            port: &PodPort,
        ) -> Result<Queues, DaemonError> {
            assert_eq!(self.netns_id(netns)?, *ns, "the namespace checked is used");
            let next = *self.next.lock();
            if next == Next::Fails {
                return Err(DaemonError::Invalid("no such device".into()));
            }
            if let (Next::NoAfxdp, PodPort::Afxdp { host_end, .. }) = (next, port) {
                let e = crate::io::xsk::PortError::NoDevice(host_end.clone());
                return Err(DaemonError::Afxdp(e));
            }
            let name = (netns.display().to_string(), spec.name.clone());
            self.interfaces.lock().insert(name);
            *self.last_spec.lock() = Some(spec.clone());
            Ok(self.queues(queues, next != Next::Unpollable))
        }

        fn delete_interface(
            &self,
            netns: &Path,
            ns: Option<&NsId>,
            ifname: &str,
            _: &Mark,
        ) -> bool {
            if ns.is_some_and(|ns| self.netns_id(netns).ok().as_ref() != Some(ns)) {
                return false;
            }
            let name = (netns.display().to_string(), ifname.to_owned());
            self.interfaces.lock().remove(&name)
        }

        fn inspect(&self, _: &Path, _: &NsId, _: &str) -> Result<Option<LinkState>, NetlinkError> {
            Ok(None)
        }

        fn route_to(&self, dst: Ipv4Addr) -> Result<Option<RouteTo>, NetlinkError> {
            Ok(self.reach.lock().get(&dst).cloned())
        }

        fn sync_direct_routes(&self, wanted: &[DirectRoute]) -> Result<usize, NetlinkError> {
            let mut routes = self.routes.lock();
            let removed = routes.iter().filter(|r| !wanted.contains(r)).count();
            *routes = wanted.to_vec();
            Ok(removed)
        }

        fn enable_forwarding(&self) -> std::io::Result<()> {
            self.forwarding
                .store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }

        fn set_masquerade(
            &self,
            table: Option<&crate::control::masquerade::Masquerade>,
        ) -> Result<(), crate::control::masquerade::MasqueradeError> {
            *self.masquerade.lock() = table.copied();
            Ok(())
        }

        fn close_host_port(&self) -> Result<bool, NetlinkError> {
            Ok(false)
        }
    }

    struct Fixture {
        daemon: Arc<Daemon>,
        host: Arc<FakeHost>,
        dir: PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            self.daemon.shutdown();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A daemon on loopback (nothing is sent: it has no peers) over a fake host.
    fn fixture(tag: &str) -> Fixture {
        fixture_with(tag, Options::default())
    }

    /// Like [`fixture`], with the options `extra` sets.
    fn fixture_with(tag: &str, extra: Options) -> Fixture {
        let (settings, dir) = settings_for(tag, extra);
        let host = fake_host(&dir);
        let daemon =
            Daemon::start_with(settings, host.clone(), Arc::new(NoStore)).expect("the daemon");
        Fixture { daemon, host, dir }
    }

    /// The settings of a node `n` on loopback, with the options `extra` sets, and
    /// its scratch directory (made empty).
    /// Each test's scratch directory is named by its tag and the process, and the
    /// tests of this binary run at once: a tag used twice would let one test
    /// remove the other's directory under it, so a second use fails at once.
    fn settings_for(tag: &str, extra: Options) -> (Settings, PathBuf) {
        static TAGS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
        assert!(
            TAGS.lock().insert(tag.to_owned()),
            "the tag {tag:?} is another test's"
        );
        let dir = std::env::temp_dir().join(format!("weft-pods-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port")
            .port();
        let mut settings = extra;
        settings.node_name = Some("n".into());
        settings.underlay_ip = Some(Ipv4Addr::LOCALHOST);
        settings.pod_subnet = Some("10.244.1.0/24".parse().expect("a subnet"));
        settings.cluster_cidr = Some("10.244.0.0/16".parse().expect("a CIDR"));
        settings.tunnel.port = Some(port);
        settings.datapath.workers = Some(2);
        settings.state_dir = Some(dir.join("state"));
        settings.socket = Some(dir.join("weft.sock"));
        (settings.resolve().expect("settings"), dir)
    }

    fn fake_host(dir: &Path) -> Arc<FakeHost> {
        Arc::new(FakeHost {
            next: Mutex::new(Next::Works),
            interfaces: Mutex::new(BTreeSet::new()),
            namespaces: Mutex::new(Default::default()),
            dir: dir.to_path_buf(),
            reach: Mutex::new(Default::default()),
            routes: Mutex::new(Vec::new()),
            forwarding: Default::default(),
            masquerade: Default::default(),
            last_spec: Default::default(),
        })
    }

    fn attach(d: &Daemon, id: &str) -> Response {
        attach_port(d, id, None)
    }

    /// Nothing of a failed attach is left: no address, no pod, no port slot, no
    /// interface.
    fn assert_nothing_left(f: &Fixture) {
        assert_eq!(
            f.daemon.pool.len().expect("the pool"),
            0,
            "an address leaked"
        );
        let state = f.daemon.state.lock();
        assert!(state.pods.is_empty(), "{:?}", state.pods);
        assert_eq!(f.daemon.tables().ports.len(), 1, "only the host port");
        assert!(f.host.interfaces.lock().is_empty(), "an interface leaked");
    }

    #[test]
    fn a_device_that_cannot_be_made_leaves_nothing_behind() {
        let f = fixture("fails");
        *f.host.next.lock() = Next::Fails;
        match attach(&f.daemon, "c1") {
            Response::Error(e) => {
                assert!(e.message.contains("no such device"), "{e:?}");
                assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e:?}");
            }
            ok => panic!("the attach succeeded: {ok:?}"),
        }
        assert_nothing_left(&f);
        // The slot was never taken: the next pod gets the first one.
        *f.host.next.lock() = Next::Works;
        assert!(matches!(
            attach(&f.daemon, "c2"),
            Response::Ok(Reply::Attached(_))
        ));
        assert_eq!(f.daemon.tables().ports[1].id.slot, 1);
    }

    #[test]
    fn queues_a_worker_refuses_undo_the_device_and_the_address() {
        let f = fixture("unpoll");
        *f.host.next.lock() = Next::Unpollable;
        match attach(&f.daemon, "c1") {
            Response::Error(e) => assert!(e.message.contains("could not poll"), "{e:?}"),
            ok => panic!("the attach succeeded: {ok:?}"),
        }
        assert_nothing_left(&f);
        // The freed slot is reused, with a new generation.
        *f.host.next.lock() = Next::Works;
        assert!(matches!(
            attach(&f.daemon, "c2"),
            Response::Ok(Reply::Attached(_))
        ));
        let id = f.daemon.tables().ports[1].id;
        assert_eq!((id.slot, id.generation), (1, 1));
    }

    #[test]
    fn attach_then_detach_leaves_nothing_behind() {
        let f = fixture("works");
        let Response::Ok(Reply::Attached(a)) = attach(&f.daemon, "c1") else {
            panic!("the attach failed");
        };
        assert_eq!(a.ip, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(f.host.interfaces.lock().len(), 1);
        assert_eq!(f.daemon.tables().ports.len(), 2);
        let detached = f.daemon.handle(Request::Detach(DetachRequest {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: Some("/run/netns/fake".into()),
        }));
        assert!(
            matches!(detached, Response::Ok(Reply::Detached { released_ip: Some(ip), .. }) if ip == a.ip),
            "{detached:?}"
        );
        assert_nothing_left(&f);
    }

    fn attach_port(d: &Daemon, id: &str, port: Option<PortType>) -> Response {
        d.handle(Request::Attach(AttachRequest {
            container_id: id.into(),
            netns: "/run/netns/fake".into(),
            ifname: "eth0".into(),
            requested_ip: None,
            requested_ip6: None,
            pod: None,
            port,
        }))
    }

    /// An AF_XDP port that cannot be made fails the ADD, leaving nothing, unless
    /// afxdp-fallback lets the pod have a TAP port, which its record then names.
    #[test]
    fn a_failed_afxdp_port_fails_the_add_or_falls_back_to_tap() {
        let f = fixture("noxdp");
        *f.host.next.lock() = Next::NoAfxdp;
        match attach_port(&f.daemon, "c1", Some(PortType::Afxdp)) {
            Response::Error(e) => assert!(e.message.contains("AF_XDP port"), "{e:?}"),
            ok => panic!("the attach succeeded: {ok:?}"),
        }
        assert_nothing_left(&f);
        // The node-wide default applies when the pod does not ask.
        let mut extra = Options::default();
        extra.datapath.pod_port = Some(PortType::Afxdp);
        extra.afxdp.fallback = Some(true);
        let f = fixture_with("xdpfall", extra);
        *f.host.next.lock() = Next::NoAfxdp;
        let a = match attach_port(&f.daemon, "c1", None) {
            Response::Ok(Reply::Attached(a)) => a,
            other => panic!("no fallback: {other:?}"),
        };
        assert_eq!(a.port, PortType::Tap);
        let key = Key::new("c1", "eth0");
        let record = f.daemon.pool.get(&key).unwrap().expect("a record");
        let meta = AttachMeta::decode(&record.meta).unwrap();
        assert_eq!(meta.port, PortType::Tap, "the record names the TAP port");
        // A pod that asks for TAP gets it, whatever the default.
        *f.host.next.lock() = Next::Works;
        let Response::Ok(Reply::Attached(b)) = attach_port(&f.daemon, "c2", Some(PortType::Tap))
        else {
            panic!("the attach failed");
        };
        assert_eq!(b.port, PortType::Tap);
    }

    fn attach_in(d: &Daemon, id: &str, netns: &str) -> Attachment {
        match d.handle(Request::Attach(AttachRequest {
            container_id: id.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            requested_ip: None,
            requested_ip6: None,
            pod: None,
            port: None,
        })) {
            Response::Ok(Reply::Attached(a)) => a,
            other => panic!("attaching {id} in {netns}: {other:?}"),
        }
    }

    fn held(d: &Daemon) -> Vec<String> {
        let mut ids: Vec<String> = (d.pool.list().expect("the pool").into_iter())
            .map(|a| a.key.container_id)
            .collect();
        ids.sort();
        ids
    }

    /// A netns path that cannot be opened fails the attach before an address is
    /// taken; the same attach in a namespace that can be opened works.
    #[test]
    fn an_attach_whose_netns_cannot_be_opened_takes_nothing() {
        let f = fixture("nons");
        let gone = "/run/netns/gone";
        f.host
            .namespaces
            .lock()
            .insert(gone.into(), Err(libc::ENOENT));
        let refused = f.daemon.handle(Request::Attach(AttachRequest {
            container_id: "c1".into(),
            netns: gone.into(),
            ifname: "eth0".into(),
            requested_ip: None,
            requested_ip6: None,
            pod: None,
            port: None,
        }));
        match refused {
            Response::Error(e) => {
                assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e:?}");
                assert!(e.message.contains(gone), "{e:?}");
            }
            ok => panic!("the attach succeeded: {ok:?}"),
        }
        assert_nothing_left(&f);
        attach_in(&f.daemon, "c1", "/run/netns/there");
        assert_eq!(held(&f.daemon), ["c1"]);
    }

    /// A restart releases an attachment only when its namespace is surely gone:
    /// its path is missing, or names another namespace than the one recorded.
    /// EACCES and EMFILE keep the address (and the interface). A record from before
    /// namespace identities is restored, and gets the identity it finds.
    #[test]
    fn restore_releases_only_namespaces_that_are_gone() {
        let (settings, dir) = settings_for("restore", Options::default());
        let host = fake_host(&dir);
        let path = |i: usize| format!("/run/netns/p{i}");
        for i in 0..6 {
            host.namespaces.lock().insert(path(i), Ok(10 + i as u64));
        }
        let d = Daemon::start_with(settings.clone(), host.clone(), Arc::new(NoStore))
            .expect("the daemon");
        for i in 0..6 {
            attach_in(&d, &format!("c{i}"), &path(i));
        }
        // c5's record is as an older weftd wrote it: no identity.
        let old = Key::new("c5", "eth0");
        let record = d.pool.get(&old).expect("the pool").expect("a record");
        let mut meta = AttachMeta::decode(&record.meta).expect("a record");
        meta.ns = None;
        d.pool.update_meta(&old, &meta.encode()).expect("updated");
        d.shutdown();
        drop(d);
        {
            let mut ns = host.namespaces.lock();
            ns.insert(path(0), Err(libc::EACCES));
            ns.insert(path(1), Err(libc::EMFILE));
            ns.insert(path(2), Err(libc::ENOENT));
            // Deleted and made again under the same name: another namespace.
            ns.insert(path(3), Ok(99));
        }
        let d = Daemon::start_with(settings, host.clone(), Arc::new(NoStore))
            .expect("the daemon restarts");
        assert_eq!(held(&d), ["c0", "c1", "c4", "c5"]);
        let restored: Vec<String> = (d.state.lock().pods.iter())
            .map(|p| p.key.container_id.clone())
            .collect();
        assert_eq!(restored, ["c4", "c5"]);
        let record = d.pool.get(&old).expect("the pool").expect("a record");
        let meta = AttachMeta::decode(&record.meta).expect("a record");
        let now = host.netns_id(Path::new(&path(5))).expect("an identity");
        assert_eq!(meta.ns, Some(now), "the old record got its identity");
        // The kept pods' interfaces stay for their DEL, which releases them.
        let interfaces = host.interfaces.lock().clone();
        assert!(
            interfaces.contains(&(path(0), "eth0".into())),
            "{interfaces:?}"
        );
        let del = DetachRequest {
            container_id: "c0".into(),
            ifname: "eth0".into(),
            netns: Some(path(0)),
        };
        assert!(d.detach(&del).expect("detached").0.is_some());
        assert_eq!(held(&d), ["c1", "c4", "c5"]);
        d.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// DEL of a pod whose netns path now names another namespace deletes nothing
    /// there, and still releases the address; DEL of a pod in its own namespace
    /// deletes its interface.
    #[test]
    fn detach_leaves_a_namespace_that_replaced_the_pods_alone() {
        let f = fixture("rebound");
        attach_in(&f.daemon, "c1", "/run/netns/a");
        attach_in(&f.daemon, "c2", "/run/netns/b");
        f.host
            .namespaces
            .lock()
            .insert("/run/netns/a".into(), Ok(42));
        let del = |id: &str, netns: &str| DetachRequest {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: Some(netns.into()),
        };
        let released = f.daemon.detach(&del("c1", "/run/netns/a"));
        assert!(released.expect("detached").0.is_some());
        let a = ("/run/netns/a".to_owned(), "eth0".to_owned());
        assert!(
            f.host.interfaces.lock().contains(&a),
            "deleted in another namespace"
        );
        let released = f.daemon.detach(&del("c2", "/run/netns/b"));
        assert!(released.expect("detached").0.is_some());
        let b = ("/run/netns/b".to_owned(), "eth0".to_owned());
        assert!(
            !f.host.interfaces.lock().contains(&b),
            "the pod's interface stayed"
        );
    }

    fn node(name: &str, n: u8, mode: Option<Mode>) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            underlay_ip: Ipv4Addr::new(10, 250, 0, n),
            pod_subnet: format!("10.244.{n}.0/24").parse().expect("a subnet"),
            pod_subnet_v6: None,
            vtep_mac: MacAddr::from_name(name),
            mode,
            direct_routing: None,
            public_key: None,
        }
    }

    /// The egress masquerade is installed at start, by default, with the cluster
    /// and Service ranges, and removed at a clean stop; `masquerade = false` leaves
    /// the host's NAT alone. Forwarding is on either way.
    #[test]
    fn the_masquerade_comes_and_goes_with_the_daemon() {
        let service: Ipv4Net = "10.96.0.0/12".parse().expect("a CIDR");
        let mut extra = Options::default();
        extra.host.service_cidr = Some(service);
        let f = fixture_with("masq", extra);
        assert!(f.host.forwarding.load(std::sync::atomic::Ordering::SeqCst));
        let cluster: Ipv4Net = "10.244.0.0/16".parse().expect("a CIDR");
        let installed = crate::control::masquerade::Masquerade {
            cluster,
            service: Some(service),
            tunnel: Some((Ipv4Addr::LOCALHOST, f.daemon.settings().tunnel.port)),
        };
        assert_eq!(*f.host.masquerade.lock(), Some(installed));
        f.daemon.shutdown();
        assert_eq!(*f.host.masquerade.lock(), None);
        let mut off = Options::default();
        off.host.masquerade = Some(false);
        let f = fixture_with("nomasq", off);
        assert!(f.host.forwarding.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(*f.host.masquerade.lock(), None);
        f.daemon.shutdown();
    }

    /// With `services = "switch"`: the snapshot carries a Service table from the
    /// start (empty: every ClusterIP refused), `set_service_table` publishes a new
    /// one, a table that fails its checks is refused whole and the one in force
    /// stays, and weft0 routes the Service CIDR. With kube-proxy's, nothing of it.
    #[test]
    fn set_service_table_publishes_the_services_the_workers_translate() {
        use crate::services::{Endpoint, Frontend, Protocol, Readiness, ServicePort, ServiceTable};
        let cidr: Ipv4Net = "10.96.0.0/12".parse().expect("a CIDR");
        let mut extra = Options::default();
        extra.host.service_cidr = Some(cidr);
        extra.host.services = Some(crate::control::config::ServicesMode::Switch);
        let f = fixture_with("svc", extra);
        let at_start = f
            .daemon
            .tables()
            .services
            .clone()
            .expect("a table at start");
        assert!(at_start.table().ports.is_empty());
        let port = |endpoint: Ipv4Addr| ServicePort {
            frontend: Frontend {
                ip: Ipv4Addr::new(10, 96, 0, 10),
                port: 53,
                protocol: Protocol::Udp,
            },
            name: Arc::from("kube-system/dns:dns"),
            endpoints: vec![Endpoint {
                ip: endpoint,
                port: 53,
                readiness: Readiness::Ready,
                local: true,
            }],
            affinity: None,
            internal_local: false,
        };
        let good = ServiceTable {
            cidr: Some(cidr),
            ports: vec![port(Ipv4Addr::new(10, 244, 1, 9))],
        };
        f.daemon
            .set_service_table(Arc::new(good.clone()))
            .expect("published");
        let now = f.daemon.tables().services.clone().expect("a table");
        assert_eq!(**now.table(), good);
        assert!(now.generation() > at_start.generation());
        // An endpoint on loopback: refused whole, the table in force stays.
        let bad = ServiceTable {
            cidr: Some(cidr),
            ports: vec![port(Ipv4Addr::LOCALHOST)],
        };
        let err = f.daemon.set_service_table(Arc::new(bad)).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        assert_eq!(
            **f.daemon.tables().services.clone().expect("a table").table(),
            good
        );
        let (_, spec) = crate::control::daemon::host_port(f.daemon.settings(), &f.daemon.node);
        assert!(spec
            .routes
            .iter()
            .any(|r| matches!(r, RouteSpec::OnLink { dst, .. } if *dst == cidr)));
        f.daemon.shutdown();
        // kube-proxy's Services: no table, none taken, no route.
        let mut extra = Options::default();
        extra.host.service_cidr = Some(cidr);
        let f = fixture_with("nosvc", extra);
        assert!(f.daemon.tables().services.is_none());
        let err = f.daemon.set_service_table(Arc::new(good)).unwrap_err();
        assert!(matches!(err, DaemonError::ServicesOff), "{err}");
        let (_, spec) = crate::control::daemon::host_port(f.daemon.settings(), &f.daemon.node);
        assert_eq!(spec.routes.len(), 1);
        f.daemon.shutdown();
    }

    /// Direct routing beside VXLAN: a peer on the segment gets a host route and the
    /// host as its next hop; a peer behind a router keeps the tunnel; a direct-only
    /// peer behind a router cannot be reached. A peer that goes takes its route.
    #[test]
    fn direct_routing_chooses_each_peers_path_and_keeps_the_host_routes() {
        let mut extra = Options::default();
        extra.tunnel.direct_routing = Some(true);
        let f = fixture_with("direct", extra);
        assert!(f.host.forwarding.load(std::sync::atomic::Ordering::SeqCst));
        let on_link = |dev: &str| RouteTo {
            oif: 2,
            dev: dev.into(),
            gateway: None,
        };
        let routed = RouteTo {
            oif: 2,
            dev: "eth0".into(),
            gateway: Some(Ipv4Addr::new(10, 250, 0, 254)),
        };
        {
            let mut reach = f.host.reach.lock();
            reach.insert(Ipv4Addr::new(10, 250, 0, 2), on_link("eth0"));
            reach.insert(Ipv4Addr::new(10, 250, 0, 3), routed.clone());
            reach.insert(Ipv4Addr::new(10, 250, 0, 4), routed);
        }
        let view = ClusterView {
            nodes: vec![
                node("b", 2, None),
                node("c", 3, None),
                node("d", 4, Some(Mode::Direct)),
            ],
            policy: None,
            services: None,
        };
        assert!(f.daemon.apply_view(&view).expect("applied"));
        let t = f.daemon.tables();
        let hop = |ip: [u8; 4]| t.fib.lookup(Ipv4Addr::from(ip));
        assert_eq!(hop([10, 244, 2, 9]), Some(NextHop::Host), "b is direct");
        assert_eq!(
            hop([10, 244, 3, 9]),
            Some(NextHop::Peer(1)),
            "c is tunnelled"
        );
        assert_eq!(
            hop([10, 244, 4, 9]),
            Some(NextHop::Unreachable),
            "d has no path"
        );
        // b itself is the host's to reach; c through the tunnel, as without direct routing.
        assert_eq!(hop([10, 250, 0, 2]), Some(NextHop::Host));
        assert_eq!(hop([10, 250, 0, 3]), Some(NextHop::Peer(1)));
        let want = DirectRoute {
            subnet: "10.244.2.0/24".parse().expect("a subnet"),
            via: Ipv4Addr::new(10, 250, 0, 2),
            oif: 2,
        };
        assert_eq!(*f.host.routes.lock(), [want]);
        let paths: Vec<String> = f.daemon.peer_infos().into_iter().map(|p| p.path).collect();
        assert_eq!(paths[0], "direct via 10.250.0.2 dev eth0");
        assert_eq!(paths[1], "vxlan");
        assert!(
            paths[2].starts_with("none: not on this node's segment"),
            "{paths:?}"
        );
        // Heartbeats measure the tunnel: only c, which uses it, gets them.
        let beats: Vec<bool> = t.peers.iter().map(|p| p.beats).collect();
        assert_eq!(beats, [false, true, false]);

        // b leaves: its route goes too.
        let view = ClusterView {
            nodes: vec![node("c", 3, None)],
            policy: None,
            services: None,
        };
        assert!(f.daemon.apply_view(&view).expect("applied"));
        assert!(f.host.routes.lock().is_empty());
        assert_eq!(
            f.daemon.tables().fib.lookup(Ipv4Addr::new(10, 244, 2, 9)),
            Some(NextHop::Unreachable)
        );
        // A clean stop removes the host routes, which lead nowhere without weft0.
        let view = ClusterView {
            nodes: vec![node("b", 2, None)],
            policy: None,
            services: None,
        };
        assert!(f.daemon.apply_view(&view).expect("applied"));
        assert_eq!(f.host.routes.lock().len(), 1);
        f.daemon.shutdown();
        assert!(f.host.routes.lock().is_empty());
    }

    /// A store that holds policy and cannot be read until told (`read`).
    #[derive(Debug, Default)]
    struct Late {
        read: std::sync::atomic::AtomicBool,
    }

    impl ClusterStore for Late {
        fn kind(&self) -> &'static str {
            "late"
        }

        fn join(&self, me: &Joining) -> Result<Joined, StoreError> {
            NoStore.join(me)
        }

        fn load(&self) -> Result<ClusterView, StoreError> {
            Ok(ClusterView {
                nodes: Vec::new(),
                policy: Some(Arc::default()),
                services: None,
            })
        }

        fn watch(self: Arc<Self>, _: OnChange) -> tokio::task::JoinHandle<()> {
            tokio::spawn(async {})
        }

        fn synced(&self) -> bool {
            self.read.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// A node whose store holds policy and cannot be read as it starts, with no
    /// saved view, starts with every pod isolated for ingress, says so, and saves
    /// nothing; with one, it starts with its peers and its policy in force, says
    /// so, and keeps them while the store has no view of its own. Once the store
    /// is read its view replaces the saved one, and is saved in turn.
    #[test]
    fn a_store_not_read_at_boot_is_stood_in_for_by_the_saved_view_or_isolates_every_pod() {
        let (settings, dir) = settings_for("late", Options::default());
        let host = fake_host(&dir);
        let (state_dir, cluster) = (settings.state_dir.clone(), settings.cluster_cidr);
        let d = Daemon::start_with(settings.clone(), host.clone(), Arc::new(Late::default()))
            .expect("the daemon");
        let isolating = "isolating: every pod, for ingress (no good policy yet)";
        assert_eq!(d.policy_status().state, isolating);
        assert_eq!(d.status().policy.as_deref(), Some(isolating));
        let Response::Ok(Reply::Attached(a)) = attach(&d, "c1") else {
            panic!("the attach failed");
        };
        let rules = d.tables().ports[1].policy.clone().expect("isolated");
        assert!(rules.ingress.as_ref().is_some_and(|r| r.rules.is_empty()));
        assert!(rules.egress.is_none(), "only ingress is isolated");
        assert_eq!(d.tables().ports[1].ip, a.ip);
        let detached = d.handle(Request::Detach(DetachRequest {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: Some("/run/netns/fake".into()),
        }));
        assert!(matches!(detached, Response::Ok(_)), "{detached:?}");
        d.shutdown();
        drop(d);
        assert!(saved::read(&state_dir, "late", cluster)
            .expect("read")
            .is_none());

        let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
            metadata: {name: deny, namespace: default}\nspec: {podSelector: {}}\n";
        let mut model = crate::netpol::model::PolicyModel::default();
        crate::netpol::manifest::read("test", yaml, &mut model).expect("a manifest");
        let snap = saved::Snapshot {
            nodes: Arc::new(vec![node("n", 1, None), node("m", 2, None)]),
            policy: Arc::new(model),
            revision: Some(9),
            services: None,
        };
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_748_779_200);
        saved::write(&state_dir, "late", &snap, at).expect("a saved view");
        let store = Arc::new(Late::default());
        let d = Daemon::start_with(settings, host, store.clone()).expect("the daemon");
        let in_force = |d: &Daemon| {
            let peers: Vec<String> = d.tables().peers.iter().map(|p| p.name.clone()).collect();
            (peers, d.state.lock().policy.model.policies.len())
        };
        assert_eq!(in_force(&d), (vec!["m".to_owned()], 1));
        let at = "2025-06-01T12:00:00Z";
        let from_saved = |d: &Daemon| d.status().store.and_then(|s| s.from_saved);
        assert_eq!(from_saved(&d).as_deref(), Some(at));
        assert_eq!(
            d.policy_status().source,
            format!("the late view saved at {at}")
        );
        let placeholder = store.load().expect("a view");
        assert!(!d.apply_view(&placeholder).expect("nothing applied"));
        assert_eq!(in_force(&d), (vec!["m".to_owned()], 1));

        store.read.store(true, std::sync::atomic::Ordering::SeqCst);
        let policy = crate::control::store::StorePolicy {
            revision: 12,
            ..Default::default()
        };
        let view = ClusterView {
            nodes: vec![node("n", 1, None), node("k", 3, None)],
            policy: Some(Arc::new(policy)),
            services: None,
        };
        assert!(d.apply_view(&view).expect("applied"));
        assert_eq!(in_force(&d), (vec!["k".to_owned()], 0));
        assert_eq!(from_saved(&d), None);
        d.shutdown();
        let again = saved::read(&state_dir, "late", cluster)
            .expect("read")
            .expect("a view");
        assert_ne!(again.saved_at_text(), at);
        assert_eq!((again.nodes, again.revision), (view.nodes, Some(12)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A node on a policy directory starts from the set it saved: restarted while
    /// a document no longer reads, it enforces the last good set (its pod stays
    /// isolated both ways, as that set says), and says so; once the directory
    /// reads, its set is in force. A first start on a directory that does not read,
    /// with nothing saved, isolates every pod for ingress.
    #[test]
    fn a_policy_directory_that_does_not_read_at_boot_keeps_the_saved_set_or_isolates() {
        let (mut settings, dir) = settings_for("pdir", Options::default());
        let policy_dir = dir.join("policy");
        std::fs::create_dir_all(&policy_dir).expect("the policy dir");
        settings.policy.dir = Some(policy_dir.clone());
        let deny = policy_dir.join("deny.yaml");
        let write = |text: &str| std::fs::write(&deny, text).expect("the policy file");
        write(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {name: deny, namespace: default}\n\
             spec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n",
        );
        let host = fake_host(&dir);
        let start = || {
            Daemon::start_with(settings.clone(), host.clone(), Arc::new(NoStore))
                .expect("the daemon")
        };
        let isolated = |d: &Daemon| {
            let rules = d.tables().ports.get(1).and_then(|p| p.policy.clone());
            rules.map_or((false, false), |r| {
                (r.ingress.is_some(), r.egress.is_some())
            })
        };
        let d = start();
        assert!(matches!(attach(&d, "c1"), Response::Ok(Reply::Attached(_))));
        assert_eq!(isolated(&d), (true, true));
        d.shutdown();
        drop(d);

        write("kind: NetworkPolicy\nspec: [not closed\n");
        let d = start();
        assert_eq!(isolated(&d), (true, true), "the saved set is in force");
        let status = d.policy_status();
        assert_eq!(status.policies.len(), 1);
        assert!(status
            .state
            .starts_with("enforcing, with the last good version"));
        assert!(status.errors[0].contains("deny.yaml document 0: not YAML"));
        assert!(
            status.errors[0].ends_with("nothing of the last good set is removed until it reads")
        );
        d.apply_policy(crate::control::netpol_source::load_dir(&policy_dir))
            .expect("read again");
        assert_eq!(isolated(&d), (true, true), "no read replaces it");
        std::fs::remove_file(&deny).expect("the policy file");
        d.apply_policy(crate::control::netpol_source::load_dir(&policy_dir))
            .expect("read");
        assert_eq!(isolated(&d), (false, false), "the directory reads: its set");
        assert_eq!(d.policy_status().state, "enforcing");
        d.shutdown();
        drop(d);

        // Nothing saved, and a directory that does not read.
        std::fs::remove_file(saved::path(&settings.state_dir)).expect("the saved view");
        write("kind: NetworkPolicy\nspec: [not closed\n");
        let d = start();
        assert_eq!(isolated(&d), (true, false), "every pod, for ingress");
        let state = d.status().policy.expect("a policy state");
        assert!(
            state.starts_with("isolating: every pod, for ingress ("),
            "{state}"
        );
        assert!(
            state.contains("deny.yaml document 0 names no object"),
            "{state}"
        );
        d.shutdown();
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Services reach the daemon from the policy directory, as it boots and as
    /// it is read again, and from a store's view: compiled for this node (its
    /// endpoints local) against the Service CIDR, shown over the control API
    /// (`weft services`), a refused endpoint named with its slice. A read that
    /// changes nothing compiles nothing again.
    #[test]
    fn services_from_the_directory_and_the_view_are_compiled_for_this_node() {
        let mut extra = Options::default();
        extra.host.service_cidr = Some("10.96.0.0/12".parse().expect("a CIDR"));
        let (mut settings, dir) = settings_for("svcdir", extra.clone());
        let policy_dir = dir.join("policy");
        std::fs::create_dir_all(&policy_dir).expect("the policy dir");
        settings.policy.dir = Some(policy_dir.clone());
        let manifests = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
            spec: {clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}\n---\n\
            apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
            metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}\n\
            addressType: IPv4\nendpoints: [{addresses: [10.244.1.5], nodeName: n}, {addresses: [10.96.0.9]}]\n\
            ports: [{port: 8080}]\n";
        std::fs::write(policy_dir.join("web.yaml"), manifests).expect("the manifests");
        let d = Daemon::start_with(settings, fake_host(&dir), Arc::new(NoStore)).expect("daemon");
        let services = |d: &Daemon| match d.handle(Request::Services) {
            Response::Ok(Reply::Services(s)) => s,
            other => panic!("{other:?}"),
        };
        let s = services(&d);
        assert_eq!(s.source, format!("dir {}", policy_dir.display()));
        assert_eq!(s.service_cidr.as_deref(), Some("10.96.0.0/12"));
        assert_eq!((s.services, s.slices, s.ports.len()), (1, 1, 1));
        let p = &s.ports[0];
        assert_eq!(
            (p.name.as_str(), p.frontend.as_str()),
            ("default/web:80", "10.96.0.10:80/TCP")
        );
        let e = &p.endpoints;
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            (e[0].address.as_str(), e[0].state.as_str(), e[0].local),
            ("10.244.1.5:8080", "ready", true)
        );
        assert_eq!(
            s.refused,
            ["EndpointSlice default/web-a: 10.96.0.9 refused: inside the Service CIDR"]
        );
        let table = d.state.lock().services.table.clone();
        d.apply_policy(crate::control::netpol_source::load_dir(&policy_dir))
            .expect("read again");
        assert!(
            Arc::ptr_eq(&table, &d.state.lock().services.table),
            "compiled again"
        );
        d.shutdown();
        drop(d);

        // A store's view carries its Services.
        let f = fixture_with("svcv", extra);
        assert_eq!(services(&f.daemon).source, "none");
        let mut model = crate::netpol::manifest::Objects::default();
        crate::netpol::manifest::read("view", manifests, &mut model).expect("manifests");
        let view = ClusterView {
            nodes: vec![node("n", 1, None)],
            policy: None,
            services: Some(Arc::new(model.services)),
        };
        f.daemon.apply_view(&view).expect("applied");
        let s = services(&f.daemon);
        assert_eq!(
            (s.source.as_str(), s.ports.len(), s.refused.len()),
            ("none", 1, 1)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A node on a store that is read saves the view in force in its state
    /// directory, and writes it as it stops.
    #[test]
    fn the_view_in_force_is_saved() {
        let f = fixture("saves");
        let dir = f.daemon.settings().state_dir.clone();
        let cluster = f.daemon.settings().cluster_cidr;
        let view = ClusterView {
            nodes: vec![node("b", 2, None)],
            policy: None,
            services: None,
        };
        assert!(f.daemon.apply_view(&view).expect("applied"));
        f.daemon.shutdown();
        let v = saved::read(&dir, "none", cluster)
            .expect("read")
            .expect("a view");
        assert_eq!(v.nodes, view.nodes);
        assert_eq!((v.revision, v.policy.policies.len()), (None, 0));
    }

    /// A store's node that overlaps this node's subnet (10.244.1.0/24) never stops
    /// a node: not as it starts from a peers file or from a saved view, nor when a
    /// view comes later. It is left out, and the other nodes are peers.
    #[test]
    fn a_node_overlapping_this_ones_subnet_is_left_out_on_every_path() {
        let peers = |d: &Daemon| -> Vec<String> {
            d.tables().peers.iter().map(|p| p.name.clone()).collect()
        };
        let mut wide = node("wide", 9, None);
        wide.pod_subnet = "10.244.0.0/23".parse().expect("a subnet");

        // The peers file, at start and as it changes.
        let (settings, dir) = settings_for("overlap-file", Options::default());
        let file = dir.join("peers.toml");
        let entry = |n: &NodeEntry| {
            format!(
                "[[node]]\nname = \"{}\"\nunderlay-ip = \"{}\"\npod-subnet = \"{}\"\nvtep-mac = \"{}\"\n",
                n.name, n.underlay_ip, n.pod_subnet, n.vtep_mac
            )
        };
        std::fs::write(&file, entry(&wide) + &entry(&node("b", 2, None))).expect("a peers file");
        let store = Arc::new(crate::control::store::file::FileStore::new(file.clone()));
        let d = Daemon::start_with(settings, fake_host(&dir), store).expect("the daemon");
        assert_eq!(peers(&d), ["b"]);
        let mut inside = node("inside", 8, None);
        inside.pod_subnet = "10.244.1.128/25".parse().expect("a subnet");
        let text = entry(&inside) + &entry(&node("b", 2, None)) + &entry(&node("c", 3, None));
        std::fs::write(&file, text).expect("a peers file");
        assert!(d.reload_peers().expect("applied"));
        assert_eq!(peers(&d), ["b", "c"]);
        d.shutdown();
        let _ = std::fs::remove_dir_all(&dir);

        // A saved view, at start (it is checked before against itself only).
        let (settings, dir) = settings_for("overlap-saved", Options::default());
        let snap = saved::Snapshot {
            nodes: Arc::new(vec![wide, node("n", 1, None), node("m", 2, None)]),
            policy: Arc::default(),
            revision: Some(3),
            services: None,
        };
        std::fs::create_dir_all(&settings.state_dir).expect("the state directory");
        saved::write(
            &settings.state_dir,
            "late",
            &snap,
            std::time::SystemTime::now(),
        )
        .expect("a saved view");
        let d = Daemon::start_with(settings, fake_host(&dir), Arc::new(Late::default()))
            .expect("the daemon");
        assert_eq!(peers(&d), ["m"]);
        d.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The Service `default/web` (ClusterIP 10.96.0.10, TCP 80 to 8080) with one
    /// ready endpoint at `endpoint` on node `m`, as a store reads it.
    fn web_service(endpoint: &str) -> crate::services::model::ServiceModel {
        use crate::services::read;
        let web = read::service_value(
            "default",
            "web",
            serde_json::json!({"clusterIP": "10.96.0.10",
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        )
        .expect("a Service");
        let labels = [(read::SERVICE_NAME_LABEL.to_owned(), "web".to_owned())].into();
        let slice = read::slice_value(
            "default",
            "web-a",
            &labels,
            serde_json::json!({"addressType": "IPv4",
                "endpoints": [{"addresses": [endpoint], "nodeName": "m"}],
                "ports": [{"name": "http", "port": 8080}]}),
        )
        .expect("a slice");
        crate::services::model::ServiceModel {
            services: [web].into_iter().collect(),
            slices: [slice].into_iter().collect(),
            bad: Vec::new(),
        }
    }

    /// `policy_explain` to a ClusterIP, through the control API.
    fn explain_to(d: &Daemon, dst: &str, src_port: Option<u16>) -> Response {
        d.handle(Request::PolicyExplain(weft_proto::ExplainRequest {
            src: "10.244.1.9".into(),
            dst: dst.into(),
            protocol: "TCP".into(),
            port: Some(80),
            src_port,
        }))
    }

    /// A node with `services = "switch"` whose store cannot be read as it starts
    /// translates ClusterIPs by the Services its saved view holds (`weft
    /// services` says where they come from; `weft policy explain` follows the
    /// ClusterIP to the saved endpoint), until the store is read, whose Services
    /// then replace them and are saved in turn. A hostile request to explain is
    /// refused with why, beside the good one.
    #[test]
    fn services_saved_with_the_view_translate_while_the_store_is_not_read() {
        let mut extra = Options::default();
        extra.host.service_cidr = Some("10.96.0.0/12".parse().expect("a CIDR"));
        extra.host.services = Some(crate::control::config::ServicesMode::Switch);
        let (settings, dir) = settings_for("svcsaved", extra);
        let host = fake_host(&dir);
        let (state_dir, cluster) = (settings.state_dir.clone(), settings.cluster_cidr);
        std::fs::create_dir_all(&state_dir).expect("the state directory");
        let snap = saved::Snapshot {
            nodes: Arc::new(vec![node("n", 1, None), node("m", 2, None)]),
            policy: Arc::default(),
            revision: Some(9),
            services: Some(Arc::new(web_service("10.244.2.5"))),
        };
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_748_779_200);
        saved::write(&state_dir, "late", &snap, at).expect("a saved view");
        let store = Arc::new(Late::default());
        let d = Daemon::start_with(settings, host, store.clone()).expect("the daemon");

        let table = d.tables().services.clone().expect("a Service table");
        assert_eq!(table.table().ports.len(), 1, "the saved Service translates");
        let shown = d.services_status();
        assert_eq!(shown.source, "the late view saved at 2025-06-01T12:00:00Z");
        assert_eq!(shown.ports[0].endpoints[0].address, "10.244.2.5:8080");
        let Response::Ok(Reply::Explained(e)) = explain_to(&d, "10.96.0.10", Some(4000)) else {
            panic!("no explanation");
        };
        let svc = e.service.as_ref().expect("the Service part");
        assert_eq!(
            (svc.outcome.as_str(), svc.detail.as_str()),
            ("translated", "given endpoint 10.244.2.5:8080")
        );
        assert!(e.allowed, "{e:#?}");
        for (dst, why) in [
            ("fd00::10", "IPv6 address"),
            ("default/nobody", "is no known pod and no address"),
        ] {
            match explain_to(&d, dst, None) {
                Response::Error(err) => assert!(err.message.contains(why), "{err:?}"),
                other => panic!("{dst}: {other:?}"),
            }
        }
        // No packet comes from a ClusterIP: a source in the CIDR is refused.
        let forged = d.handle(Request::PolicyExplain(weft_proto::ExplainRequest {
            src: "10.96.0.10".into(),
            dst: "10.96.0.10".into(),
            protocol: "TCP".into(),
            port: Some(80),
            src_port: None,
        }));
        match forged {
            Response::Error(err) => assert!(
                err.message.contains("is an address of the Service CIDR"),
                "{err:?}"
            ),
            other => panic!("{other:?}"),
        }

        // The store is read without its Services (the Kubernetes store lists
        // them apart, and they may come later): the saved ones stay in force, and
        // are still shown as the saved view's, not the store's.
        store.read.store(true, std::sync::atomic::Ordering::SeqCst);
        let nodes = vec![node("n", 1, None), node("m", 2, None)];
        let without = ClusterView {
            nodes: nodes.clone(),
            policy: Some(Arc::default()),
            services: None,
        };
        d.apply_view(&without).expect("applied");
        assert_eq!(
            d.services_status().source,
            "the late view saved at 2025-06-01T12:00:00Z"
        );

        // Its Services come (the endpoint moved): they replace the saved ones,
        // and are saved.
        let view = ClusterView {
            nodes,
            policy: Some(Arc::default()),
            services: Some(Arc::new(web_service("10.244.2.6"))),
        };
        d.apply_view(&view).expect("applied");
        assert_eq!(d.services_status().source, "late");
        let Response::Ok(Reply::Explained(e)) = explain_to(&d, "10.96.0.10", Some(4000)) else {
            panic!("no explanation");
        };
        let detail = e.service.map(|s| s.detail);
        assert_eq!(detail.as_deref(), Some("given endpoint 10.244.2.6:8080"));
        d.shutdown();
        let again = saved::read(&state_dir, "late", cluster)
            .expect("read")
            .expect("a view");
        assert_eq!(again.services, Some(web_service("10.244.2.6")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// With kube-proxy translating, explain says so and judges the address as
    /// given; an address outside the Service CIDR gets no such note.
    #[test]
    fn with_kube_proxy_explain_judges_a_cluster_ip_as_given() {
        let mut extra = Options::default();
        extra.host.service_cidr = Some("10.96.0.0/12".parse().expect("a CIDR"));
        let f = fixture_with("svckp", extra);
        let Response::Ok(Reply::Explained(e)) = explain_to(&f.daemon, "10.96.0.10", None) else {
            panic!("no explanation");
        };
        let svc = e.service.expect("a note");
        assert_eq!(svc.outcome, "kube-proxy");
        assert!(svc.endpoints.is_empty());
        assert!(e.allowed, "no policy: allowed as given");
        let Response::Ok(Reply::Explained(e)) = explain_to(&f.daemon, "10.244.2.5", None) else {
            panic!("no explanation");
        };
        assert_eq!(e.service, None);
    }

    fn dual_stack() -> Options {
        Options {
            pod_subnet_v6: Some("fd00:10:244:1::/64".parse().unwrap()),
            cluster_cidr_v6: Some("fd00:10:244::/56".parse().unwrap()),
            ..Options::default()
        }
    }

    /// A node whose IPv6 pool is full is not ready, whatever its IPv4 pool holds:
    /// an ADD would fail.
    #[test]
    fn a_full_ipv6_pool_makes_the_node_unready() {
        let small = Options {
            // Two pod addresses: ::2 and ::3.
            pod_subnet_v6: Some("fd00:10:244:1::/126".parse().unwrap()),
            ..dual_stack()
        };
        let (settings, dir) = settings_for("full6", small);
        let d =
            Daemon::start_with(settings, fake_host(&dir), Arc::new(NoStore)).expect("the daemon");
        attach_in(&d, "c1", "/run/netns/p1");
        assert!(d.status().ready, "one IPv6 address left");
        attach_in(&d, "c2", "/run/netns/p2");
        assert!(!d.status().ready, "no IPv6 address left");
        assert!(matches!(attach(&d, "c3"), Response::Error(_)));
        assert_eq!(
            d.pool.len().unwrap(),
            2,
            "the failed ADD took no IPv4 address"
        );
    }

    /// A dual-stack pod gets an address of each family, its interface both, and a
    /// detach, a failed attach, GC and a restart keep the two pools in step.
    #[test]
    fn a_dual_stack_pod_holds_an_address_of_each_family_and_gives_both_back() {
        let (settings, dir) = settings_for("dual", dual_stack());
        let host = fake_host(&dir);
        let d = Daemon::start_with(settings.clone(), host.clone(), Arc::new(NoStore))
            .expect("the daemon");
        let pool6 = || d.pool6.as_ref().expect("an IPv6 pool");
        let a = attach_in(&d, "c1", "/run/netns/p1");
        let v6 = a.ipv6.expect("an IPv6 address");
        assert_eq!(v6.ip, "fd00:10:244:1::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            (v6.prefix_len, v6.gateway.to_string().as_str()),
            (64, "fd00:10:244:1::1")
        );
        let spec = host.last_spec.lock().clone().expect("a spec");
        let want = Ipv6Spec {
            addr: v6.ip,
            prefix_len: 64,
            gateway: Some(v6.gateway),
        };
        assert_eq!(spec.ipv6, Some(want));
        assert_eq!(d.tables().ports[1].ip6, Some(v6.ip));
        // A repeated ADD asking for another IPv6 address is refused.
        let again = d.handle(Request::Attach(AttachRequest {
            container_id: "c1".into(),
            netns: "/run/netns/p1".into(),
            ifname: "eth0".into(),
            requested_ip: None,
            requested_ip6: Some("fd00:10:244:1::9".parse().unwrap()),
            pod: None,
            port: None,
        }));
        assert!(matches!(again, Response::Error(_)), "{again:?}");
        // A failed attach leaves neither address.
        *host.next.lock() = Next::Fails;
        assert!(matches!(attach(&d, "c2"), Response::Error(_)));
        *host.next.lock() = Next::Works;
        assert_eq!((d.pool.len().unwrap(), pool6().len().unwrap()), (1, 1));
        // A requested IPv6 address outside the subnet is refused, and takes no IPv4.
        let outside = d.handle(Request::Attach(AttachRequest {
            container_id: "c3".into(),
            netns: "/run/netns/p3".into(),
            ifname: "eth0".into(),
            requested_ip: None,
            requested_ip6: Some("fd00:10:245::9".parse().unwrap()),
            pod: None,
            port: None,
        }));
        assert!(matches!(outside, Response::Error(_)), "{outside:?}");
        assert_eq!((d.pool.len().unwrap(), pool6().len().unwrap()), (1, 1));
        // A restart restores both addresses.
        attach_in(&d, "c4", "/run/netns/p4");
        d.shutdown();
        drop(d);
        let d = Daemon::start_with(settings.clone(), host.clone(), Arc::new(NoStore))
            .expect("the daemon restarts");
        let ports = d.tables().ports.clone();
        let mut v6s: Vec<String> = (ports.iter().filter_map(|p| p.ip6))
            .map(|ip| ip.to_string())
            .collect();
        v6s.sort();
        // c2 held ::3 until its attach failed: round robin moves on.
        assert_eq!(v6s, ["fd00:10:244:1::2", "fd00:10:244:1::4"]);
        // DEL gives both back.
        let released = d
            .detach(&DetachRequest {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                netns: None,
            })
            .expect("detached");
        assert_eq!(released.1, Some(v6.ip));
        // GC collects both of what it does not keep.
        let gone = d.gc(&[]).expect("collected");
        assert_eq!(gone.len(), 1);
        let pool6 = d.pool6.as_ref().expect("an IPv6 pool");
        assert_eq!((d.pool.len().unwrap(), pool6.len().unwrap()), (0, 0));
        d.shutdown();
        drop(d);
        // A node no longer dual-stack starts, its IPv6 database empty.
        let (v4_only, _) = (settings.clone(), ());
        let v4_only = Settings {
            ipv6: None,
            ..v4_only
        };
        let d = Daemon::start_with(v4_only.clone(), host.clone(), Arc::new(NoStore))
            .expect("an empty IPv6 database is no obstacle");
        attach_in(&d, "c5", "/run/netns/p5");
        d.shutdown();
        drop(d);
        // But one that holds addresses stops it.
        let d = Daemon::start_with(settings.clone(), host.clone(), Arc::new(NoStore))
            .expect("dual stack again");
        attach_in(&d, "c6", "/run/netns/p6");
        d.shutdown();
        drop(d);
        let err = Daemon::start_with(v4_only, host, Arc::new(NoStore)).unwrap_err();
        assert!(
            err.to_string().contains("pod-subnet-v6 is not set"),
            "{err}"
        );
    }
}
