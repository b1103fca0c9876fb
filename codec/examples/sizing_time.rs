use sketchreduce_codec::*;
fn main() {
    for u in [4_000u64, 16_000, 160_000, 1_000_000, 4_000_000] {
        let t = std::time::Instant::now();
        let p = CodecParams::sized(1, 2, 4_000_000, LaneWidth::W32, &Sizing::new(u)).unwrap();
        println!(
            "u {u}: {:?} cells {} index {:?}",
            t.elapsed(),
            p.cells(),
            p.index_kind()
        );
    }
}
