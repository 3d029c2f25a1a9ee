//! Access control as chrony's `allow` / `deny` directives define it.
//!
//! chrony keeps the rules in a trie with 4 bits per level. A rule sets the state of the nodes of
//! its prefix; a prefix length that is not a multiple of 4 sets all the nodes it covers at the next
//! multiple of 4 (a /25 sets eight /28 nodes). An address gets the state of the deepest node on its
//! path that has one, and is denied when there is none. `all` also removes the rules below the
//! nodes it sets. So the most specific rule decides, and of equally specific ones the later line.
//!
//! [`AccessTable`] keeps exactly those nodes as prefixes, which makes the kernel's longest-prefix
//! match in an LPM trie give chrony's answer for every address: the XDP program and the slow path
//! decide alike.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// Bits per level of chrony's trie.
const NODE_BITS: u8 = 4;

/// A subnet as written in `allow` / `deny`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subnet {
    /// Every IPv4 and IPv6 address (a bare `allow` / `deny`).
    Everything,
    V4(Ipv4Addr, u8),
    V6(Ipv6Addr, u8),
}

impl Subnet {
    /// Whether `address` is inside the subnet.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (*self, address) {
            (Self::Everything, _) => true,
            (Self::V4(net, len), IpAddr::V4(a)) => {
                mask(u128::from(u32::from(net)), len, 32) == mask(u128::from(u32::from(a)), len, 32)
            }
            (Self::V6(net, len), IpAddr::V6(a)) => {
                mask(u128::from(net), len, 128) == mask(u128::from(a), len, 128)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Everything => f.write_str("all addresses"),
            Self::V4(address, len) => write!(f, "{address}/{len}"),
            Self::V6(address, len) => write!(f, "{address}/{len}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Allow,
    Deny,
}

impl Access {
    /// The value of an access trie's entry (`ntp_common::maps::ACCESS_*`).
    pub const fn trie_value(self) -> u32 {
        match self {
            Access::Allow => ntp_common::maps::ACCESS_ALLOW,
            Access::Deny => ntp_common::maps::ACCESS_DENY,
        }
    }
}

/// One `allow` or `deny` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessRule {
    pub access: Access,
    /// `allow all` / `deny all`: also drop the more specific rules given before.
    pub all: bool,
    pub subnet: Subnet,
}

/// The rules of one address family: node prefix (length, masked address) -> access.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Nodes {
    width: u8,
    nodes: BTreeMap<(u8, u128), Access>,
}

impl Nodes {
    fn new(width: u8) -> Self {
        Self { width, nodes: BTreeMap::new() }
    }

    fn apply(&mut self, address: u128, len: u8, access: Access, all: bool) {
        let width = self.width;
        let node_len = len.div_ceil(NODE_BITS) * NODE_BITS;
        let base = mask(address, len, width);
        for i in 0..1u128 << (node_len - len) {
            let node = base | i.checked_shl(u32::from(width - node_len)).unwrap_or(0);
            if all {
                self.nodes.retain(|&(l, a), _| l <= node_len || mask(a, node_len, width) != node);
            }
            self.nodes.insert((node_len, node), access);
        }
    }

    fn lookup(&self, address: u128) -> Access {
        (0..=self.width / NODE_BITS)
            .rev()
            .map(|level| level * NODE_BITS)
            .find_map(|len| self.nodes.get(&(len, mask(address, len, self.width))))
            .copied()
            .unwrap_or(Access::Deny)
    }
}

/// `address` with all but its first `len` of `width` bits cleared.
fn mask(address: u128, len: u8, width: u8) -> u128 {
    let host_bits = u32::from(width - len);
    let kept = u128::MAX.checked_shl(host_bits).unwrap_or(0);
    let family = u128::MAX.checked_shr(128 - u32::from(width)).unwrap_or(0);
    address & kept & family
}

