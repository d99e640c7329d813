//! A node's place in etcd: its subnet, claimed or taken back with a transaction, and
//! its registration, both under leases that it keeps alive.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use ipnet::Ipv4Net;

use super::records::{self, Cache, NodeRecord, PolicyRecords, Stored, SubnetRecord};
use super::{
    backoff, claim, text, EtcdStore, Inner, Registration, JOIN_PATIENCE, JOIN_PATIENCE_KNOWN,
    MAX_MESSAGE, REQUEST_TIMEOUT,
};
use crate::control::store::{Joining, StoreError};

/// Tries at claiming a free subnet before giving up (each lost race is one).
const CLAIM_ATTEMPTS: u32 = 64;

/// Why settling with etcd failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// etcd could not be reached or answered in time: try again.
    Unavailable(String),
    /// The records forbid it: trying again will not help.
    Refused(StoreError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unavailable(why) => f.write_str(why),
            Failure::Refused(e) => write!(f, "{e}"),
        }
    }
}

impl From<etcd_client::Error> for Failure {
    fn from(e: etcd_client::Error) -> Failure {
        Failure::Unavailable(text(e))
    }
}

/// The end of the range of keys that start with `prefix`: the prefix with its last
/// byte below 0xff raised by one (etcd's own `with_prefix`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or none): to the end of the keyspace.
    vec![0]
}

/// Runs one request with the request timeout.
async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(Failure::from),
        Err(_) => Err(Failure::Unavailable(format!(
            "{what}: no answer within {REQUEST_TIMEOUT:?}"
        ))),
    }
}

/// Whether a subnet could be had.
enum Take {
    /// It is this node's, under this lease.
    Won(i64),
    /// Another node (by name, if its record reads) holds it or one overlapping it.
    Taken(Option<String>),
}

