//! Following etcd: one watch on the whole prefix, from the revision after the last
//! one seen, so a watch broken by a dead connection or a restarted etcd resumes with
//! no event missed. Only a compaction past that revision forces a fresh list.
//!
//! Responses that are already waiting when one is taken are applied with it, and
//! make one view: a burst of changes (a deployment's pods, a list's worth of
//! catching up) costs one view, not one per response.

use etcd_client::{EventType, WatchOptions};
use futures_util::{FutureExt, StreamExt};

use super::records::KeyKind;
use super::{backoff, text, EtcdStore, Link};
use crate::control::store::OnChange;

/// How a watch ended.
enum End {
    /// etcd compacted the history the watch needed: list again.
    Compacted,
    /// The connection or etcd failed.
    Broken(String),
}

impl EtcdStore {
    /// Follows the store until the task is aborted, calling `on_change` with each new
    /// view.
    ///
    /// The first view goes out as soon as the cache is filled, by this task's list or
    /// another's (the registration's, when the node started with etcd unreachable):
    /// the watch may see no event for a long time.
    pub(super) async fn follow(&self, on_change: OnChange) {
        let mut tries = 0;
        let mut told = false;
        loop {
            let must_list = self.inner.lock().cache.revision == 0;
            if must_list {
                if let Err(f) = self.list().await {
                    self.inner.lock().watch.down(f.to_string());
                    tokio::time::sleep(backoff(tries)).await;
                    tries += 1;
                    continue;
                }
            }
            if must_list || !told {
                let view = self.view(&mut self.inner.lock());
                on_change(view);
                told = true;
            }
            match self.watch_once(&on_change).await {
                End::Compacted => {
                    log::warn!("etcd: the watch fell behind a compaction; listing again");
                    self.inner.lock().cache.revision = 0;
                }
                End::Broken(why) => {
                    log::warn!("etcd: watch: {why}; resuming");
                    self.inner.lock().watch.down(why);
                    tokio::time::sleep(backoff(tries)).await;
                    tries += 1;
                }
            }
        }
    }

    /// One watch from the revision after the cache's, applying every event to the
    /// cache, until it breaks.
    async fn watch_once(&self, on_change: &OnChange) -> End {
        let from = self.inner.lock().cache.revision + 1;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let mut c = (self.client.watch_client()).max_decoding_message_size(super::MAX_MESSAGE);
        let opened = tokio::time::timeout(
            super::REQUEST_TIMEOUT,
            c.watch(self.layout.root(), Some(options)),
        )
        .await;
        let mut stream = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return End::Broken(text(e)),
            Err(_) => return End::Broken("opening the watch timed out".into()),
        };
        loop {
            let mut next = Some(stream.next().await);
            let mut changed = false;
            let mut taken = 0;
            // This response, and those waiting behind it.
            while let Some(item) = next.take() {
                let msg = match item {
                    Some(Ok(m)) => m,
                    None => return End::Broken("the watch stream ended".into()),
                    Some(Err(e)) => return End::Broken(text(e)),
                };
                if msg.compact_revision() > 0 {
                    return End::Compacted;
                }
                if msg.canceled() {
                    return End::Broken(format!(
                        "the watch was cancelled: {}",
                        msg.cancel_reason()
                    ));
                }
                changed |= self.apply(&msg);
                taken += 1;
                if taken < super::COALESCE {
                    next = stream.next().now_or_never();
                }
            }
            if changed {
                let view = self.view(&mut self.inner.lock());
                on_change(view);
            }
        }
    }

    /// Applies a watch response to the cache, reading the policy objects it
    /// changed; returns whether a key changed.
    fn apply(&self, msg: &etcd_client::WatchResponse) -> bool {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        inner.watch = Link::Up;
        let (mut policy, mut services) = (false, false);
        for event in msg.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            let kind = self.layout.classify(key);
            if matches!(kind, KeyKind::Node(_) | KeyKind::Subnet(_)) {
                inner.nodes = None;
            }
            match event.event_type() {
                EventType::Put => {
                    let mut stored = super::records::Stored {
                        value: kv.value().to_vec(),
                        create_revision: kv.create_revision(),
                        mod_revision: kv.mod_revision(),
                        lease: kv.lease(),
                    };
                    if inner.objects.update(&self.layout, key, Some(&stored)) {
                        // Read: the object stands for the bytes.
                        stored.value = Vec::new();
                        services |= kind.is_service();
                        policy |= !kind.is_service();
                    }
                    inner.cache.keys.insert(key.to_owned(), stored);
                }
                EventType::Delete => {
                    let object = inner.objects.update(&self.layout, key, None);
                    services |= object && kind.is_service();
                    policy |= object && !kind.is_service();
                    inner.cache.keys.remove(key);
                    inner.logged.remove(key);
                }
            }
            inner.cache.revision = inner.cache.revision.max(kv.mod_revision());
        }
        // A progress notification says nothing changed up to its revision. (Not the
        // answer that created the watch: events before its revision may follow.)
        if msg.events().is_empty() && !msg.created() {
            if let Some(h) = msg.header() {
                inner.cache.revision = inner.cache.revision.max(h.revision());
            }
        }
        if policy {
            self.rebuild_policy(inner);
        }
        if services {
            self.rebuild_services(inner);
        }
        !msg.events().is_empty()
    }
}