/// The compiled access rules of both address families.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessTable {
    v4: Nodes,
    v6: Nodes,
}

impl Default for AccessTable {
    /// No rule: nobody is served.
    fn default() -> Self {
        Self { v4: Nodes::new(32), v6: Nodes::new(128) }
    }
}

impl AccessTable {
    pub fn from_rules<'a>(rules: impl IntoIterator<Item = &'a AccessRule>) -> Self {
        let mut table = Self::default();
        for rule in rules {
            table.apply(rule);
        }
        table
    }

    pub fn apply(&mut self, rule: &AccessRule) {
        let AccessRule { access, all, subnet } = *rule;
        match subnet {
            Subnet::Everything => {
                self.v4.apply(0, 0, access, all);
                self.v6.apply(0, 0, access, all);
            }
            Subnet::V4(address, len) => {
                self.v4.apply(u128::from(u32::from(address)), len.min(32), access, all)
            }
            Subnet::V6(address, len) => {
                self.v6.apply(u128::from(address), len.min(128), access, all)
            }
        }
    }

    pub fn check(&self, address: IpAddr) -> Access {
        match address {
            IpAddr::V4(a) => self.v4.lookup(u128::from(u32::from(a))),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                // A client reaching a dual-stack socket over IPv4 is judged as IPv4.
                Some(v4) => self.v4.lookup(u128::from(u32::from(v4))),
                None => self.v6.lookup(u128::from(a)),
            },
        }
    }

    pub fn is_allowed(&self, address: IpAddr) -> bool {
        self.check(address) == Access::Allow
    }

    /// The IPv4 prefixes for the kernel's LPM trie: (length, address, access).
    pub fn v4_prefixes(&self) -> impl Iterator<Item = (u8, [u8; 4], Access)> + '_ {
        self.v4.nodes.iter().map(|(&(len, a), &access)| (len, (a as u32).to_be_bytes(), access))
    }

    /// The IPv6 prefixes for the kernel's LPM trie: (length, address, access).
    pub fn v6_prefixes(&self) -> impl Iterator<Item = (u8, [u8; 16], Access)> + '_ {
        self.v6.nodes.iter().map(|(&(len, a), &access)| (len, a.to_be_bytes(), access))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rule(access: Access, all: bool, subnet: &str) -> AccessRule {
        let subnet = match subnet {
            "" => Subnet::Everything,
            s => {
                let (address, len) = s.split_once('/').unwrap();
                match address.parse::<IpAddr>().unwrap() {
                    IpAddr::V4(a) => Subnet::V4(a, len.parse().unwrap()),
                    IpAddr::V6(a) => Subnet::V6(a, len.parse().unwrap()),
                }
            }
        };
        AccessRule { access, all, subnet }
    }

    fn allowed(table: &AccessTable, address: &str) -> bool {
        table.is_allowed(address.parse().unwrap())
    }

    #[test]
    fn nobody_is_served_without_rules() {
        let table = AccessTable::default();
        assert!(!allowed(&table, "192.0.2.1"));
        assert!(!allowed(&table, "::1"));
    }

    #[test]
    fn the_most_specific_rule_wins_whatever_the_order() {
        let table = AccessTable::from_rules(&[
            rule(Access::Deny, false, "10.1.2.0/24"),
            rule(Access::Allow, false, "10.0.0.0/8"),
        ]);
        assert!(allowed(&table, "10.1.1.1"));
        assert!(!allowed(&table, "10.1.2.3"));
        assert!(!allowed(&table, "11.0.0.1"));
    }

    #[test]
    fn of_equal_prefixes_the_later_line_wins() {
        let table = AccessTable::from_rules(&[
            rule(Access::Allow, false, "10.0.0.0/8"),
            rule(Access::Deny, false, "10.0.0.0/8"),
        ]);
        assert!(!allowed(&table, "10.0.0.1"));
    }

    #[test]
    fn all_clears_more_specific_rules_given_before() {
        let table = AccessTable::from_rules(&[
            rule(Access::Deny, false, "10.1.0.0/16"),
            rule(Access::Allow, true, "10.0.0.0/8"),
            rule(Access::Deny, false, "10.2.0.0/16"),
        ]);
        assert!(allowed(&table, "10.1.0.1"), "cleared by allow all");
        assert!(!allowed(&table, "10.2.0.1"), "given after allow all");
    }

    #[test]
    fn a_bare_rule_covers_both_families() {
        let table = AccessTable::from_rules(&[rule(Access::Allow, false, "")]);
        assert!(allowed(&table, "203.0.113.9"));
        assert!(allowed(&table, "2001:db8::1"));
    }

    #[test]
    fn prefixes_between_nibbles_expand_as_in_chrony() {
        // A /25 sets eight /28 nodes, so a later /25 overrides an earlier, longer /26.
        let table = AccessTable::from_rules(&[
            rule(Access::Allow, false, "10.0.0.0/26"),
            rule(Access::Deny, false, "10.0.0.0/25"),
        ]);
        assert!(!allowed(&table, "10.0.0.1"));
        let table = AccessTable::from_rules(&[
            rule(Access::Allow, false, "10.0.0.0/25"),
            rule(Access::Deny, false, "10.0.0.64/26"),
        ]);
        assert!(allowed(&table, "10.0.0.63"));
        assert!(!allowed(&table, "10.0.0.64"));
        assert!(!allowed(&table, "10.0.0.128"));
    }

    #[test]
    fn ipv6_rules_use_the_ipv6_table() {
        let table = AccessTable::from_rules(&[
            rule(Access::Allow, false, "2001:db8::/32"),
            rule(Access::Deny, false, "2001:db8:1::/48"),
        ]);
        assert!(allowed(&table, "2001:db8:2::1"));
        assert!(!allowed(&table, "2001:db8:1::1"));
        assert!(!allowed(&table, "10.0.0.1"));
        assert!(!allowed(&table, "2001:db9::1"));
    }

    /// The rules read one address at a time: of the rules covering it, the most specific (after
    /// rounding up to 4-bit boundaries) decides, the later among equals; `all` voids the more
    /// specific ones before it.
    fn brute_force(rules: &[(u8, u32, bool, bool)], address: u32) -> bool {
        let mut decision: Option<(u8, bool)> = None;
        for &(len, net, allow, all) in rules {
            let node_len = len.div_ceil(4) * 4;
            let covers = mask(u128::from(net), len, 32) == mask(u128::from(address), len, 32);
            if !covers {
                continue;
            }
            if all {
                decision = decision.filter(|&(l, _)| l <= node_len);
            }
            if decision.is_none_or(|(l, _)| l <= node_len) {
                decision = Some((node_len, allow));
            }
        }
        decision.is_some_and(|(_, allow)| allow)
    }

    proptest! {
        #[test]
        fn table_matches_the_literal_reading(
            rules in proptest::collection::vec((0u8..=32, any::<u32>(), any::<bool>(), any::<bool>()), 0..8),
            addresses in proptest::collection::vec(any::<u32>(), 16),
        ) {
            // Keep the rules near each other so that they overlap.
            let rules: Vec<_> = rules.into_iter().map(|(len, net, allow, all)| (len, net & 0x0f0f_00ff, allow, all)).collect();
            let table = AccessTable::from_rules(&rules.iter().map(|&(len, net, allow, all)| AccessRule {
                access: if allow { Access::Allow } else { Access::Deny },
                all,
                subnet: Subnet::V4(Ipv4Addr::from(net), len),
            }).collect::<Vec<_>>());
            for address in addresses.into_iter().map(|a| a & 0x0f0f_00ff) {
                prop_assert_eq!(table.is_allowed(IpAddr::V4(address.into())), brute_force(&rules, address));
            }
        }
    }
}
