//! Measures how often peeling stalls for a given number of keys and cells per key, to check
//! the sizing formulas: `cargo run --release -p sketchreduce-codec --example peel_rate -- KEYS TRIALS [RATIO] [H]`.
//! Without RATIO the sizing function chooses the cells.

use sketchreduce_codec::*;

fn main() -> Result<(), CodecError> {
    let args: Vec<String> = std::env::args().collect();
    let keys: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let trials: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let ratio: Option<f64> = args.get(3).and_then(|s| s.parse().ok());
    let hashes: Option<u8> = args.get(4).and_then(|s| s.parse().ok());
    let dim = (keys as u64 * 4).max(64);
    let idx: Vec<u32> = (0..keys as u32).map(|k| k * 4 + 1).collect();
    let vals: Vec<i64> = (0..keys as i64).map(|k| k + 1).collect();
    let mut fails = 0;
    let mut cells = 0;
    let mut dec = Decoder::<i32>::new();
    for t in 0..trials {
        let mut sizing = Sizing::new(keys as u64);
        sizing.index = IndexChoice::Bitmap;
        sizing.hashes = hashes;
        if let Some(r) = ratio {
            sizing.cells = Some((keys as f64 * r).ceil() as usize);
        }
        let params = CodecParams::sized(t, 0, dim, LaneWidth::W32, &sizing)?;
        cells = params.cells();
        let enc = Encoder::<i32>::new(&params)?;
        let mut e = enc.new_encoding();
        enc.encode_fixed_sparse(&idx, &vals, &mut e)?;
        if dec.decode_encoding(&e).is_err() {
            fails += 1;
        }
    }
    println!(
        "keys={keys} cells={cells} ratio={:.4} trials={trials} stalls={fails}",
        cells as f64 / keys as f64
    );
    Ok(())
}
