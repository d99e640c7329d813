//! A TCP connection between two simulated pods, driven by the tests' loop: the
//! client sends a pseudo-random stream and closes, the server checks every byte
//! and closes in turn.

use std::net::IpAddr;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::Sim;

fn tcp_socket() -> tcp::Socket<'static> {
    let rx = tcp::SocketBuffer::new(vec![0; 256 * 1024]);
    let tx = tcp::SocketBuffer::new(vec![0; 256 * 1024]);
    tcp::Socket::new(rx, tx)
}

/// One TCP connection from pod `from` to pod `to` that sends `data` and closes.
#[derive(Debug)]
pub struct Transfer {
    /// The client pod.
    pub from: usize,
    /// The server pod.
    pub to: usize,
    client: SocketHandle,
    server: SocketHandle,
    data: Vec<u8>,
    /// Bytes the client has written.
    pub sent: usize,
    /// Bytes the server has read.
    pub received: usize,
    /// The first offset where what the server read differs from what was sent.
    pub first_mismatch: Option<usize>,
    client_closed: bool,
    server_closed: bool,
    /// The client's address and port as the server saw them.
    pub server_saw: Option<IpEndpoint>,
}

impl Transfer {
    /// Pod `from` connects to pod `to`, which listens on `port`, to send `data`.
    pub fn start(sim: &mut Sim, from: usize, to: usize, port: u16, data: Vec<u8>) -> Transfer {
        let dst = (sim.pods[to].ip.into(), port);
        Transfer::start_via(sim, from, dst, to, port, data)
    }

    /// [`Transfer::start`] over IPv6: to pod `to`'s IPv6 address.
    pub fn start6(sim: &mut Sim, from: usize, to: usize, port: u16, data: Vec<u8>) -> Transfer {
        let dst = (super::ip6_of(sim.pods[to].ip).into(), port);
        Transfer::start_via(sim, from, dst, to, port, data)
    }

    /// Pod `from` connects to `dst` (a Service's address and port, say), which
    /// leads to pod `to` listening on `port`, to send `data`. The client's port is
    /// 40000 + `port`.
    pub fn start_via(
        sim: &mut Sim,
        from: usize,
        dst: (IpAddr, u16),
        to: usize,
        port: u16,
        data: Vec<u8>,
    ) -> Transfer {
        let server = sim.pods[to].sockets.add(tcp_socket());
        sim.pods[to]
            .sockets
            .get_mut::<tcp::Socket<'_>>(server)
            .listen(port)
            .expect("listen");
        let pod = &mut sim.pods[from];
        let client = pod.sockets.add(tcp_socket());
        pod.sockets
            .get_mut::<tcp::Socket<'_>>(client)
            .connect(
                pod.iface.context(),
                (IpAddress::from(dst.0), dst.1),
                40_000 + port,
            )
            .expect("connect");
        Transfer {
            from,
            to,
            client,
            server,
            data,
            sent: 0,
            received: 0,
            first_mismatch: None,
            client_closed: false,
            server_closed: false,
            server_saw: None,
        }
    }

    /// The applications' part of a step: write, read, verify, close. Returns whether
    /// everything was received and both ends have closed.
    pub fn pump(&mut self, sim: &mut Sim) -> bool {
        let client = sim.pods[self.from]
            .sockets
            .get_mut::<tcp::Socket<'_>>(self.client);
        if self.sent < self.data.len() && client.can_send() {
            self.sent += client
                .send_slice(&self.data[self.sent..])
                .expect("send on an open socket");
        }
        if self.sent == self.data.len() && !self.client_closed {
            client.close();
            self.client_closed = true;
        }
        let client_state = client.state();

        let server = sim.pods[self.to]
            .sockets
            .get_mut::<tcp::Socket<'_>>(self.server);
        if self.server_saw.is_none() {
            self.server_saw = server.remote_endpoint();
        }
        while server.can_recv() {
            let expect = &self.data[self.received.min(self.data.len())..];
            let (received, mismatch) = (&mut self.received, &mut self.first_mismatch);
            server
                .recv(|got| {
                    let n = got.len();
                    if mismatch.is_none() {
                        let bad = got
                            .iter()
                            .zip(expect)
                            .position(|(g, e)| g != e)
                            .or((n > expect.len()).then_some(expect.len()));
                        if let Some(i) = bad {
                            *mismatch = Some(*received + i);
                        }
                    }
                    *received += n;
                    (n, ())
                })
                .expect("recv on a readable socket");
        }
        if server.state() == tcp::State::CloseWait && !self.server_closed {
            server.close();
            self.server_closed = true;
        }
        self.received == self.data.len()
            && server.state() == tcp::State::Closed
            && matches!(client_state, tcp::State::TimeWait | tcp::State::Closed)
    }

    /// The client's and the server's TCP states.
    pub fn states(&self, sim: &Sim) -> (tcp::State, tcp::State) {
        (
            sim.pods[self.from]
                .sockets
                .get::<tcp::Socket<'_>>(self.client)
                .state(),
            sim.pods[self.to]
                .sockets
                .get::<tcp::Socket<'_>>(self.server)
                .state(),
        )
    }

    /// Runs the transfer to its end within `limit` steps, checks that all the data
    /// arrived intact and that the server saw the client at `client` (its own
    /// address: no NAT), and removes the sockets; panics naming `what` otherwise.
    pub fn finish(mut self, sim: &mut Sim, limit: u64, client: IpAddress, what: &str) {
        let steps = sim.run_until(limit, |sim| self.pump(sim));
        let (client_state, server_state) = self.states(sim);
        let len = self.data.len();
        assert!(
            steps.is_some(),
            "{what} stalled after {limit} steps: sent {}/{len}, received {}, \
             client {client_state}, server {server_state}; {}",
            self.sent,
            self.received,
            sim.drops_report()
        );
        assert_eq!(
            self.first_mismatch, None,
            "{what}: received bytes differ from the sent ones at this offset"
        );
        assert_eq!(self.received, len, "{what}: byte count");
        assert_eq!(
            self.server_saw.map(|e| e.addr),
            Some(client),
            "{what}: the server must see the client's own address (no NAT)"
        );
        self.remove(sim);
    }

    /// Removes both sockets from their pods.
    pub fn remove(self, sim: &mut Sim) {
        sim.pods[self.from].sockets.remove(self.client);
        sim.pods[self.to].sockets.remove(self.server);
    }
}
