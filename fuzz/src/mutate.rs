//! The random source, the byte mutator, and [`Source`], which lets a harness read structured
//! choices out of a byte string (so that byte mutations become structural ones).

use sketchreduce_agent::sim::SplitMix64;

/// The fuzzer's deterministic random source (the agent simulator's SplitMix64): runs are
/// reproducible from their seed.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Values that often sit on a boundary.
const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    u64::MAX,
];

/// Byte-level mutations with a dictionary.
#[derive(Debug, Clone)]
pub struct Mutator {
    dict: Vec<Vec<u8>>,
    max_len: usize,
}

impl Mutator {
    /// A mutator inserting words of `dict`, producing inputs of at most `max_len` bytes.
    pub fn new(dict: Vec<Vec<u8>>, max_len: usize) -> Self {
        Mutator {
            dict,
            max_len: max_len.max(1),
        }
    }

    /// Applies one to four mutations to `b`; `other` is another corpus input for crossover.
    pub fn mutate(&self, rng: &mut Rng, b: &mut Vec<u8>, other: &[u8]) {
        for _ in 0..1 + rng.below(4) {
            self.mutate_once(rng, b, other);
        }
        b.truncate(self.max_len);
    }

    fn mutate_once(&self, rng: &mut Rng, b: &mut Vec<u8>, other: &[u8]) {
        let len = b.len();
        match rng.below(12) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = rng.next_u64() as u8;
            }
            2 if len > 0 => {
                // An interesting integer of 1, 2, 4 or 8 bytes, either byte order.
                let w = 1 << rng.below(4);
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let v = if rng.one_in(2) { v } else { v.wrapping_neg() };
                let bytes = if rng.one_in(2) {
                    v.to_le_bytes()
                } else {
                    (v << (64 - 8 * w as u32).min(63)).to_be_bytes()
                };
                let i = rng.below(len);
                for (k, x) in bytes[..w].iter().enumerate() {
                    if let Some(d) = b.get_mut(i + k) {
                        *d = *x;
                    }
                }
            }
            3 if len > 0 => {
                // Add a small number to a byte (walks counters, lengths, digits).
                let i = rng.below(len);
                b[i] = b[i].wrapping_add((rng.below(9) as u8).wrapping_sub(4));
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                b.drain(i..i + n);
            }
            5 if len > 0 => {
                // Duplicate a range.
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let chunk = b[i..i + n].to_vec();
                let at = rng.below(len + 1);
                b.splice(at..at, chunk);
            }
            6 => {
                let n = 1 + rng.below(16);
                let at = rng.below(len + 1);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(at..at, bytes);
            }
            7 | 8 if !self.dict.is_empty() => {
                let w = &self.dict[rng.below(self.dict.len())];
                let at = rng.below(len + 1);
                if rng.one_in(2) && at + w.len() <= len {
                    b[at..at + w.len()].copy_from_slice(w);
                } else {
                    b.splice(at..at, w.iter().copied());
                }
            }
            9 if !other.is_empty() => {
                // Crossover: our head, the other input's tail.
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            10 if len > 0 => b.truncate(rng.below(len)),
            _ if len > 1 => {
                // Swap two bytes.
                let (i, j) = (rng.below(len), rng.below(len));
                b.swap(i, j);
            }
            _ => b.push(rng.next_u64() as u8),
        }
    }
}

/// Reads choices out of a byte string, returning zeros once it is exhausted (so every input
/// decodes to something, and shorter inputs to simpler things).
#[derive(Debug, Clone)]
pub struct Source<'a> {
    b: &'a [u8],
}

impl<'a> Source<'a> {
    /// Choices from `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Source { b }
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.b.is_empty()
    }

    /// The next byte (0 when exhausted).
    pub fn u8(&mut self) -> u8 {
        match self.b.split_first() {
            Some((&x, rest)) => {
                self.b = rest;
                x
            }
            None => 0,
        }
    }

    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// The next four bytes, big-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.u8() as usize % n
        }
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, rest) = self.b.split_at(n.min(self.b.len()));
        self.b = rest;
        a
    }

    /// A chunk of at most `max` bytes announced by a 2-byte length (for harnesses that run a
    /// sequence of frames).
    pub fn chunk(&mut self, max: usize) -> &'a [u8] {
        let n = self.u16() as usize % (max + 1);
        self.bytes(n)
    }

    /// The rest.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
}

/// Writes `frame` as a [`Source::chunk`] (2-byte big-endian length, then the bytes).
pub fn put_chunk(out: &mut Vec<u8>, frame: &[u8]) {
    let n = frame.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&frame[..n]);
}
