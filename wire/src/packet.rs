//! The aggregation header: 32 bytes, big-endian, fixed offsets, followed by `lanes` 32-bit
//! big-endian lanes. See `docs/wire.md` for the table this module implements.
//!
//! In the manner of smoltcp: [`Packet`] is a zero-copy view whose checked constructor only
//! guarantees that every accessor stays in bounds (the length matches the lane count), and
//! [`Header::parse`] turns a view into a validated representation or a [`WireError`] that says
//! which rule the datagram breaks. [`Header::emit`] and [`build`] go the other way.

use thiserror::Error;

/// Protocol version carried in every packet (wire format v2: `epoch` replaces v1's `token`,
/// `flags` carries the NACK bits).
pub const VERSION: u8 = 2;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Bytes per lane.
pub const LANE_BYTES: usize = 4;

/// STATUS flag: the probed job is not registered on the switch (a NACK).
pub const NACK_UNKNOWN_JOB: u16 = 0x0001;
/// STATUS flag: the probed job exists with another epoch (re-created, or the switch
/// restarted) (a NACK).
pub const NACK_BAD_EPOCH: u16 = 0x0002;
/// Every flag bit that may appear in a STATUS. DATA, PROBE and RESULT carry no flags.
pub const NACK_MASK: u16 = NACK_UNKNOWN_JOB | NACK_BAD_EPOCH;

/// Byte ranges of every header field; the single source of the layout (the P4 generator reads
/// [`FIELDS`] to emit the P4 header type).
pub mod field {
    use core::ops::Range;
    /// Protocol version ([`super::VERSION`]).
    pub const VERSION: Range<usize> = 0..1;
    /// Message kind ([`super::Kind`]).
    pub const KIND: Range<usize> = 1..2;
    /// Combining operation ([`super::Op`]).
    pub const OP: Range<usize> = 2..3;
    /// Sender's rank within the job (echoed in replies).
    pub const RANK: Range<usize> = 3..4;
    /// Job id.
    pub const JOB: Range<usize> = 4..6;
    /// Number of 32-bit lanes after the header.
    pub const LANES: Range<usize> = 6..8;
    /// The job's registration epoch (nonzero, assigned by the switch at creation).
    pub const EPOCH: Range<usize> = 8..12;
    /// Absolute slot index in the switch's pool.
    pub const SLOT: Range<usize> = 12..16;
    /// Shadow-copy set, 0 or 1; must equal `round & 1` in requests.
    pub const SET: Range<usize> = 16..17;
    /// Contributions seen (RESULT, STATUS); 0 in requests.
    pub const COUNT: Range<usize> = 17..18;
    /// 0, except NACK bits in a STATUS ([`super::NACK_MASK`]).
    pub const FLAGS: Range<usize> = 18..20;
    /// Round number of this slot's use (serial-number arithmetic, wraps).
    pub const ROUND: Range<usize> = 20..24;
    /// The chunk's offset in the job's stream, in chunks (opaque to the switch).
    pub const OFFSET: Range<usize> = 24..28;
    /// Workers-seen bitmap (RESULT, STATUS); 0 in requests.
    pub const BITMAP: Range<usize> = 28..32;
}

/// (P4 name, bit width) of every header field in wire order, for the P4 generator.
pub const FIELDS: [(&str, usize); 14] = [
    ("version", 8),
    ("kind", 8),
    ("op", 8),
    ("rank", 8),
    ("job", 16),
    ("lanes", 16),
    ("epoch", 32),
    ("slot", 32),
    ("set", 8),
    ("count", 8),
    ("flags", 16),
    ("round", 32),
    ("offset", 32),
    ("bitmap", 32),
];

