//! Address arithmetic of a pod subnet: which addresses are reserved and which may be handed out.

use crate::{Error, Family};

/// The shortest prefix accepted for an IPv4 pod subnet ([`Family::MIN_PREFIX_LEN`]).
pub const MIN_PREFIX_LEN: u8 = <ipnet::Ipv4Net as Family>::MIN_PREFIX_LEN;

/// The longest prefix accepted for an IPv4 pod subnet ([`Family::MAX_PREFIX_LEN`]).
pub const MAX_PREFIX_LEN: u8 = <ipnet::Ipv4Net as Family>::MAX_PREFIX_LEN;

/// A validated pod subnet, as integers: `network` and `network + 1` (the gateway) are
/// reserved, and so is the broadcast address in IPv4; `first..=last` may be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span<N> {
    net: N,
    network: u128,
    /// The subnet's last address.
    top: u128,
}

impl<N: Family> Span<N> {
    /// Checks that `net` can serve as a pod subnet.
    pub(crate) fn new(net: N) -> Result<Span<N>, Error> {
        let refuse = |reason: String| Error::InvalidSubnet {
            subnet: net.into(),
            reason,
        };
        let (addr, len) = net.parts();
        if len < N::MIN_PREFIX_LEN {
            return Err(refuse(format!(
                "prefix /{len} is wider than /{}, the widest {} pod subnet accepted",
                N::MIN_PREFIX_LEN,
                N::NAME
            )));
        }
        if len > N::MAX_PREFIX_LEN {
            let reserved = match N::BROADCAST {
                true => "network, gateway and broadcast addresses are",
                false => "subnet-router anycast and gateway addresses are",
            };
            return Err(refuse(format!(
                "prefix /{len} leaves no address for pods once the {reserved} reserved (/{} is \
                 the narrowest)",
                N::MAX_PREFIX_LEN
            )));
        }
        let network = net.trunc().parts().0;
        if addr != network {
            return Err(refuse(format!(
                "host bits are set (did you mean {}?)",
                net.trunc()
            )));
        }
        let host_bits = u32::from(N::bits() - len);
        Ok(Span {
            net,
            network,
            top: network + ((1u128 << host_bits) - 1),
        })
    }

    /// The subnet.
    pub(crate) fn net(&self) -> N {
        self.net
    }

    /// The gateway address: the first address after the network address.
    pub(crate) fn gateway(&self) -> N::Addr {
        N::addr(self.network + 1)
    }

    /// The first address that may be allocated.
    pub(crate) fn first(&self) -> u128 {
        self.network + 2
    }

    /// The last address that may be allocated.
    pub(crate) fn last(&self) -> u128 {
        match N::BROADCAST {
            true => self.top - 1,
            false => self.top,
        }
    }

    /// How many addresses may be allocated.
    pub(crate) fn capacity(&self) -> u128 {
        self.last() - self.first() + 1
    }

    /// Whether `ip` may be allocated.
    pub(crate) fn is_usable(&self, ip: u128) -> bool {
        (self.first()..=self.last()).contains(&ip)
    }

    /// Checks that `ip` may be allocated, saying why not.
    pub(crate) fn check_usable(&self, ip: N::Addr) -> Result<(), Error> {
        let n = N::int_of(ip);
        let what = if !(self.network..=self.top).contains(&n) {
            return Err(Error::OutOfRange {
                ip: ip.into(),
                subnet: self.net.into(),
            });
        } else if n == self.network && N::BROADCAST {
            "network address"
        } else if n == self.network {
            "subnet-router anycast address"
        } else if n == self.network + 1 {
            "gateway address"
        } else if n == self.top && N::BROADCAST {
            "broadcast address"
        } else {
            return Ok(());
        };
        Err(Error::Reserved {
            ip: ip.into(),
            subnet: self.net.into(),
            what,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use ipnet::{Ipv4Net, Ipv6Net};

    use super::*;

    fn span(s: &str) -> Result<Span<Ipv4Net>, Error> {
        Span::new(s.parse().unwrap())
    }

    fn span6(s: &str) -> Result<Span<Ipv6Net>, Error> {
        Span::new(s.parse().unwrap())
    }

    fn v4(n: u128) -> Ipv4Addr {
        <Ipv4Net as Family>::addr(n)
    }

    #[test]
    fn slash_24_reserves_network_gateway_and_broadcast() {
        let s = span("10.244.2.0/24").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 244, 2, 1));
        assert_eq!(v4(s.first()), Ipv4Addr::new(10, 244, 2, 2));
        assert_eq!(v4(s.last()), Ipv4Addr::new(10, 244, 2, 254));
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
            assert_eq!(s.capacity(), (1u128 << (32 - len)) - 3, "/{len}");
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
        assert_eq!(v4(s.first()), Ipv4Addr::new(192, 168, 7, 6));
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
        assert_eq!(v4(s.last()), Ipv4Addr::new(255, 255, 255, 254));
        assert!(s.check_usable(Ipv4Addr::BROADCAST).is_err());
    }

    #[test]
    fn ipv6_reserves_the_anycast_and_gateway_addresses_and_has_no_broadcast() {
        let s = span6("fd00:10:244:2::/64").unwrap();
        assert_eq!(s.gateway(), "fd00:10:244:2::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            Ipv6Addr::from(s.first()),
            "fd00:10:244:2::2".parse::<Ipv6Addr>().unwrap()
        );
        let last = "fd00:10:244:2:ffff:ffff:ffff:ffff"
            .parse::<Ipv6Addr>()
            .unwrap();
        assert_eq!(Ipv6Addr::from(s.last()), last);
        assert!(s.check_usable(last).is_ok(), "no broadcast in IPv6");
        assert_eq!(s.capacity(), (1u128 << 64) - 2);
        for (ip, what) in [
            ("fd00:10:244:2::", "subnet-router anycast address"),
            ("fd00:10:244:2::1", "gateway address"),
        ] {
            match s.check_usable(ip.parse().unwrap()) {
                Err(Error::Reserved { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{ip}: {other:?}"),
            }
        }
        assert!(matches!(
            s.check_usable("fd00:10:244:3::2".parse().unwrap()),
            Err(Error::OutOfRange { .. })
        ));
        let s = span6("fd00::4/126").unwrap();
        assert_eq!(s.capacity(), 2);
        let top = span6("ffff:ffff:ffff:ffff::/64").unwrap();
        assert_eq!(
            top.last(),
            u128::MAX,
            "the top of the space does not overflow"
        );
    }

    #[test]
    fn ipv6_refuses_too_narrow_too_wide_and_host_bits() {
        for bad in ["fd00::/127", "fd00::/128", "fd00::/47", "::/0"] {
            let err = span6(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidSubnet { .. }), "{bad}");
            assert!(
                err.to_string().contains("IPv6") || err.to_string().contains("anycast"),
                "{err}"
            );
        }
        let err = span6("fd00::1/64").unwrap_err();
        assert!(err.to_string().contains("did you mean fd00::/64"), "{err}");
    }
}
