//! Network matchers: CIDRs (IPv4 kept IPv4-mapped, as the kernel does) and
//! port sets.
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

/// `addr` and `port` of a connect rule. Empty lists mean "any".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InetMatch {
    pub nets: Vec<Ipv6Net>,
    pub ports: Vec<(u16, u16)>,
}

/// Port ranges wider than this stay in user space (the kernel takes exact
/// ports only, so a range compiles to one key per port).
pub const KERNEL_PORTS_MAX: u32 = 16;

pub fn mapped(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// An address, a CIDR or `localhost`, as IPv6 networks.
pub fn parse_net(text: &str) -> Result<Vec<Ipv6Net>, String> {
    if text == "localhost" {
        return Ok(vec![
            v6net(IpNet::V4("127.0.0.0/8".parse().map_err(|_| "unreachable")?)),
            Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).map_err(|e| e.to_string())?,
        ]);
    }
    let net = match text.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "bad address `{text}`: expected an IP address, a CIDR such as 10.0.0.0/8, or `localhost` (host names are not resolved)"
                ));
            }
        },
    };
    Ok(vec![v6net(net.trunc())])
}

fn v6net(net: IpNet) -> Ipv6Net {
    match net {
        IpNet::V4(n) => Ipv6Net::new(n.network().to_ipv6_mapped(), n.prefix_len() + 96)
            .unwrap_or_else(|_| Ipv6Net::default()),
        IpNet::V6(n) => n,
    }
}

/// A network as written: IPv4 ones without their IPv4-mapped prefix.
pub fn show(net: &Ipv6Net) -> String {
    match net.network().to_ipv4_mapped() {
        Some(v4) if net.prefix_len() >= 96 => format!("{v4}/{}", net.prefix_len() - 96),
        _ => net.to_string(),
    }
}

/// `443`, or a range `8000-8100`.
pub fn parse_ports(text: &str) -> Result<(u16, u16), String> {
    let one = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u16>() {
            Ok(0) => Err(format!(
                "bad port `{text}`: 0 is not a port (leave `port` out to match any port)"
            )),
            Ok(p) => Ok(p),
            Err(_) => Err(format!(
                "bad port `{text}`: expected 1-65535 or a range such as 8000-8100"
            )),
        }
    };
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (one(a)?, one(b)?),
        None => {
            let p = one(text)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("bad port range `{text}`: {lo} is above {hi}"));
    }
    Ok((lo, hi))
}

impl InetMatch {
    pub fn matches(&self, ip: Ipv6Addr, port: u16) -> bool {
        (self.nets.is_empty() || self.nets.iter().any(|n| n.contains(&ip)))
            && (self.ports.is_empty()
                || self
                    .ports
                    .iter()
                    .any(|(lo, hi)| (*lo..=*hi).contains(&port)))
    }

    /// The exact ports to compile (0: any), or `None` when there are too many.
    pub fn kernel_ports(&self) -> Option<Vec<u16>> {
        if self.ports.is_empty() {
            return Some(vec![0]);
        }
        let count: u32 = self
            .ports
            .iter()
            .map(|(lo, hi)| u32::from(*hi) - u32::from(*lo) + 1)
            .sum();
        (count <= KERNEL_PORTS_MAX)
            .then(|| self.ports.iter().flat_map(|(lo, hi)| *lo..=*hi).collect())
    }

    pub fn kernel_nets(&self) -> Vec<Ipv6Net> {
        if self.nets.is_empty() {
            vec![Ipv6Net::default()]
        } else {
            self.nets.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_rules_match_ipv4_mapped_addresses() {
        let m = InetMatch {
            nets: parse_net("127.0.0.0/8").unwrap(),
            ports: vec![],
        };
        assert!(m.matches(mapped("127.0.0.1".parse().unwrap()), 80));
        assert!(m.matches("::ffff:127.0.0.1".parse().unwrap(), 80));
        assert!(!m.matches("::1".parse().unwrap(), 80));
        assert!(!m.matches(mapped("128.0.0.1".parse().unwrap()), 80));
        let any6 = InetMatch {
            nets: parse_net("::/0").unwrap(),
            ports: vec![],
        };
        assert!(any6.matches(mapped("10.1.2.3".parse().unwrap()), 1));
        let lh = InetMatch {
            nets: parse_net("localhost").unwrap(),
            ports: vec![parse_ports("8000-8001").unwrap()],
        };
        assert!(lh.matches("::1".parse().unwrap(), 8001));
        assert!(!lh.matches("::1".parse().unwrap(), 8002));
    }

    #[test]
    fn bad_addresses_and_ports_are_refused() {
        for bad in ["10.0.0.0/33", "example.com", "1.2.3", "::/129", ""] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
        for bad in ["0", "70000", "9-3", "x", "1-"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_net("10.1.2.3/8").unwrap()[0].to_string(),
            "::ffff:10.0.0.0/104"
        );
    }

    #[test]
    fn small_port_ranges_expand_for_the_kernel() {
        let m = |p: &[(u16, u16)]| InetMatch {
            nets: vec![],
            ports: p.to_vec(),
        };
        assert_eq!(m(&[]).kernel_ports(), Some(vec![0]));
        assert_eq!(
            m(&[(80, 81), (443, 443)]).kernel_ports(),
            Some(vec![80, 81, 443])
        );
        assert_eq!(m(&[(8000, 8100)]).kernel_ports(), None);
    }
}
