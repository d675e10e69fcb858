//! This host's own addresses, on every interface and in both families (getifaddrs, through
//! `if-addrs`): an ICMP error sent from one of them was made by this host — its own firewall
//! rejecting the packet in its output chain — not by a router or the destination.

use std::net::IpAddr;

/// Whether `ip` is one of this host's addresses right now. Read afresh each time: addresses come
/// and go (DHCP, a VPN), and the question is only asked when a connection failed with ICMP.
pub fn is_this_hosts_address(ip: IpAddr) -> bool {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces.iter().any(|i| i.ip() == ip),
        // Without the list, nothing can be claimed as ours: the ICMP keeps the network's reading.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_ours_and_a_documentation_address_is_not() {
        assert!(is_this_hosts_address("127.0.0.1".parse().unwrap()));
        assert!(!is_this_hosts_address("198.51.100.77".parse().unwrap()));
    }
}