fn stored(kv: &etcd_client::KeyValue) -> Stored {
    Stored {
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

impl EtcdStore {
    /// Joins as `me` (see [`crate::control::store::ClusterStore::join`]): retries
    /// while etcd is unreachable, and starts degraded on a subnet it already knows
    /// rather than wait long.
    pub(super) async fn join_cluster(&self, me: &Joining) -> Result<Ipv4Net, StoreError> {
        if !records::valid_name(&me.name) {
            return Err(StoreError::Conflict(format!(
                "node name {:?} cannot be an etcd key: letters, digits, '-', '.' and '_', at most {}",
                me.name,
                records::MAX_NAME_LEN
            )));
        }
        {
            let mut inner = self.inner.lock();
            inner.joining = Some(me.clone());
            inner.nodes = None;
        }
        let patience = match me.wanted {
            Some(_) => JOIN_PATIENCE_KNOWN,
            None => JOIN_PATIENCE,
        };
        let start = Instant::now();
        let mut tries = 0;
        loop {
            match self.settle(me).await {
                Ok(reg) => {
                    let subnet = reg.record.pod_subnet;
                    log::info!(
                        "etcd: node {} registered with subnet {subnet} (leases {:x}, {:x})",
                        me.name,
                        reg.node_lease,
                        reg.subnet_lease
                    );
                    let mut inner = self.inner.lock();
                    inner.registration = Some(reg);
                    inner.subnet = Some(subnet);
                    // The view is read again as this node now runs.
                    inner.nodes = None;
                    inner.session = super::Link::Up;
                    return Ok(subnet);
                }
                Err(Failure::Refused(e)) => return Err(e),
                Err(Failure::Unavailable(why)) if start.elapsed() < patience => {
                    log::warn!("etcd: {why}; trying again");
                    tokio::time::sleep(backoff(tries)).await;
                    tries += 1;
                }
                Err(Failure::Unavailable(why)) => {
                    let Some(subnet) = me.wanted else {
                        return Err(StoreError::Etcd(format!(
                            "{why}; this node has no subnet yet, so it cannot start without etcd"
                        )));
                    };
                    log::error!(
                        "etcd: {why}; starting degraded on subnet {subnet}, registering when etcd is back"
                    );
                    let mut inner = self.inner.lock();
                    inner.subnet = Some(subnet);
                    inner.nodes = None;
                    inner.session.down(why);
                    return Ok(subnet);
                }
            }
        }
    }

    /// Lists every key under the prefix into the cache: in pages of
    /// [`super::LIST_PAGE`] keys, all read at the revision of the first, so a
    /// cluster of any size is listed in messages of bounded size, as one snapshot.
    pub(super) async fn list(&self) -> Result<(), Failure> {
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE);
        let root = self.layout.root();
        let end = prefix_end(root.as_bytes());
        let mut from = root.into_bytes();
        let mut cache = Cache::default();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(super::LIST_PAGE);
            if cache.revision != 0 {
                options = options.with_revision(cache.revision);
            }
            let resp = timed("listing", kv.get(from.clone(), Some(options))).await?;
            if cache.revision == 0 {
                cache.revision = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                if let Ok(key) = kv.key_str() {
                    cache.keys.insert(key.to_owned(), stored(kv));
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    // The next page starts just after the last key.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        let mut inner = self.inner.lock();
        inner.cache = cache;
        inner.synced = true;
        inner.nodes = None;
        let Inner { objects, cache, .. } = &mut *inner;
        objects.sync(&self.layout, cache);
        PolicyRecords::forget_values(&self.layout, cache);
        self.rebuild_policy(&mut inner);
        self.rebuild_services(&mut inner);
        Ok(())
    }

    /// Settles this node's subnet and registers it: the subnet it wants, else one
    /// leased to it already (a crash between the claim and the pool's record of it),
    /// else a free one.
    async fn settle(&self, me: &Joining) -> Result<Registration, Failure> {
        self.list().await?;
        let len = self.settings.subnet_len;
        let mut chosen = None;
        if let Some(w) = me.wanted {
            match self.take(me, w).await? {
                Take::Won(lease) => chosen = Some((w, lease)),
                Take::Taken(owner) if me.strict => {
                    return Err(Failure::Refused(StoreError::Conflict(format!(
                        "subnet {w}, which this node holds addresses of or was configured with, is leased to {}; \
                         detach its pods (or give another pod-subnet) and start again",
                        owner.as_deref().unwrap_or("a record weftd cannot read")
                    ))))
                }
                Take::Taken(owner) => log::warn!(
                    "etcd: subnet {w}, which this node held, is now leased to {}; claiming another",
                    owner.as_deref().unwrap_or("someone")
                ),
            }
        }
        if chosen.is_none() {
            let mine = {
                let inner = self.inner.lock();
                records::leased(&self.layout, &inner.cache)
                    .into_iter()
                    .find(|(net, owner)| {
                        owner.as_deref() == Some(me.name.as_str())
                            && net.prefix_len() == len
                            && me.cluster.contains(net)
                    })
                    .map(|(net, _)| net)
            };
            if let Some(s) = mine {
                if let Take::Won(lease) = self.take(me, s).await? {
                    chosen = Some((s, lease));
                }
            }
        }
        let (subnet, subnet_lease) = match chosen {
            Some(c) => c,
            None => self.claim_free(me).await?,
        };
        let record = NodeRecord {
            name: me.name.clone(),
            underlay_ip: me.underlay_ip,
            pod_subnet: subnet,
            vtep_mac: me.vtep_mac,
            mode: me.mode,
            direct_routing: me.direct_routing,
            port: self.port,
            features: me.features.clone(),
            public_key: me.public_key,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let node_lease = self.register(&record).await?;
        Ok(Registration {
            record,
            node_lease,
            subnet_lease,
        })
    }

    /// Claims a free subnet, choosing again after each lost race.
    async fn claim_free(&self, me: &Joining) -> Result<(Ipv4Net, i64), Failure> {
        let len = self.settings.subnet_len;
        for attempt in 0..CLAIM_ATTEMPTS {
            let free = {
                let inner = self.inner.lock();
                let leased = records::leased(&self.layout, &inner.cache);
                claim::free(me.cluster, len, &leased, claim::SPREAD)
            };
            let Some(s) = claim::choose(&free, &me.name, attempt) else {
                return Err(Failure::Refused(StoreError::Exhausted {
                    cluster: me.cluster,
                    len,
                }));
            };
            match self.take(me, s).await? {
                Take::Won(lease) => {
                    log::info!("etcd: claimed subnet {s} (try {})", attempt + 1);
                    return Ok((s, lease));
                }
                Take::Taken(owner) => {
                    log::debug!("etcd: subnet {s} went to {owner:?} first; choosing again");
                    self.list().await?;
                }
            }
        }
        Err(Failure::Unavailable(format!(
            "lost {CLAIM_ATTEMPTS} races for a subnet in a row"
        )))
    }

    /// Takes subnet `s` for `me` under a new subnet lease: a claim if nobody leases
    /// it, a renewal if `me` does. Each is one transaction that holds only if the key
    /// is as it was read, so a racing node cannot win it too.
    ///
    /// The transaction also holds only if no subnet lease at all changed since they
    /// were read, and the read found none that overlaps `s`: nodes with different
    /// `subnet-len`s, or a configured `pod-subnet`, cannot win overlapping subnets.
    async fn take(&self, me: &Joining, s: Ipv4Net) -> Result<Take, Failure> {
        for _ in 0..CLAIM_ATTEMPTS {
            if let Some(t) = self.take_once(me, s).await? {
                return Ok(t);
            }
        }
        Err(Failure::Unavailable(format!(
            "subnet {s}: lost {CLAIM_ATTEMPTS} races in a row to other claims"
        )))
    }

    /// One try of [`EtcdStore::take`]; `None` when a claim changed the subnet leases
    /// between its read and its transaction.
    async fn take_once(&self, me: &Joining, s: Ipv4Net) -> Result<Option<Take>, Failure> {
        let mut c = self.client.clone();
        let key = self.layout.subnet(s);
        let range = self.layout.subnets();
        let read = timed(
            "reading the subnet leases",
            c.get(range.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let read_at = read.header().map_or(0, |h| h.revision());
        let mut leases = Cache {
            keys: Default::default(),
            revision: read_at,
        };
        for kv in read.kvs() {
            if let Ok(k) = kv.key_str() {
                leases.keys.insert(k.to_owned(), stored(kv));
            }
        }
        let holders = records::leased(&self.layout, &leases);
        if let Some((_, holder)) = holders.iter().find(|(net, holder)| {
            **net != s
                && (net.contains(&s.network()) || s.contains(&net.network()))
                && holder.as_deref() != Some(me.name.as_str())
        }) {
            return Ok(Some(Take::Taken(holder.clone())));
        }
        let current = leases.keys.get(&key).cloned();
        let owner = current.as_ref().map(|kv| {
            serde_json::from_slice::<SubnetRecord>(&kv.value)
                .ok()
                .map(|r| r.node)
        });
        let exact = match (&current, &owner) {
            (None, _) => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            (Some(kv), Some(Some(o))) if *o == me.name => {
                Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision)
            }
            (Some(_), o) => return Ok(Some(Take::Taken(o.clone().flatten()))),
        };
        // Nothing under subnets/ changed after the read.
        let unchanged = Compare::mod_revision(range, CompareOp::Less, read_at + 1).with_prefix();
        let ttl = self.settings.node_ttl + self.settings.subnet_grace;
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let lease = timed("granting a subnet lease", c.lease_grant(ttl, None))
            .await?
            .id();
        let value = serde_json::to_vec(&SubnetRecord {
            node: me.name.clone(),
            underlay_ip: me.underlay_ip,
        })
        .expect("a subnet record serializes");
        let put = TxnOp::put(
            key.clone(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        );
        let txn = Txn::new().when([exact, unchanged]).and_then([put]);
        let won = timed("claiming a subnet", c.txn(txn)).await?.succeeded();
        if !won {
            // Another node's claim came in between, of this subnet or another one:
            // the caller reads again.
            let _ = timed("revoking an unused lease", c.lease_revoke(lease)).await;
            return Ok(None);
        }
        // The key has left its old lease; the old lease held only it.
        if let Some(old) = current.map(|kv| kv.lease).filter(|&l| l != 0 && l != lease) {
            let _ = timed("revoking the old subnet lease", c.lease_revoke(old)).await;
        }
        Ok(Some(Take::Won(lease)))
    }

    /// Writes `record` under a new node lease and returns the lease.
    async fn register(&self, record: &NodeRecord) -> Result<i64, Failure> {
        let mut c = self.client.clone();
        let ttl = i64::try_from(self.settings.node_ttl.as_secs()).unwrap_or(i64::MAX);
        let lease = timed("granting the node lease", c.lease_grant(ttl, None))
            .await?
            .id();
        let value = serde_json::to_vec(record).expect("a node record serializes");
        let key = self.layout.node(&record.name);
        let put = c.put(key, value, Some(PutOptions::new().with_lease(lease)));
        timed("registering the node", put).await?;
        Ok(lease)
    }

    /// Keeps the registration alive for as long as the task runs: renews both leases
    /// every third of the node TTL, and registers again (on the same subnet) when
    /// either expired, as after a partition longer than the TTL.
    pub(super) async fn keep_registered(&self) {
        let period = (self.settings.node_ttl / 3).max(Duration::from_millis(500));
        let mut tries = 0;
        loop {
            let reg = self.inner.lock().registration.clone();
            let reg = match reg {
                Some(r) => r,
                None => match self.register_again().await {
                    Ok(r) => {
                        tries = 0;
                        r
                    }
                    Err(why) => {
                        self.inner.lock().session.down(why);
                        tokio::time::sleep(backoff(tries)).await;
                        tries += 1;
                        continue;
                    }
                },
            };
            match self.renew(&reg, period).await {
                Renewal::Lost(which) => {
                    log::warn!("etcd: the {which} lease expired; registering again");
                    self.inner.lock().registration = None;
                }
                Renewal::Failed(why) => {
                    log::warn!("etcd: renewing the registration: {why}");
                    self.inner.lock().session.down(why);
                    tokio::time::sleep(backoff(tries)).await;
                    tries += 1;
                }
            }
        }
    }

    /// Registers again on the subnet this node has, which only it will do.
    async fn register_again(&self) -> Result<Registration, String> {
        let Some(mut me) = self.inner.lock().joining.clone() else {
            return Err("the node never joined".into());
        };
        // Only ever the subnet the node runs on: its pods hold addresses of it.
        me.wanted = self.inner.lock().subnet.or(me.wanted);
        me.strict = true;
        match self.settle(&me).await {
            Ok(reg) => {
                log::info!(
                    "etcd: node {} registered again with subnet {}",
                    me.name,
                    reg.record.pod_subnet
                );
                let mut inner = self.inner.lock();
                inner.registration = Some(reg.clone());
                inner.session = super::Link::Up;
                Ok(reg)
            }
            Err(Failure::Unavailable(why)) => Err(why),
            Err(Failure::Refused(e)) => {
                log::error!("etcd: {e}");
                Err(e.to_string())
            }
        }
    }

    /// Renews `reg`'s leases every `period` until one is lost or etcd fails.
    async fn renew(&self, reg: &Registration, period: Duration) -> Renewal {
        let mut c = self.client.clone();
        let mut keepers = Vec::new();
        for (which, id) in [("node", reg.node_lease), ("subnet", reg.subnet_lease)] {
            match tokio::time::timeout(REQUEST_TIMEOUT, c.lease_keep_alive(id)).await {
                Ok(Ok((keeper, stream))) => keepers.push((which, keeper, stream)),
                // etcd-client opens a keep-alive by sending one, and reports a lease
                // that answers with no TTL left (expired, or revoked) this way; etcd
                // confirms it by a TTL of -1.
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) => {
                    return match timed("reading a lease", c.lease_time_to_live(id, None)).await {
                        Ok(t) if t.ttl() <= 0 => Renewal::Lost(which),
                        Ok(_) => Renewal::Failed(format!("opening a keep-alive: {why}")),
                        Err(f) => Renewal::Failed(f.to_string()),
                    };
                }
                Ok(Err(e)) => return Renewal::Failed(text(e)),
                Err(_) => {
                    return Renewal::Failed(format!(
                        "opening a keep-alive: no answer within {REQUEST_TIMEOUT:?}"
                    ))
                }
            }
        }
        loop {
            for (which, keeper, stream) in &mut keepers {
                let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                    keeper.keep_alive().await?;
                    stream.message().await
                })
                .await;
                match answer {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => return Renewal::Lost(which),
                    Ok(Ok(None)) => return Renewal::Failed("the keep-alive stream ended".into()),
                    Ok(Err(e)) => return Renewal::Failed(text(e)),
                    Err(_) => {
                        return Renewal::Failed(format!(
                            "a keep-alive had no answer within {REQUEST_TIMEOUT:?}"
                        ))
                    }
                }
            }
            self.inner.lock().session = super::Link::Up;
            tokio::time::sleep(period).await;
        }
    }
}

/// How keeping a registration alive ended.
enum Renewal {
    /// A lease expired: its keys are gone.
    Lost(&'static str),
    /// etcd failed; the leases may still be alive.
    Failed(String),
}