/// Why a datagram or a lane buffer does not fit the format. Every variant a switch meets on
/// ingress is a `malformed` drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// Shorter than the header, or than the header plus the lanes it announces.
    #[error("truncated packet: {len} bytes, need {need}")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the header requires.
        need: usize,
    },
    /// Bytes beyond the announced lanes.
    #[error("packet has {extra} trailing bytes")]
    Trailing {
        /// Extra bytes.
        extra: usize,
    },
    /// Unknown version.
    #[error("unsupported version {0} (this is version {VERSION})")]
    Version(u8),
    /// Unknown kind.
    #[error("unknown kind {0}")]
    Kind(u8),
    /// Unknown op.
    #[error("unknown op {0}")]
    Op(u8),
    /// Set is neither 0 nor 1.
    #[error("set must be 0 or 1, got {0}")]
    Set(u8),
    /// A DATA or PROBE whose set is not `round & 1`.
    #[error("set {set} does not match round {round} (set must be round & 1)")]
    SetRound {
        /// Set carried.
        set: u8,
        /// Round carried.
        round: u32,
    },
    /// Flags not allowed for the kind: any flag in DATA, PROBE or RESULT; a bit outside
    /// [`NACK_MASK`] in a STATUS.
    #[error("kind {kind:?} cannot carry flags {flags:#06x}")]
    Flags {
        /// Kind of the packet.
        kind: Kind,
        /// Flags carried.
        flags: u16,
    },
    /// A PROBE or STATUS that carries lanes, or a DATA or RESULT with none.
    #[error("kind {kind:?} cannot carry {lanes} lanes")]
    LaneCount {
        /// Kind of the packet.
        kind: Kind,
        /// Lanes announced.
        lanes: u16,
    },
    /// A lane buffer whose length differs from the packet's lane count (reading, writing,
    /// building).
    #[error("lane buffer of {got} lanes for a packet of {want} lanes")]
    LaneMismatch {
        /// Lanes in the caller's buffer.
        got: usize,
        /// Lanes the packet has.
        want: usize,
    },
    /// An output buffer too small for the packet being built.
    #[error("buffer of {len} bytes cannot hold a {need}-byte packet")]
    BufferTooSmall {
        /// Bytes available.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
}

/// What a packet asks for or reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Worker → switch: a contribution to a slot.
    Data = 1,
    /// Switch → worker: a completed slot's aggregate.
    Result = 2,
    /// Worker → switch: "which ranks has this slot seen?" (no lanes).
    Probe = 3,
    /// Switch → worker: answer to a probe; `count`, `bitmap`, `round` describe the slot set,
    /// or `flags` carries a NACK.
    Status = 4,
}

impl Kind {
    /// Parses a kind byte.
    pub fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            1 => Ok(Kind::Data),
            2 => Ok(Kind::Result),
            3 => Ok(Kind::Probe),
            4 => Ok(Kind::Status),
            other => Err(WireError::Kind(other)),
        }
    }

    /// Whether packets of this kind carry lanes.
    pub fn has_lanes(self) -> bool {
        matches!(self, Kind::Data | Kind::Result)
    }

    /// Whether this kind goes from a worker to the switch (DATA, PROBE).
    pub fn is_request(self) -> bool {
        matches!(self, Kind::Data | Kind::Probe)
    }
}

/// How the switch combines a contribution with the slot's lanes. All are operations a P4
/// target can do on `bit<32>`: wrapping add, bitwise or, unsigned max.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Wrapping 32-bit addition (value sketches, dense fixed-point sums).
    Add = 0,
    /// Bitwise OR (nonzero indexes: bitmaps and Bloom filters).
    Or = 1,
    /// Unsigned maximum (exponent agreement for block floating point).
    Max = 2,
}

impl Op {
    /// Parses an op byte.
    pub fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            0 => Ok(Op::Add),
            1 => Ok(Op::Or),
            2 => Ok(Op::Max),
            other => Err(WireError::Op(other)),
        }
    }

    /// Combines one lane. This function is the whole arithmetic of the switch.
    #[inline]
    pub fn apply(self, acc: u32, v: u32) -> u32 {
        match self {
            Op::Add => acc.wrapping_add(v),
            Op::Or => acc | v,
            Op::Max => acc.max(v),
        }
    }
}

