//! Certificate fingerprints and the switch's allow-list of QUIC client certificates.
//!
//! A fingerprint is the SHA-256 of a certificate's end-entity DER, written as 64 hex digits
//! (colons between bytes allowed, case ignored), as [`crate::fingerprint`] prints it. An
//! allow-list file holds one fingerprint per line; `#` starts a comment (whole line or after
//! the fingerprint), blank lines are ignored. The file comes from an operator, but it is still
//! read with a size bound and every bad line is an error naming its number.

use std::io::Read;
use std::path::Path;

use thiserror::Error;

/// Largest allow-list file accepted (about 15,000 fingerprints with comments).
pub const MAX_ALLOW_LIST_BYTES: u64 = 1 << 20;

/// Why a string is not a certificate fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FingerprintError {
    /// A character that is neither a hex digit nor a colon.
    #[error("{0:?} is not a hex digit")]
    NotHex(char),
    /// Not 64 hex digits.
    #[error("{0} hex digits, expected 64 (SHA-256)")]
    Length(usize),
}

/// Parses a fingerprint: 64 hex digits, colons allowed anywhere, either case.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], FingerprintError> {
    let mut out = [0u8; 32];
    let mut digits = 0usize;
    for c in text.chars().filter(|c| *c != ':') {
        let v = c.to_digit(16).ok_or(FingerprintError::NotHex(c))? as u8;
        if digits < 64 {
            // High nibble first: the second digit of a byte shifts the first one up.
            out[digits / 2] = (out[digits / 2] << 4) | v;
        }
        digits += 1;
    }
    if digits != 64 {
        return Err(FingerprintError::Length(digits));
    }
    Ok(out)
}

