//! Address arithmetic of a pod subnet: which addresses are reserved and which may be handed out.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::Error;

/// The shortest prefix accepted for a pod subnet: a /8 already holds 16 777 213 pod addresses,
/// far more than any node runs, and anything wider is almost surely a cluster CIDR passed by
/// mistake.
pub const MIN_PREFIX_LEN: u8 = 8;

/// The longest prefix accepted for a pod subnet: a /30 leaves one pod address once the network,
/// gateway and broadcast addresses are reserved (/31 and /32 leave none).
pub const MAX_PREFIX_LEN: u8 = 30;

/// A validated pod subnet, as integers: `network`, `network + 1` (the gateway) and the broadcast
/// address are reserved; `first..=last` may be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    net: Ipv4Net,
    network: u32,
    broadcast: u32,
}

impl Span {
    /// Checks that `net` can serve as a pod subnet.
    pub(crate) fn new(net: Ipv4Net) -> Result<Span, Error> {
        let refuse = |reason: String| Error::InvalidSubnet {
            subnet: net,
            reason,
        };
        let len = net.prefix_len();
        if len < MIN_PREFIX_LEN {
            return Err(refuse(format!(
                "prefix /{len} is wider than /{MIN_PREFIX_LEN}, the widest pod subnet accepted"
            )));
        }
        if len > MAX_PREFIX_LEN {
            return Err(refuse(format!(
                "prefix /{len} leaves no address for pods once the network, gateway and \
                 broadcast addresses are reserved (/{MAX_PREFIX_LEN} is the narrowest)"
            )));
        }
        if net.addr() != net.network() {
            return Err(refuse(format!(
                "host bits are set (did you mean {}?)",
                net.trunc()
            )));
        }
        Ok(Span {
            net,
            network: u32::from(net.network()),
            broadcast: u32::from(net.broadcast()),
        })
    }

    /// The subnet.
    pub(crate) fn net(&self) -> Ipv4Net {
        self.net
    }

    /// The gateway address: the first address after the network address.
    pub(crate) fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// The first address that may be allocated.
    pub(crate) fn first(&self) -> u32 {
        self.network + 2
    }

    /// The last address that may be allocated.
    pub(crate) fn last(&self) -> u32 {
        self.broadcast - 1
    }

    /// How many addresses may be allocated.
    pub(crate) fn capacity(&self) -> u32 {
        self.last() - self.first() + 1
    }

    /// Whether `ip` may be allocated.
    pub(crate) fn is_usable(&self, ip: u32) -> bool {
        (self.first()..=self.last()).contains(&ip)
    }

    /// Checks that `ip` may be allocated, saying why not.
    pub(crate) fn check_usable(&self, ip: Ipv4Addr) -> Result<(), Error> {
        let n = u32::from(ip);
        let what = if !self.net.contains(&ip) {
            return Err(Error::OutOfRange {
                ip,
                subnet: self.net,
            });
        } else if n == self.network {
            "network address"
        } else if n == self.network + 1 {
            "gateway address"
        } else if n == self.broadcast {
            "broadcast address"
        } else {
            return Ok(());
        };
        Err(Error::Reserved {
            ip,
            subnet: self.net,
            what,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(s: &str) -> Result<Span, Error> {
        Span::new(s.parse().unwrap())
    }

    #[test]
    fn slash_24_reserves_network_gateway_and_broadcast() {
        let s = span("10.244.2.0/24").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 244, 2, 1));
        assert_eq!(Ipv4Addr::from(s.first()), Ipv4Addr::new(10, 244, 2, 2));
        assert_eq!(Ipv4Addr::from(s.last()), Ipv4Addr::new(10, 244, 2, 254));
        assert_eq!(s.capacity(), 253);
        for (ip, what) in [
            ("10.244.2.0", "network address"),
            ("10.244.2.1", "gateway address"),
            ("10.244.2.255", "broadcast address"),
        ] {
            match s.check_usable(ip.parse().unwrap()) {
                Err(Error::Reserved { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{ip}: {other:?}"),
            }
        }
        assert!(s.check_usable("10.244.2.2".parse().unwrap()).is_ok());
        assert!(s.check_usable("10.244.2.254".parse().unwrap()).is_ok());
        assert!(matches!(
            s.check_usable("10.244.3.2".parse().unwrap()),
            Err(Error::OutOfRange { .. })
        ));
    }

    #[test]
    fn every_accepted_prefix_has_a_consistent_range() {
        for len in MIN_PREFIX_LEN..=MAX_PREFIX_LEN {
            let net = Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), len).unwrap();
            let s = Span::new(net).unwrap();
            assert_eq!(u64::from(s.capacity()), (1u64 << (32 - len)) - 3, "/{len}");
            assert!(s.is_usable(s.first()) && s.is_usable(s.last()), "/{len}");
            assert!(
                !s.is_usable(s.first() - 1) && !s.is_usable(s.last() + 1),
                "/{len}"
            );
        }
    }

    #[test]
    fn slash_30_has_one_pod_address() {
        let s = span("192.168.7.4/30").unwrap();
        assert_eq!(s.first(), s.last());
        assert_eq!(Ipv4Addr::from(s.first()), Ipv4Addr::new(192, 168, 7, 6));
    }

    #[test]
    fn refuses_too_narrow_too_wide_and_host_bits() {
        for bad in ["10.0.0.0/31", "10.0.0.0/32", "10.0.0.0/7", "0.0.0.0/0"] {
            assert!(
                matches!(span(bad), Err(Error::InvalidSubnet { .. })),
                "{bad}"
            );
        }
        let err = span("10.244.2.1/24").unwrap_err();
        assert!(
            err.to_string().contains("did you mean 10.244.2.0/24"),
            "{err}"
        );
    }

    #[test]
    fn top_of_the_address_space_does_not_overflow() {
        let s = span("255.255.255.0/24").unwrap();
        assert_eq!(Ipv4Addr::from(s.last()), Ipv4Addr::new(255, 255, 255, 254));
        assert!(s.check_usable(Ipv4Addr::BROADCAST).is_err());
    }
}
