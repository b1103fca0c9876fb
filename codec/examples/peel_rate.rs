//! Measures how often peeling stalls for a given number of keys and cells per key, to
//! calibrate and check the sizing:
//! `cargo run --release -p sketchreduce-codec --example peel_rate -- KEYS TRIALS [RATIO|auto] [H|auto] [plain|coupled|auto] [SEGMENT_LEN]`.
//!
//! Without a ratio (`auto`) the sizing function chooses everything (at its default target
//! failure probability); with a ratio the peeling cells are `ceil(RATIO · KEYS)` (rounded up
//! to whole segments for the coupled layout, whose segment length is the sizing's unless
//! given). Prints one line: the shape, the stall count and the measured stall rate.

use sketchreduce_codec::sizing::{self, sketch_shape};
use sketchreduce_codec::*;

fn main() -> Result<(), CodecError> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).filter(|s| *s != "auto");
    let keys: usize = arg(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let trials: u64 = arg(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let ratio: Option<f64> = arg(3).and_then(|s| s.parse().ok());
    let hashes: Option<u8> = arg(4).and_then(|s| s.parse().ok());
    let layout = match arg(5) {
        Some("plain") => LayoutChoice::Plain,
        Some("coupled") => LayoutChoice::Coupled,
        _ => LayoutChoice::Auto,
    };
    let seg: Option<u32> = arg(6).and_then(|s| s.parse().ok());
    let dim = (keys as u64 * 4).max(64);
    let idx: Vec<u32> = (0..keys as u32).map(|k| k * 4 + 1).collect();
    let vals: Vec<i64> = (0..keys as i64).map(|k| k % 1000 - 500).collect();
    let mut shape = sketch_shape(keys as f64, params::DEFAULT_FAILURE_PROB, hashes, layout);
    if let Some(r) = ratio {
        let m = keys as f64 * r;
        let h = shape.hashes;
        let geometry = match (seg, layout) {
            (Some(len), LayoutChoice::Coupled) => {
                Some(((m / len as f64).ceil() as usize, len as usize))
            }
            (None, LayoutChoice::Coupled) => {
                sizing::coupled_geometry(keys as f64, m, h, params::DEFAULT_FAILURE_PROB)
            }
            _ => None,
        };
        shape = match geometry {
            Some((segments, len)) => sizing::SketchShape {
                layout: Layout::Coupled {
                    segment_len: len as u32,
                },
                hashes: h,
                peel_cells: segments * len,
            },
            None => sizing::SketchShape {
                layout: Layout::Plain,
                hashes: h,
                peel_cells: (m.ceil() as usize).max(h as usize),
            },
        };
    }
    let mut stalls = 0u64;
    let mut dec = Decoder::<i32>::new();
    for t in 0..trials {
        let params = CodecParams::explicit(
            t,
            0,
            dim,
            LaneWidth::W32,
            IndexKind::Bitmap,
            shape.peel_cells + CHECK_LANES,
            shape.hashes,
            false,
        )?
        .with_layout(shape.layout)?;
        let mut enc = Encoder::<i32>::new(&params)?;
        let mut e = enc.new_encoding();
        enc.encode_fixed_sparse(&idx, &vals, &mut e)?;
        match dec.decode_encoding(&e) {
            Ok(_) => {}
            Err(CodecError::Stalled { .. }) => stalls += 1,
            Err(e) => return Err(e),
        }
    }
    let seg_len = match shape.layout {
        Layout::Coupled { segment_len } => segment_len as u64,
        Layout::Plain => 0,
    };
    println!(
        "keys={keys} layout={} h={} segment={seg_len} cells={} ratio={:.4} trials={trials} stalls={stalls} rate={:.2e}",
        shape.layout.name(),
        shape.hashes,
        shape.peel_cells,
        shape.peel_cells as f64 / keys as f64,
        stalls as f64 / trials.max(1) as f64
    );
    Ok(())
}