/// A validated header (the smoltcp-style "repr" of [`Packet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Message kind.
    pub kind: Kind,
    /// Combining operation.
    pub op: Op,
    /// Sender's rank (requests), echoed in replies.
    pub rank: u8,
    /// Job id.
    pub job: u16,
    /// Number of lanes following the header.
    pub lanes: u16,
    /// The job's registration epoch.
    pub epoch: u32,
    /// Absolute slot index.
    pub slot: u32,
    /// Shadow set, 0 or 1 (`round & 1` in requests).
    pub set: u8,
    /// Contributions seen (replies).
    pub count: u8,
    /// 0, or NACK bits in a STATUS.
    pub flags: u16,
    /// Round number of this use of the slot.
    pub round: u32,
    /// Chunk offset in the job's stream.
    pub offset: u32,
    /// Workers-seen bitmap (replies).
    pub bitmap: u32,
}

impl Header {
    /// A request (DATA or PROBE) of `rank` for `slot` in `round`: op ADD, set `round & 1`, no
    /// lanes, offset 0 and the reply fields zero, as [`Self::parse`] requires. Set the rest
    /// with struct update syntax, e.g. `Header { lanes: 32, offset, ..Header::request(..) }`.
    pub fn request(kind: Kind, job: u16, epoch: u32, rank: u8, slot: u32, round: u32) -> Header {
        Header {
            kind,
            op: Op::Add,
            rank,
            job,
            lanes: 0,
            epoch,
            slot,
            set: (round & 1) as u8,
            count: 0,
            flags: 0,
            round,
            offset: 0,
            bitmap: 0,
        }
    }

    /// Validates the fields of a length-checked packet: version, kind, op, set ∈ {0, 1}, lanes
    /// present exactly for DATA/RESULT, and for requests (DATA, PROBE) flags = 0 and
    /// set = round & 1. These are the switch's `malformed` rules (docs/wire.md); a reply's
    /// flags are checked by [`Header::check_reply`].
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Header, WireError> {
        let b = packet.buffer.as_ref();
        if b[field::VERSION.start] != VERSION {
            return Err(WireError::Version(b[field::VERSION.start]));
        }
        let kind = Kind::from_u8(b[field::KIND.start])?;
        let op = Op::from_u8(b[field::OP.start])?;
        let h = Header {
            kind,
            op,
            rank: b[field::RANK.start],
            job: be16(b, field::JOB),
            lanes: be16(b, field::LANES),
            epoch: be32(b, field::EPOCH),
            slot: be32(b, field::SLOT),
            set: b[field::SET.start],
            count: b[field::COUNT.start],
            flags: be16(b, field::FLAGS),
            round: be32(b, field::ROUND),
            offset: be32(b, field::OFFSET),
            bitmap: be32(b, field::BITMAP),
        };
        if h.set > 1 {
            return Err(WireError::Set(h.set));
        }
        if kind.has_lanes() != (h.lanes > 0) {
            return Err(WireError::LaneCount {
                kind,
                lanes: h.lanes,
            });
        }
        if kind.is_request() {
            if h.flags != 0 {
                return Err(WireError::Flags {
                    kind,
                    flags: h.flags,
                });
            }
            if u32::from(h.set) != h.round & 1 {
                return Err(WireError::SetRound {
                    set: h.set,
                    round: h.round,
                });
            }
        }
        Ok(h)
    }

    /// The flag rules for replies, which a worker applies on receipt: a RESULT has no flags,
    /// a STATUS only bits of [`NACK_MASK`]. (A switch does not apply them: a RESULT or STATUS
    /// sent to it is `bad_kind` whatever its flags.)
    pub fn check_reply(&self) -> Result<(), WireError> {
        let ok = match self.kind {
            Kind::Result => self.flags == 0,
            Kind::Status => self.flags & !NACK_MASK == 0,
            Kind::Data | Kind::Probe => true,
        };
        if ok {
            Ok(())
        } else {
            Err(WireError::Flags {
                kind: self.kind,
                flags: self.flags,
            })
        }
    }

    /// Total datagram length for this header's lane count.
    pub fn packet_len(&self) -> usize {
        HEADER_LEN + self.lanes as usize * LANE_BYTES
    }

