//! The shared secret, request/response MACs (HMAC-SHA256), nonces and epochs.
//!
//! MAC input (docs/wire.md, "Control protocol"):
//! `context + nonce + "\n" + decimal(seq) + "\n" + body`, where context is
//! [`REQUEST_CONTEXT`] or [`RESPONSE_CONTEXT`]. The nonce is fresh per
//! connection, so a frame recorded on one connection is useless on another; the sequence
//! number makes it useless twice on the same one.

use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use sketchreduce_wire::control::{
    MAC_HEX_LEN, MIN_SECRET_LEN, NONCE_HEX_LEN, SECRET_ENV, SECRET_FILE_ENV,
};
pub use sketchreduce_wire::control::{REQUEST_CONTEXT, RESPONSE_CONTEXT};
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Problems with a secret.
#[derive(Debug, Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Fewer than [`MIN_SECRET_LEN`] bytes.
    #[error("secret from {from} has {len} bytes; at least {MIN_SECRET_LEN} are required")]
    TooShort {
        /// Where it came from.
        from: String,
        /// Its length.
        len: usize,
    },
}

/// The control plane's shared secret (at least [`MIN_SECRET_LEN`] bytes). Its `Debug` output
/// does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// A secret from raw bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, SecretError> {
        Self::checked(bytes.into(), "bytes")
    }

    fn checked(bytes: Vec<u8>, from: &str) -> Result<Self, SecretError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                from: from.to_string(),
                len: bytes.len(),
            });
        }
        Ok(Secret(bytes))
    }

    /// Reads a secret file: its content, with one trailing newline (`\n` or `\r\n`) removed.
    /// Warns when the file is readable by group or others.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let p = path.display().to_string();
        let mut bytes = std::fs::read(path).map_err(|source| SecretError::Io {
            path: p.clone(),
            source,
        })?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(path) {
                if m.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %p, "secret file is readable by group or others (chmod 600)");
                }
            }
        }
        Self::checked(bytes, &p)
    }

    /// The secret from the environment: the file named by `SKETCHREDUCE_SECRET_FILE`, else the
    /// value of `SKETCHREDUCE_SECRET`, else `None`.
    pub fn from_env() -> Result<Option<Self>, SecretError> {
        if let Some(path) = std::env::var_os(SECRET_FILE_ENV) {
            return Self::from_file(Path::new(&path)).map(Some);
        }
        match std::env::var_os(SECRET_ENV) {
            Some(v) => {
                use std::os::unix::ffi::OsStrExt;
                Self::checked(v.as_bytes().to_vec(), SECRET_ENV).map(Some)
            }
            None => Ok(None),
        }
    }

    fn hmac(&self, context: &str, nonce: &str, seq: u64, body: &str) -> HmacSha256 {
        // HMAC accepts keys of any length: cannot fail.
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(context.as_bytes());
        m.update(nonce.as_bytes());
        m.update(b"\n");
        m.update(seq.to_string().as_bytes());
        m.update(b"\n");
        m.update(body.as_bytes());
        m
    }

    /// Lowercase hex HMAC-SHA256 of `context + nonce + "\n" + seq + "\n" + body`.
    pub fn mac(&self, context: &str, nonce: &str, seq: u64, body: &str) -> String {
        hex(&self.hmac(context, nonce, seq, body).finalize().into_bytes())
    }

    /// Whether `mac_hex` is the MAC of this input (constant-time comparison).
    pub fn verify(&self, context: &str, nonce: &str, seq: u64, body: &str, mac_hex: &str) -> bool {
        let Some(tag) = unhex32(mac_hex) else {
            return false;
        };
        self.hmac(context, nonce, seq, body)
            .verify_slice(&tag)
            .is_ok()
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// 64 lowercase hex digits → 32 bytes.
fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != MAC_HEX_LEN {
        return None;
    }
    let mut out = [0u8; 32];
    let b = s.as_bytes();
    for (i, o) in out.iter_mut().enumerate() {
        let d = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        *o = d(b[2 * i])? << 4 | d(b[2 * i + 1])?;
    }
    Some(out)
}

/// Whether `s` is a well-formed nonce: [`NONCE_HEX_LEN`] lowercase hex digits.
pub fn is_nonce(s: &str) -> bool {
    s.len() == NONCE_HEX_LEN && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// A fresh nonce from the operating system's CSPRNG.
pub fn new_nonce() -> String {
    let mut b = [0u8; NONCE_HEX_LEN / 2];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex(&b)
}

/// A random nonzero epoch from the operating system's CSPRNG, different from `avoid`.
pub fn new_epoch(avoid: u32) -> u32 {
    loop {
        let e = rand::rngs::OsRng.next_u32();
        if e != 0 && e != avoid {
            return e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_matches_rfc4231_style_reference() {
        // Independent reference: HMAC-SHA256 with key "sketchreduce-test-secret", message
        // "sketchreduce/2 request\n" + "00112233445566778899aabbccddeeff" + "\n1\n" +
        // "{\"op\":\"info\"}", computed with Python's hmac module (docs/wire.md example).
        let s = Secret::new(b"sketchreduce-test-secret".to_vec()).unwrap();
        let nonce = "00112233445566778899aabbccddeeff";
        let mac = s.mac(REQUEST_CONTEXT, nonce, 1, r#"{"op":"info"}"#);
        assert_eq!(
            mac,
            "4e4779ac6f15c3147add611a4ef5ebd547c65536f3e75e29397760b10594fe62"
        );
        assert!(s.verify(REQUEST_CONTEXT, nonce, 1, r#"{"op":"info"}"#, &mac));
        assert!(!s.verify(RESPONSE_CONTEXT, nonce, 1, r#"{"op":"info"}"#, &mac));
        assert!(!s.verify(REQUEST_CONTEXT, nonce, 2, r#"{"op":"info"}"#, &mac));
        assert!(!s.verify(REQUEST_CONTEXT, nonce, 1, r#"{"op":"info" }"#, &mac));
        assert!(!s.verify(
            REQUEST_CONTEXT,
            nonce,
            1,
            r#"{"op":"info"}"#,
            &mac.to_uppercase()
        ));
        assert!(!s.verify(REQUEST_CONTEXT, nonce, 1, r#"{"op":"info"}"#, ""));
        let other = Secret::new(b"another-secret-of-16".to_vec()).unwrap();
        assert!(!other.verify(REQUEST_CONTEXT, nonce, 1, r#"{"op":"info"}"#, &mac));
    }

    #[test]
    fn secrets_and_nonces() {
        assert!(Secret::new(b"short".to_vec()).is_err());
        assert_eq!(
            format!("{:?}", Secret::new(vec![7; 16]).unwrap()),
            "Secret(16 bytes)"
        );
        let dir = std::env::temp_dir().join(format!("sr-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s");
        std::fs::write(&f, "0123456789abcdef\r\n").unwrap();
        assert_eq!(
            Secret::from_file(&f).unwrap(),
            Secret::new(b"0123456789abcdef".to_vec()).unwrap()
        );
        std::fs::write(&f, "0123456789abcde\n").unwrap();
        assert!(matches!(
            Secret::from_file(&f),
            Err(SecretError::TooShort { len: 15, .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
        let n = new_nonce();
        assert!(is_nonce(&n), "{n}");
        assert_ne!(n, new_nonce());
        assert!(!is_nonce("0011"));
        assert!(!is_nonce(&"G".repeat(32)));
        for _ in 0..100 {
            assert_ne!(new_epoch(5), 0);
        }
    }
}
