//! A tiny reader for `.npy` files holding float32 data, so users can feed their own gradients
//! to the benches (`--inputs`). Only what that needs: little-endian `f4`, C order.

use std::path::Path;

use thiserror::Error;

/// Why a `.npy` file could not be read.
#[derive(Debug, Error)]
pub enum NpyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not a supported `.npy` (bad magic, header, dtype or length).
    #[error("{path}: {reason}")]
    Format {
        /// File path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Reads a 1-D float32 `.npy` file (a gradient flattened by the caller; other shapes are
/// refused rather than silently flattened).
pub fn read_npy(path: impl AsRef<Path>) -> Result<Vec<f32>, NpyError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: name.clone(),
        source,
    })?;
    parse_npy(&bytes).map_err(|reason| NpyError::Format { path: name, reason })
}

/// Parses the bytes of a float32 `.npy` file.
pub fn parse_npy(bytes: &[u8]) -> Result<Vec<f32>, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (hlen, hstart) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            let l = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (l as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes.get(hstart..hstart + hlen).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))?;
        let rest = &header[at + key.len() + 2..];
        Some(rest.trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr").ok_or("header has no 'descr'")?;
    if !(descr.starts_with("'<f4'") || descr.starts_with("'=f4'")) {
        return Err(format!(
            "dtype must be little-endian float32 ('<f4'), found {}",
            descr.split(',').next().unwrap_or("")
        ));
    }
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err("fortran_order arrays are not supported".into());
    }
    let shape = field("shape").ok_or("header has no 'shape'")?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed shape")?;
    let dims: Vec<&str> = shape
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if dims.len() != 1 {
        return Err(format!(
            "shape ({shape}) is not 1-D; flatten the gradient first (e.g. numpy's ravel())"
        ));
    }
    let n: usize = dims[0]
        .parse()
        .map_err(|_| format!("bad shape entry {:?}", dims[0]))?;
    let data = &bytes[hstart + hlen..];
    let want = n
        .checked_mul(4)
        .ok_or_else(|| format!("shape ({n},) is too large"))?;
    if data.len() != want {
        return Err(format!("expected {want} data bytes, found {}", data.len()));
    }
    Ok(data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Serialises a 1-D float32 array as `.npy` bytes (used by tests and tools).
pub fn to_npy_bytes(values: &[f32]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        values.len()
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = vec![0.0, -1.5, f32::MAX, 3.25];
        assert_eq!(parse_npy(&to_npy_bytes(&v)).unwrap(), v);
        assert!(parse_npy(b"nope").is_err());
        let mut bad = to_npy_bytes(&v);
        bad.pop();
        assert!(parse_npy(&bad).is_err());
    }

    fn with_shape(shape: &str, data: usize) -> Vec<u8> {
        let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.resize(out.len() + data, 0);
        out
    }

    #[test]
    fn hostile_shapes_are_refused() {
        // (2^62 + 1) · 4 wraps to 4 in usize arithmetic: must not load as one float.
        let e = parse_npy(&with_shape("(4611686018427387905,)", 4)).unwrap_err();
        assert!(e.contains("too large"), "{e}");
        let e = parse_npy(&with_shape("(2, 2)", 16)).unwrap_err();
        assert!(e.contains("not 1-D"), "{e}");
        assert!(parse_npy(&with_shape("()", 4)).is_err());
        assert_eq!(parse_npy(&with_shape("(3,)", 12)).unwrap(), vec![0.0; 3]);
    }
}