    /// Writes the header into `buf` (which must hold at least [`HEADER_LEN`] bytes). The
    /// fields are written as they are, unvalidated (tests use this to forge bad packets).
    ///
    /// # Panics
    /// If `buf` is shorter than the header: buffers are sized by the caller from
    /// [`Header::packet_len`], so this is a programming error, not input.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..HEADER_LEN];
        b[field::VERSION.start] = VERSION;
        b[field::KIND.start] = self.kind as u8;
        b[field::OP.start] = self.op as u8;
        b[field::RANK.start] = self.rank;
        b[field::JOB].copy_from_slice(&self.job.to_be_bytes());
        b[field::LANES].copy_from_slice(&self.lanes.to_be_bytes());
        b[field::EPOCH].copy_from_slice(&self.epoch.to_be_bytes());
        b[field::SLOT].copy_from_slice(&self.slot.to_be_bytes());
        b[field::SET.start] = self.set;
        b[field::COUNT.start] = self.count;
        b[field::FLAGS].copy_from_slice(&self.flags.to_be_bytes());
        b[field::ROUND].copy_from_slice(&self.round.to_be_bytes());
        b[field::OFFSET].copy_from_slice(&self.offset.to_be_bytes());
        b[field::BITMAP].copy_from_slice(&self.bitmap.to_be_bytes());
    }
}