/// Errors reading an allow-list.
#[derive(Debug, Error)]
pub enum AllowListError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_ALLOW_LIST_BYTES`].
    #[error("more than {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// A line is not valid UTF-8.
    #[error("line {line}: not UTF-8")]
    NotUtf8 {
        /// 1-based line number.
        line: usize,
    },
    /// A line holds something other than one fingerprint and an optional comment.
    #[error("line {line}: {source}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        source: FingerprintError,
    },
    /// No fingerprint at all: such a list would refuse every client, which is never meant.
    #[error("no fingerprint in the allow-list")]
    Empty,
}

/// The client certificates a QUIC server accepts, by fingerprint. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAllowList {
    /// Sorted, without duplicates.
    fingerprints: Vec<[u8; 32]>,
}

impl ClientAllowList {
    /// A list of the given fingerprints (duplicates are merged); [`AllowListError::Empty`] if
    /// there are none.
    pub fn new(fingerprints: impl IntoIterator<Item = [u8; 32]>) -> Result<Self, AllowListError> {
        let mut fingerprints: Vec<[u8; 32]> = fingerprints.into_iter().collect();
        fingerprints.sort_unstable();
        fingerprints.dedup();
        if fingerprints.is_empty() {
            return Err(AllowListError::Empty);
        }
        Ok(ClientAllowList { fingerprints })
    }

    /// Parses the text of an allow-list file (see the module docs).
    pub fn parse(text: &str) -> Result<Self, AllowListError> {
        let mut fps = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let fp = parse_fingerprint(content).map_err(|source| AllowListError::BadLine {
                line: i + 1,
                source,
            })?;
            fps.push(fp);
        }
        Self::new(fps)
    }

    /// Parses raw file bytes: UTF-8 text of at most [`MAX_ALLOW_LIST_BYTES`].
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, AllowListError> {
        if bytes.len() as u64 > MAX_ALLOW_LIST_BYTES {
            return Err(AllowListError::TooLarge {
                max: MAX_ALLOW_LIST_BYTES,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| AllowListError::NotUtf8 {
            line: 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count(),
        })?;
        Self::parse(text)
    }

    /// Reads and parses an allow-list file, reading at most one byte past the size limit.
    pub fn load(path: &Path) -> Result<Self, AllowListError> {
        let io = |source| AllowListError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_ALLOW_LIST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Self::parse_bytes(&bytes)
    }

    /// Whether a certificate with this fingerprint is allowed.
    pub fn contains(&self, fingerprint: &[u8; 32]) -> bool {
        self.fingerprints.binary_search(fingerprint).is_ok()
    }

    /// The allowed fingerprints, sorted (at least one).
    pub fn fingerprints(&self) -> &[[u8; 32]] {
        &self.fingerprints
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const B: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn bytes(hex: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn fingerprint_forms() {
        assert_eq!(parse_fingerprint(A).unwrap(), bytes(A));
        assert_eq!(parse_fingerprint(&A.to_uppercase()).unwrap(), bytes(A));
        let colons: Vec<&str> = (0..32).map(|i| &A[2 * i..2 * i + 2]).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).unwrap(), bytes(A));
        assert_eq!(parse_fingerprint("abc"), Err(FingerprintError::Length(3)));
        assert_eq!(
            parse_fingerprint(&format!("{A}00")),
            Err(FingerprintError::Length(66))
        );
        assert_eq!(
            parse_fingerprint(&"zz".repeat(32)),
            Err(FingerprintError::NotHex('z'))
        );
        // A sign or space is not a digit even where from_str_radix would take it.
        assert_eq!(
            parse_fingerprint(&format!("+{}", &A[1..])),
            Err(FingerprintError::NotHex('+'))
        );
    }

    #[test]
    fn list_with_comments_and_blank_lines() {
        let text = format!("# workers of job 7\n\n  {A}  # rank 0\r\n{B}\n# {A}0\n{A}\n");
        let list = ClientAllowList::parse(&text).unwrap();
        assert_eq!(list.fingerprints().len(), 2);
        assert!(list.contains(&bytes(A)));
        assert!(list.contains(&bytes(B)));
        let mut other = bytes(A);
        other[31] ^= 1;
        assert!(!list.contains(&other));
    }

    #[test]
    fn bad_lines_name_their_number() {
        let bad_hex = format!("{A}\n\n{}g\n", &B[..63]);
        match ClientAllowList::parse(&bad_hex) {
            Err(AllowListError::BadLine {
                line: 3,
                source: FingerprintError::NotHex('g'),
            }) => {}
            other => panic!("{other:?}"),
        }
        let short = format!("# c\n{}\n{B}\n", &A[..62]);
        match ClientAllowList::parse(&short) {
            Err(AllowListError::BadLine {
                line: 2,
                source: FingerprintError::Length(62),
            }) => {}
            other => panic!("{other:?}"),
        }
        // Two fingerprints on one line: the space between them is not a hex digit.
        match ClientAllowList::parse(&format!("{A} {B}")) {
            Err(AllowListError::BadLine {
                line: 1,
                source: FingerprintError::NotHex(' '),
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_list_is_an_error() {
        assert!(matches!(
            ClientAllowList::parse(""),
            Err(AllowListError::Empty)
        ));
        assert!(matches!(
            ClientAllowList::parse("# nobody yet\n\n"),
            Err(AllowListError::Empty)
        ));
        assert!(matches!(
            ClientAllowList::new([]),
            Err(AllowListError::Empty)
        ));
    }

    #[test]
    fn bytes_are_bounded_and_utf8() {
        let mut big = format!("{A}\n").into_bytes();
        big.resize(MAX_ALLOW_LIST_BYTES as usize + 1, b'\n');
        assert!(matches!(
            ClientAllowList::parse_bytes(&big),
            Err(AllowListError::TooLarge { .. })
        ));
        big.truncate(MAX_ALLOW_LIST_BYTES as usize);
        assert!(ClientAllowList::parse_bytes(&big).is_ok());
        let mut bad = format!("{A}\n# ok\n").into_bytes();
        bad.extend_from_slice(b"\xff\n");
        assert!(matches!(
            ClientAllowList::parse_bytes(&bad),
            Err(AllowListError::NotUtf8 { line: 3 })
        ));
    }

    #[test]
    fn load_reads_a_file() {
        let dir = std::env::temp_dir().join(format!("sr-allow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("clients");
        std::fs::write(&path, format!("{B}\n")).unwrap();
        let list = ClientAllowList::load(&path).unwrap();
        assert_eq!(list.fingerprints(), &[bytes(B)]);
        assert!(matches!(
            ClientAllowList::load(&dir.join("missing")),
            Err(AllowListError::Io { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
