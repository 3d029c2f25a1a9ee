//! Which requests a server may answer, judged by their addresses alone: one definition for the
//! XDP program, the slow path and the tests' oracle. A request refused here is one the kernel
//! would not deliver to a local socket (a martian), or one a reply could not go back to; the XDP
//! program passes it to the kernel, and the slow path leaves it unanswered.

/// An IP address as it was on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireAddress {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl WireAddress {
    /// 127.0.0.0/8 or ::1.
    #[inline(always)]
    pub fn is_loopback(&self) -> bool {
        match self {
            Self::V4(a) => a[0] == 127,
            Self::V6(a) => *a == LOOPBACK_V6,
        }
    }

    /// Whether a reply can go to it: not unspecified (0.0.0.0/8, ::), multicast (224.0.0.0/4,
    /// ff00::/8), reserved or the limited broadcast (240.0.0.0/4).
    #[inline(always)]
    pub fn is_unicast(&self) -> bool {
        match self {
            Self::V4(a) => a[0] != 0 && a[0] < 224,
            Self::V6(a) => a[0] != 0xff && *a != [0; 16],
        }
    }

    /// ::ffff:0:0/96: an IPv4 address in IPv6 clothing, which never travels on a wire.
    #[inline(always)]
    pub fn is_ipv4_mapped(&self) -> bool {
        match self {
            Self::V4(_) => false,
            Self::V6(a) => a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff,
        }
    }
}

#[cfg(feature = "std")]
impl From<std::net::IpAddr> for WireAddress {
    fn from(address: std::net::IpAddr) -> Self {
        match address {
            std::net::IpAddr::V4(a) => Self::V4(a.octets()),
            std::net::IpAddr::V6(a) => Self::V6(a.octets()),
        }
    }
}

const LOOPBACK_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// The loopback interface's index, the same in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// A request's addresses, and where it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addressing {
    pub source: WireAddress,
    pub source_port: u16,
    pub destination: WireAddress,
    /// It arrived on the loopback interface, where loopback and local sources are normal.
    pub on_loopback: bool,
}

/// Why a request is not answered for its addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressRefusal {
    /// Sent to an address that is not one of the server's (forwarded, broadcast, multicast).
    NotLocal,
    /// A loopback source or destination arriving on a NIC: the kernel drops it.
    Loopback,
    /// From an address no reply can go to.
    SourceNotUnicast,
    /// From an IPv4-mapped IPv6 address.
    SourceIpv4Mapped,
    /// From one of the server's own addresses, arriving on a NIC: the kernel drops it.
    SourceLocal,
    /// From port 0, to which no reply can go.
    SourcePortZero,
}

/// Whether the server may answer a request with this `addressing`; `is_local` says whether an
/// address is one of the server's.
#[inline(always)]
pub fn check(
    addressing: &Addressing,
    is_local: impl Fn(&WireAddress) -> bool,
) -> Result<(), AddressRefusal> {
    if !is_local(&addressing.destination) {
        return Err(AddressRefusal::NotLocal);
    }
    check_beyond_destination(addressing, is_local)
}

/// [`check`] for a request whose destination is known to be one of the server's (the XDP
/// program looks it up once, for the time it serves there too).
#[inline(always)]
pub fn check_beyond_destination(
    addressing: &Addressing,
    is_local: impl Fn(&WireAddress) -> bool,
) -> Result<(), AddressRefusal> {
    let Addressing { source, source_port, destination, on_loopback } = addressing;
    if !on_loopback && (destination.is_loopback() || source.is_loopback()) {
        return Err(AddressRefusal::Loopback);
    }
    if !source.is_unicast() {
        return Err(AddressRefusal::SourceNotUnicast);
    }
    if source.is_ipv4_mapped() {
        return Err(AddressRefusal::SourceIpv4Mapped);
    }
    if !on_loopback && is_local(source) {
        return Err(AddressRefusal::SourceLocal);
    }
    if *source_port == 0 {
        return Err(AddressRefusal::SourcePortZero);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: WireAddress = WireAddress::V4([192, 0, 2, 1]);
    const CLIENT: WireAddress = WireAddress::V4([198, 51, 100, 7]);
    const SERVER_V6: WireAddress =
        WireAddress::V6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

    fn is_local(address: &WireAddress) -> bool {
        [SERVER, SERVER_V6, WireAddress::V4([127, 0, 0, 1]), WireAddress::V6(LOOPBACK_V6)]
            .contains(address)
    }

    fn from(source: WireAddress, destination: WireAddress) -> Addressing {
        Addressing { source, source_port: 40_000, destination, on_loopback: false }
    }

    #[test]
    fn a_client_on_a_nic_is_answered() {
        assert_eq!(check(&from(CLIENT, SERVER), is_local), Ok(()));
        let client = WireAddress::V6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(check(&from(client, SERVER_V6), is_local), Ok(()));
    }

    #[test]
    fn what_the_kernel_would_drop_or_not_deliver_is_refused() {
        use AddressRefusal::*;
        let loopback = WireAddress::V4([127, 0, 0, 1]);
        for (addressing, refusal) in [
            (from(CLIENT, WireAddress::V4([192, 0, 2, 255])), NotLocal),
            (from(CLIENT, WireAddress::V4([224, 0, 1, 1])), NotLocal),
            (from(CLIENT, loopback), Loopback),
            (from(loopback, SERVER), Loopback),
            (from(WireAddress::V4([127, 9, 9, 9]), SERVER), Loopback),
            (from(WireAddress::V6(LOOPBACK_V6), SERVER_V6), Loopback),
            (from(WireAddress::V4([0, 0, 0, 0]), SERVER), SourceNotUnicast),
            (from(WireAddress::V4([255, 255, 255, 255]), SERVER), SourceNotUnicast),
            (from(WireAddress::V4([239, 1, 1, 1]), SERVER), SourceNotUnicast),
            (
                from(
                    WireAddress::V6([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
                    SERVER_V6,
                ),
                SourceNotUnicast,
            ),
            (from(WireAddress::V6([0; 16]), SERVER_V6), SourceNotUnicast),
            (
                from(
                    WireAddress::V6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 7]),
                    SERVER_V6,
                ),
                SourceIpv4Mapped,
            ),
            (from(SERVER, SERVER), SourceLocal),
            (Addressing { source_port: 0, ..from(CLIENT, SERVER) }, SourcePortZero),
        ] {
            assert_eq!(check(&addressing, is_local), Err(refusal), "{addressing:?}");
        }
    }

    #[test]
    fn on_the_loopback_interface_loopback_and_local_sources_are_answered() {
        let loopback = WireAddress::V4([127, 0, 0, 1]);
        for (source, destination) in [(loopback, loopback), (SERVER, SERVER), (loopback, SERVER)] {
            let addressing = Addressing { on_loopback: true, ..from(source, destination) };
            assert_eq!(check(&addressing, is_local), Ok(()), "{addressing:?}");
        }
        let port_zero =
            Addressing { source_port: 0, on_loopback: true, ..from(loopback, loopback) };
        assert_eq!(check(&port_zero, is_local), Err(AddressRefusal::SourcePortZero));
    }
}