/// A zero-copy view of one datagram: header plus lanes. Construct with [`Packet::new_checked`]
/// for untrusted input; the accessors then cannot go out of bounds. Field validation is
/// [`Header::parse`].
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline]
fn be16(b: &[u8], r: core::ops::Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

#[inline]
fn be32(b: &[u8], r: core::ops::Range<usize>) -> u32 {
    u32::from_be_bytes([b[r.start], b[r.start + 1], b[r.start + 2], b[r.start + 3]])
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; use only on buffers this process built with the
    /// right length (accessors panic otherwise).
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after checking that it holds the header and exactly the lanes the header
    /// announces, so that every accessor stays in bounds. The fields are not validated: see
    /// [`Header::parse`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Packet { buffer };
        p.check_len()?;
        Ok(p)
    }

    fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated {
                len: b.len(),
                need: HEADER_LEN,
            });
        }
        let need = HEADER_LEN + be16(b, field::LANES) as usize * LANE_BYTES;
        if b.len() < need {
            return Err(WireError::Truncated { len: b.len(), need });
        }
        if b.len() > need {
            return Err(WireError::Trailing {
                extra: b.len() - need,
            });
        }
        Ok(())
    }

    /// The raw header bytes.
    pub fn header_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }

    /// Number of lanes.
    pub fn lane_count(&self) -> usize {
        be16(self.buffer.as_ref(), field::LANES) as usize
    }

    /// The raw big-endian lane bytes.
    pub fn lane_bytes(&self) -> &[u8] {
        let n = self.lane_count() * LANE_BYTES;
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + n]
    }

    /// Lane `i` as a host integer.
    ///
    /// # Panics
    /// If `i` is not below [`Packet::lane_count`].
    #[inline]
    pub fn lane(&self, i: usize) -> u32 {
        let o = HEADER_LEN + i * LANE_BYTES;
        be32(self.buffer.as_ref(), o..o + LANE_BYTES)
    }

    /// Iterates over the lanes as host integers.
    pub fn lanes(&self) -> impl Iterator<Item = u32> + '_ {
        self.lane_bytes()
            .chunks_exact(LANE_BYTES)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// Copies the lanes into `dst` (host order); `dst.len()` must equal the lane count.
    pub fn read_lanes(&self, dst: &mut [u32]) -> Result<(), WireError> {
        let want = self.lane_count();
        if dst.len() != want {
            return Err(WireError::LaneMismatch {
                got: dst.len(),
                want,
            });
        }
        for (d, c) in dst
            .iter_mut()
            .zip(self.lane_bytes().chunks_exact(LANE_BYTES))
        {
            *d = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the header fields (the buffer must already have the right length).
    pub fn set_header(&mut self, h: &Header) {
        h.emit(self.buffer.as_mut());
    }

    /// Sets lane `i`.
    ///
    /// # Panics
    /// If `i` is not below [`Packet::lane_count`].
    #[inline]
    pub fn set_lane(&mut self, i: usize, v: u32) {
        let o = HEADER_LEN + i * LANE_BYTES;
        self.buffer.as_mut()[o..o + LANE_BYTES].copy_from_slice(&v.to_be_bytes());
    }

    /// Writes `src` (host order) into the lanes; `src.len()` must equal the lane count.
    pub fn write_lanes(&mut self, src: &[u32]) -> Result<(), WireError> {
        let want = self.lane_count();
        if src.len() != want {
            return Err(WireError::LaneMismatch {
                got: src.len(),
                want,
            });
        }
        self.write_lanes_padded(src)
    }

    /// Writes `src` (host order) into the first lanes and zeroes the rest (the last, partial
    /// chunk of a stream); `src.len()` must not exceed the lane count.
    pub fn write_lanes_padded(&mut self, src: &[u32]) -> Result<(), WireError> {
        let want = self.lane_count();
        if src.len() > want {
            return Err(WireError::LaneMismatch {
                got: src.len(),
                want,
            });
        }
        let dst = &mut self.buffer.as_mut()[HEADER_LEN..HEADER_LEN + want * LANE_BYTES];
        let (head, tail) = dst.split_at_mut(src.len() * LANE_BYTES);
        for (c, v) in head.chunks_exact_mut(LANE_BYTES).zip(src) {
            c.copy_from_slice(&v.to_be_bytes());
        }
        tail.fill(0);
        Ok(())
    }
}

/// Builds a complete datagram (header + lanes) into `buf`, returning its length. `lanes.len()`
/// must equal `header.lanes` and `buf` must hold `header.packet_len()` bytes.
pub fn build(header: &Header, lanes: &[u32], buf: &mut [u8]) -> Result<usize, WireError> {
    if lanes.len() != header.lanes as usize {
        return Err(WireError::LaneMismatch {
            got: lanes.len(),
            want: header.lanes as usize,
        });
    }
    let len = header.packet_len();
    if buf.len() < len {
        return Err(WireError::BufferTooSmall {
            len: buf.len(),
            need: len,
        });
    }
    let mut p = Packet::new_unchecked(&mut buf[..len]);
    p.set_header(header);
    p.write_lanes(lanes)?;
    Ok(len)
}

/// Serial-number comparison of rounds (RFC 1982 style, the same expression the P4 program
/// uses): `Less` if `a` is older than `b`, treating differences of 2^31 or more as wrapped.
pub fn round_cmp(a: u32, b: u32) -> core::cmp::Ordering {
    let d = a.wrapping_sub(b);
    if d == 0 {
        core::cmp::Ordering::Equal
    } else if d & 0x8000_0000 != 0 {
        core::cmp::Ordering::Less
    } else {
        core::cmp::Ordering::Greater
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: Kind, lanes: u16) -> Header {
        Header {
            kind,
            op: Op::Or,
            rank: 3,
            job: 0x0102,
            lanes,
            epoch: 0xdead_beef,
            slot: 77,
            set: 0,
            count: 0,
            flags: 0,
            round: 0xffff_fffe,
            offset: 12345,
            bitmap: 0,
        }
    }

    fn parse(b: &[u8]) -> Result<Header, WireError> {
        Header::parse(&Packet::new_checked(b)?)
    }

    #[test]
    fn fields_tile_the_header() {
        let mut end = 0;
        let ranges = [
            field::VERSION,
            field::KIND,
            field::OP,
            field::RANK,
            field::JOB,
            field::LANES,
            field::EPOCH,
            field::SLOT,
            field::SET,
            field::COUNT,
            field::FLAGS,
            field::ROUND,
            field::OFFSET,
            field::BITMAP,
        ];
        for (r, (_, bits)) in ranges.iter().zip(FIELDS.iter()) {
            assert_eq!(r.start, end);
            assert_eq!(r.len() * 8, *bits);
            end = r.end;
        }
        assert_eq!(end, HEADER_LEN);
    }

    #[test]
    fn roundtrip_with_lanes() {
        let h = sample(Kind::Data, 4);
        let lanes = [1, 0xffff_ffff, 0x8000_0000, 42];
        let mut buf = vec![0u8; h.packet_len()];
        let n = build(&h, &lanes, &mut buf).unwrap();
        assert_eq!(n, 32 + 16);
        // Offsets from docs/wire.md.
        assert_eq!(buf[0], 2, "version 2");
        assert_eq!(&buf[4..6], &[0x01, 0x02]);
        assert_eq!(&buf[8..12], &[0xde, 0xad, 0xbe, 0xef], "epoch");
        assert_eq!(&buf[32..36], &[0, 0, 0, 1]);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Header::parse(&p).unwrap(), h);
        assert_eq!(p.lanes().collect::<Vec<_>>(), lanes);
        let mut back = [0u32; 4];
        p.read_lanes(&mut back).unwrap();
        assert_eq!(back, lanes);
    }

    /// The DATA example of docs/wire.md, byte for byte.
    /// Requests made by [`Header::request`] are valid requests: set follows the round's
    /// parity, reply fields are zero; DATA with lanes and PROBE without parse back unchanged.
    #[test]
    fn request_constructor_builds_valid_requests() {
        for round in [0u32, 1, 7, u32::MAX] {
            let probe = Header::request(Kind::Probe, 3, 9, 2, 40, round);
            assert_eq!(probe.set as u32, round & 1);
            let data = Header {
                lanes: 4,
                offset: 11,
                ..Header::request(Kind::Data, 3, 9, 2, 40, round)
            };
            for (h, lanes) in [(probe, &[][..]), (data, &[1u32, 2, 3, 4][..])] {
                let mut buf = vec![0u8; h.packet_len()];
                build(&h, lanes, &mut buf).unwrap();
                let p = Packet::new_checked(&buf[..]).unwrap();
                assert_eq!(Header::parse(&p).unwrap(), h);
            }
        }
    }

    #[test]
    fn docs_example_packet() {
        let h = Header {
            kind: Kind::Data,
            op: Op::Add,
            rank: 2,
            job: 1,
            lanes: 32,
            epoch: 0x1234_5678,
            slot: 77,
            set: 1,
            count: 0,
            flags: 0,
            round: 3,
            offset: 12345,
            bitmap: 0,
        };
        let lanes: Vec<u32> = (0..32).collect();
        let mut buf = vec![0u8; h.packet_len()];
        assert_eq!(build(&h, &lanes, &mut buf), Ok(160));
        let head: [u8; 36] = [
            0x02, 0x01, 0x00, 0x02, 0x00, 0x01, 0x00, 0x20, 0x12, 0x34, 0x56, 0x78, 0x00, 0x00,
            0x00, 0x4d, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x30, 0x39,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(&buf[..36], &head);
        assert_eq!(&buf[156..160], &[0, 0, 0, 0x1f]);
        assert_eq!(parse(&buf), Ok(h));
    }

    #[test]
    fn rejects_malformed() {
        let h = sample(Kind::Data, 2);
        let mut buf = vec![0u8; h.packet_len()];
        build(&h, &[5, 6], &mut buf).unwrap();
        assert!(matches!(
            Packet::new_checked(&buf[..39]),
            Err(WireError::Truncated { len: 39, need: 40 })
        ));
        assert!(matches!(
            Packet::new_checked(&buf[..10]),
            Err(WireError::Truncated { .. })
        ));
        let mut long = buf.clone();
        long.push(0);
        assert!(matches!(
            Packet::new_checked(&long[..]),
            Err(WireError::Trailing { extra: 1 })
        ));
        let bad_at = |i: usize, v: u8| {
            let mut b = buf.clone();
            b[i] = v;
            parse(&b).unwrap_err()
        };
        assert_eq!(bad_at(0, 1), WireError::Version(1));
        assert_eq!(bad_at(1, 9), WireError::Kind(9));
        assert_eq!(bad_at(2, 3), WireError::Op(3));
        assert_eq!(bad_at(16, 2), WireError::Set(2));
        // Requests: set must be round & 1, flags 0.
        assert_eq!(
            bad_at(16, 1),
            WireError::SetRound {
                set: 1,
                round: 0xffff_fffe
            }
        );
        assert_eq!(
            bad_at(19, 1),
            WireError::Flags {
                kind: Kind::Data,
                flags: 1
            }
        );
        let probe = sample(Kind::Probe, 0);
        let mut pb = vec![0u8; probe.packet_len()];
        build(&probe, &[], &mut pb).unwrap();
        assert!(parse(&pb).is_ok());
        pb[18] = 0x80;
        assert!(matches!(parse(&pb), Err(WireError::Flags { .. })));
        let empty_data = sample(Kind::Data, 0);
        build(&empty_data, &[], &mut pb).unwrap();
        assert!(matches!(parse(&pb), Err(WireError::LaneCount { .. })));
    }

    #[test]
    fn replies_keep_their_flags_and_set() {
        // A NACK STATUS: flags kept, set need not match round (round is 0 in a NACK).
        let mut nack = sample(Kind::Status, 0);
        nack.flags = NACK_BAD_EPOCH;
        nack.set = 1;
        nack.round = 0;
        let mut b = vec![0u8; 32];
        build(&nack, &[], &mut b).unwrap();
        let h = parse(&b).unwrap();
        assert_eq!(h, nack);
        assert!(h.check_reply().is_ok());
        let mut odd = nack;
        odd.flags = 0x0004;
        assert!(odd.check_reply().is_err());
        let mut res = sample(Kind::Result, 1);
        res.flags = 1;
        assert!(res.check_reply().is_err());
    }

    #[test]
    fn lane_counts_are_checked_in_release_builds() {
        let h = sample(Kind::Data, 4);
        let mut buf = vec![0u8; h.packet_len()];
        assert_eq!(
            build(&h, &[1, 2, 3], &mut buf),
            Err(WireError::LaneMismatch { got: 3, want: 4 })
        );
        assert_eq!(
            build(&h, &[1, 2, 3, 4], &mut buf[..40]),
            Err(WireError::BufferTooSmall { len: 40, need: 48 })
        );
        build(&h, &[1, 2, 3, 4], &mut buf).unwrap();
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        let mut three = [0u32; 3];
        assert!(p.read_lanes(&mut three).is_err());
        assert!(p.write_lanes(&[9; 5]).is_err());
        assert!(p.write_lanes(&[9; 3]).is_err());
        assert!(p.write_lanes_padded(&[9; 5]).is_err());
        p.write_lanes_padded(&[7, 8]).unwrap();
        assert_eq!(p.lanes().collect::<Vec<_>>(), vec![7, 8, 0, 0]);
    }

    #[test]
    fn ops_and_rounds() {
        assert_eq!(Op::Add.apply(u32::MAX, 2), 1);
        assert_eq!(Op::Or.apply(0b1010, 0b0110), 0b1110);
        assert_eq!(Op::Max.apply(0x8000_0000, 5), 0x8000_0000);
        use core::cmp::Ordering::*;
        assert_eq!(round_cmp(5, 5), Equal);
        assert_eq!(round_cmp(4, 5), Less);
        assert_eq!(round_cmp(0, u32::MAX), Greater);
        assert_eq!(round_cmp(u32::MAX, 0), Less);
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;
        use std::sync::atomic::{AtomicU64, Ordering};

        /// Cases whose assertion ran; the v1 test fed random bytes and (as measured) accepted
        /// 0 of 10^6 inputs, so its round-trip assertion never ran.
        static ACCEPTED: AtomicU64 = AtomicU64::new(0);
        static REJECTED: AtomicU64 = AtomicU64::new(0);

        fn kind() -> impl Strategy<Value = Kind> {
            prop_oneof![
                Just(Kind::Data),
                Just(Kind::Result),
                Just(Kind::Probe),
                Just(Kind::Status)
            ]
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![Just(Op::Add), Just(Op::Or), Just(Op::Max)]
        }

        /// A structurally valid packet: any field values the rules allow, lanes 1..=64 for
        /// DATA/RESULT (the format allows any nonzero count; LANE_CHOICES is a job rule).
        fn valid_packet() -> impl Strategy<Value = (Header, Vec<u32>)> {
            (
                kind(),
                op(),
                any::<(u8, u16, u32, u32, u8, u32, u32, u32)>(),
                1u16..=64,
                any::<u16>(),
                any::<u64>(),
            )
                .prop_map(
                    |(
                        kind,
                        op,
                        (rank, job, epoch, slot, count, round, offset, bitmap),
                        l,
                        fl,
                        seed,
                    )| {
                        let lanes = if kind.has_lanes() { l } else { 0 };
                        let (set, flags) = match kind {
                            Kind::Data | Kind::Probe => ((round & 1) as u8, 0),
                            Kind::Result => ((seed & 1) as u8, 0),
                            Kind::Status => ((seed & 1) as u8, fl & NACK_MASK),
                        };
                        let h = Header {
                            kind,
                            op,
                            rank,
                            job,
                            lanes,
                            epoch,
                            slot,
                            set,
                            count,
                            flags,
                            round,
                            offset,
                            bitmap,
                        };
                        let vals = (0..lanes as u64)
                            .map(|i| (seed.wrapping_mul(i + 1) >> 17) as u32)
                            .collect();
                        (h, vals)
                    },
                )
        }

        fn check_roundtrip(bytes: &[u8]) -> Result<bool, TestCaseError> {
            let Ok(p) = Packet::new_checked(bytes) else {
                return Ok(false);
            };
            let Ok(h) = Header::parse(&p) else {
                return Ok(false);
            };
            prop_assert_eq!(h.packet_len(), bytes.len());
            let lanes: Vec<u32> = p.lanes().collect();
            let mut again = vec![0u8; h.packet_len()];
            prop_assert_eq!(build(&h, &lanes, &mut again), Ok(bytes.len()));
            prop_assert_eq!(&again[..], bytes);
            Ok(true)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

            /// Every structurally generated packet parses back to its header and re-emits
            /// byte for byte.
            #[test]
            fn valid_packets_roundtrip((h, vals) in valid_packet()) {
                let mut buf = vec![0u8; h.packet_len()];
                build(&h, &vals, &mut buf).unwrap();
                let p = Packet::new_checked(&buf[..]).unwrap();
                prop_assert_eq!(Header::parse(&p), Ok(h));
                prop_assert!(check_roundtrip(&buf)?);
                ACCEPTED.fetch_add(1, Ordering::Relaxed);
            }

            /// A valid packet with one byte changed (and maybe truncated): parse either
            /// rejects it or accepts a header that re-emits the same bytes; never panics.
            #[test]
            fn mutated_packets_roundtrip_or_fail(
                (h, vals) in valid_packet(),
                pos in any::<usize>(),
                val in any::<u8>(),
                cut in any::<Option<usize>>(),
            ) {
                let mut buf = vec![0u8; h.packet_len()];
                build(&h, &vals, &mut buf).unwrap();
                let n = buf.len();
                buf[pos % n] = val;
                let keep = cut.map_or(n, |c| c % (n + 1));
                if check_roundtrip(&buf[..keep])? {
                    ACCEPTED.fetch_add(1, Ordering::Relaxed);
                } else {
                    REJECTED.fetch_add(1, Ordering::Relaxed);
                }
            }
        }

        /// The round-trip assertion really runs: run both properties and count.
        #[test]
        fn roundtrip_assertion_runs_on_most_cases() {
            valid_packets_roundtrip();
            mutated_packets_roundtrip_or_fail();
            let acc = ACCEPTED.load(Ordering::Relaxed);
            let rej = REJECTED.load(Ordering::Relaxed);
            eprintln!("round-trip assertion ran on {acc} cases; {rej} mutated packets rejected");
            // 4096 valid cases always accepted, plus the mutations that stay valid (a byte
            // in the lanes, offset, slot, ... or rewritten to its own value): measured 5,932
            // accepted, 2,260 of 4,096 mutations rejected (the v1 test: 0 of 10^6 accepted).
            assert!(acc >= 4096 + 1000, "accepted {acc}, rejected {rej}");
            assert!(rej >= 500, "mutations must also be rejected: {rej}");
        }
    }
}
