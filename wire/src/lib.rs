//! The sketchreduce wire format, shared by the software switch (`switch-emu`), the P4 program
//! (`p4/`, partly generated from this crate) and the worker agent.
//!
//! `docs/wire.md` is the prose version of this crate; the two must agree byte for byte.
//!
//! - [`packet`]: the aggregation header and its lanes, as a zero-copy view
//!   ([`Packet`]) over a UDP payload plus a validated representation ([`Header`]).
//! - [`job`]: a job's description (workers, lanes, slot range, epoch), the file format the
//!   switch, the P4 config generator and the workers read.
//! - [`control`]: control protocol v2 (length-prefixed JSON, HMAC-SHA256): message types,
//!   framing and limits. The server logic and the client live in `sketchreduce-control`.

pub mod control;
pub mod job;
pub mod packet;

pub use control::{Counters, DropReason, ErrorKind, Info, JobCounters, Request, Response};
pub use job::{JobFile, JobSpec, WorkerSpec};
pub use packet::{Header, Kind, Op, Packet, WireError};

/// Default UDP port of the switch's data path: the first of [`DATA_PORT_COUNT`] consecutive
/// ports. Slot `s` goes to port `base + s % ports` so that emulator threads can own disjoint
/// slots without locks; the P4 program accepts the whole range.
pub const DEFAULT_DATA_PORT: u16 = 0x9A00; // 39424
/// Size of the data port range (a power of two, so the P4 parser matches it with one mask).
pub const DATA_PORT_COUNT: u16 = 16;
/// Mask a P4 parser applies to the UDP destination port to recognise the data port range.
pub const DATA_PORT_MASK: u16 = !(DATA_PORT_COUNT - 1);
/// Default TCP port of the switch's control endpoint (just above the data range).
pub const DEFAULT_CONTROL_PORT: u16 = DEFAULT_DATA_PORT + DATA_PORT_COUNT; // 39440
/// Most workers a job may have: the per-slot "workers seen" bitmap is one 32-bit register.
pub const MAX_WORKERS: usize = 32;
/// Lane counts a job may use per packet. A switch supports those up to its `max_lanes`
/// capability. 360 lanes is the largest DATA packet of a 1500-byte IPv4 MTU
/// (20 + 8 + 32 + 4·360 = 1500): the least header overhead on standard Ethernet. Above 360
/// lanes a packet needs jumbo frames (2048 lanes: an 8,224-byte UDP payload, MTU ≥ 8,252).
pub const LANE_CHOICES: [u16; 8] = [32, 64, 128, 256, 360, 512, 1024, 2048];

/// The largest lane count of [`LANE_CHOICES`] whose DATA packet fits an IPv4 `mtu` (IPv4 and
/// UDP headers included) and that a switch with capability `max_lanes` accepts.
pub fn lanes_for_mtu(mtu: usize, max_lanes: u16) -> Option<u16> {
    let payload = mtu.checked_sub(20 + 8 + packet::HEADER_LEN)?;
    LANE_CHOICES
        .iter()
        .copied()
        .filter(|&l| l as usize * packet::LANE_BYTES <= payload && l <= max_lanes)
        .max()
}
/// The largest lane count of [`LANE_CHOICES`].
pub const MAX_LANES: u16 = LANE_CHOICES[LANE_CHOICES.len() - 1];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_fill_the_mtu() {
        assert_eq!(lanes_for_mtu(1500, MAX_LANES), Some(360));
        assert_eq!(lanes_for_mtu(1499, MAX_LANES), Some(256));
        assert_eq!(lanes_for_mtu(9000, MAX_LANES), Some(2048));
        assert_eq!(lanes_for_mtu(9000, 64), Some(64));
        assert_eq!(lanes_for_mtu(100, MAX_LANES), None);
        // 360 lanes: exactly one 1500-byte IPv4 packet.
        assert_eq!(20 + 8 + packet::HEADER_LEN + 360 * packet::LANE_BYTES, 1500);
    }
}
