//! What a worker's core sends through for one batch ([`IoSink`]): its port
//! queues, the handoff rings to the workers that own the other ports' queues, and
//! its tunnel socket, through the seal stage if the node seals; and how each send
//! is counted.

use std::io;
use std::net::SocketAddrV4;

use super::plan::{self, Wakes};
use super::{Handoff, Io, LARGE_LEN};
use crate::core::{Offload, Report, Sink, Time, TxError};
use crate::crypto::stage::{self, Stage};
use crate::io::udp::{Account, Outcome, Tunnel};
use crate::tables::counters::{Counters, DropReason};
use crate::tables::{PeerEntry, PortEntry, Tables};
/// The seal stage's view of a worker's tunnel socket: sends are counted on the
/// peers they go to.
pub(super) struct UdpOut<'a> {
    tunnel: &'a mut Tunnel,
    account: &'a mut Account<'a>,
}

impl stage::Tunnel for UdpOut<'_> {
    fn send(&mut self, peer: &PeerEntry, lane: usize, datagram: &[u8]) {
        self.tunnel.push(peer.addr, lane, datagram, self.account);
    }

    fn send_run(&mut self, peer: &PeerEntry, lane: usize, run: &[u8], segment: usize) {
        (self.tunnel).send_run(peer.addr, lane, run, segment, self.account);
    }

    fn send_to(&mut self, addr: SocketAddrV4, datagram: &[u8]) {
        self.tunnel.push(addr, 0, datagram, self.account);
    }
}

impl Io {
    /// Sends `frame` on the queue in `slot`, remembering to flush it.
    #[inline]
    pub(super) fn send_on(
        &mut self,
        slot: usize,
        offload: &Offload,
        frame: &[u8],
    ) -> Result<(), TxError> {
        let Some(Some(q)) = self.queues.get_mut(slot) else {
            return Err(TxError::Failed);
        };
        if !q.dirty {
            q.dirty = true;
            self.dirty.push(slot);
        }
        q.queue.send(offload, frame).map_err(|e| tx_error(&e))
    }

    /// The seal stage over this worker's socket, if the node seals.
    pub(super) fn stage<'a>(
        &'a mut self,
        tables: &'a Tables,
        now: Time,
        account: &'a mut Account<'a>,
    ) -> Option<Stage<'a, UdpOut<'a>>> {
        let sealer = self.shared.sealer.as_deref()?;
        Some(Stage {
            sealer,
            cache: &mut self.seal,
            tables,
            now,
            tunnel: UdpOut {
                tunnel: &mut self.tunnel,
                account,
            },
        })
    }

    /// Flushes the queues sent to in this batch.
    pub(super) fn flush_queues(&mut self) {
        for slot in self.dirty.drain(..) {
            if let Some(Some(q)) = self.queues.get_mut(slot) {
                q.dirty = false;
                q.queue.flush();
            }
        }
    }
}

/// The I/O side of the core for one worker, lent to it for one batch.
pub(super) struct IoSink<'a> {
    pub(super) io: &'a mut Io,
    /// The batch's snapshot, to count sends on.
    pub(super) tables: &'a Tables,
    pub(super) now: Time,
    /// The workers handed frames in this batch, to wake at its end.
    pub(super) wake: &'a mut Wakes,
}

impl IoSink<'_> {
    /// Hands `frame` to the worker that owns a queue of `port`. That worker counts
    /// the send when it writes the frame.
    fn handoff(
        &mut self,
        port: &PortEntry,
        offload: &Offload,
        frame: &[u8],
    ) -> Result<(), TxError> {
        let owner = plan::handoff_owner(self.io.index, port.queues, self.io.shared.inboxes.len());
        // The owner may be this worker, when the port's queue is out of its slot
        // for the batch that lends its frames: the frame waits in this worker's inbox.
        if frame.len() > LARGE_LEN {
            return Err(TxError::Failed);
        }
        let pool = self.io.shared.pool_for(frame.len());
        let Some(mut buf) = pool.pop() else {
            return Err(TxError::RingFull);
        };
        buf[..frame.len()].copy_from_slice(frame);
        let h = Handoff {
            port: port.id,
            offload: *offload,
            len: frame.len(),
            buf,
        };
        if let Err(h) = self.io.shared.inboxes[owner].push(h) {
            let _ = pool.push(h.buf);
            return Err(TxError::RingFull);
        }
        self.wake.add(owner);
        Ok(())
    }
}

fn tx_error(e: &io::Error) -> TxError {
    match e.kind() {
        io::ErrorKind::WouldBlock => TxError::Full,
        _ if e.raw_os_error() == Some(libc::ENOBUFS) => TxError::Full,
        _ => TxError::Failed,
    }
}

/// Counts a send to a port, done or failed.
pub(super) fn count_port_send(
    counters: &Counters,
    worker: usize,
    len: usize,
    result: Result<(), TxError>,
) {
    match result {
        Ok(()) => counters.tx(worker, len),
        Err(e) => counters.discard(worker, e.reason()),
    }
}

/// Counts what became of tunnel sends on the peers they went to. A destination that
/// is no peer of the snapshot cannot happen (sends are made and flushed within one
/// batch); it would be counted on the tunnel as failed.
pub(super) fn peer_account<'t>(
    tables: &'t Tables,
    worker: usize,
) -> impl FnMut(SocketAddrV4, Outcome) + 't {
    move |dest, o| {
        let counters = tables
            .peer_by_ip(*dest.ip())
            .map_or(&tables.tunnel, |j| &tables.peers[j].counters);
        counters.tx_many(worker, o.sent, o.sent_bytes);
        counters.discard_many(worker, DropReason::TxError, o.lost);
    }
}

impl Sink for IoSink<'_> {
    #[inline]
    fn to_port(&mut self, port: &PortEntry, offload: &Offload, frame: &[u8]) {
        let worker = self.io.index;
        match self.io.queues.get_mut(port.id.slot as usize) {
            Some(Some(q)) if q.generation == port.id.generation => {
                let sent = self.io.send_on(port.id.slot as usize, offload, frame);
                count_port_send(&port.counters, worker, frame.len(), sent);
            }
            _ => {
                if let Err(e) = self.handoff(port, offload, frame) {
                    port.counters.discard(worker, e.reason());
                }
            }
        }
    }

    #[inline]
    fn to_peer(&mut self, peer: &PeerEntry, lane: usize, datagram: &[u8]) {
        let account: &mut Account<'_> = &mut peer_account(self.tables, self.io.index);
        if self.io.shared.sealer.is_none() {
            return self.io.tunnel.push(peer.addr, lane, datagram, account);
        }
        if let Some(mut stage) = self.io.stage(self.tables, self.now, account) {
            stage.to_peer(peer, lane, datagram);
        }
    }

    #[inline]
    fn to_peer_run(&mut self, peer: &PeerEntry, lane: usize, run: &[u8], segment: usize) {
        let account: &mut Account<'_> = &mut peer_account(self.tables, self.io.index);
        if self.io.shared.sealer.is_none() {
            return self
                .io
                .tunnel
                .send_run(peer.addr, lane, run, segment, account);
        }
        if let Some(mut stage) = self.io.stage(self.tables, self.now, account) {
            stage.to_peer_run(peer, lane, run, segment);
        }
    }

    fn report(&mut self, report: Report) {
        self.tables.apply(self.now, report);
    }
}
