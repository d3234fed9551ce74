//! Longest-prefix match over IPv4 and IPv6 networks: one hash map per prefix length present, so a
//! lookup costs at most one probe per distinct length (a few dozen), whatever the table size.

use std::{
    hash::{BuildHasherDefault, Hasher},
    net::IpAddr,
};

use ipnet::IpNet;

/// Keys are network addresses (not attacker-chosen in a way that matters: the tables come from
/// configuration files), so a multiply-xorshift hash does instead of SipHash.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 ^= u64::from(v);
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64).rotate_left(32);
    }
}

type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<AddrHasher>>;

pub struct PrefixTable<T> {
    /// (prefix length, network address -> value), longest first.
    v4: Vec<(u8, HashMap<u32, T>)>,
    v6: Vec<(u8, HashMap<u128, T>)>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        PrefixTable { v4: Vec::new(), v6: Vec::new() }
    }
}

fn mask4(ip: u32, len: u8) -> u32 {
    if len == 0 { 0 } else { ip & (u32::MAX << (32 - u32::from(len))) }
}

fn mask6(ip: u128, len: u8) -> u128 {
    if len == 0 { 0 } else { ip & (u128::MAX << (128 - u32::from(len))) }
}

fn slot<K, T>(levels: &mut Vec<(u8, HashMap<K, T>)>, len: u8) -> &mut HashMap<K, T> {
    let i = match levels.iter().position(|(l, _)| *l <= len) {
        Some(i) if levels[i].0 == len => i,
        Some(i) => {
            levels.insert(i, (len, HashMap::default()));
            i
        }
        None => {
            levels.push((len, HashMap::default()));
            levels.len() - 1
        }
    };
    &mut levels[i].1
}

impl<T> PrefixTable<T> {
    /// Adds `net`; an existing entry for the same network is kept (first one wins).
    pub fn insert(&mut self, net: IpNet, value: T) {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                slot(&mut self.v4, len).entry(mask4(n.network().into(), len)).or_insert(value);
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                slot(&mut self.v6, len).entry(mask6(n.network().into(), len)).or_insert(value);
            }
        }
    }

    /// The value of the longest prefix containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&T> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find_map(|(len, m)| m.get(&mask4(a, *len)))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().find_map(|(len, m)| m.get(&mask6(a, *len)))
            }
        }
    }

    pub fn len(&self) -> usize {
        self.v4.iter().map(|(_, m)| m.len()).sum::<usize>() + self.v6.iter().map(|(_, m)| m.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut t = PrefixTable::default();
        t.insert("10.0.0.0/8".parse().unwrap(), "a");
        t.insert("10.1.0.0/16".parse().unwrap(), "b");
        t.insert("10.1.2.0/24".parse().unwrap(), "c");
        t.insert("10.1.2.0/24".parse().unwrap(), "dup");
        t.insert("2600:1f00::/24".parse().unwrap(), "v6");
        t.insert("0.0.0.0/0".parse().unwrap(), "any");
        let l = |s: &str| t.lookup(s.parse().unwrap()).copied();
        assert_eq!(l("10.1.2.3"), Some("c"));
        assert_eq!(l("10.1.3.3"), Some("b"));
        assert_eq!(l("10.2.0.1"), Some("a"));
        assert_eq!(l("192.0.2.1"), Some("any"));
        assert_eq!(l("2600:1f18::1"), Some("v6"));
        assert_eq!(l("2a00::1"), None);
        assert_eq!(t.len(), 5);
    }
}
