//! The fuzz harnesses for a few seconds each (the long run is `sketchreduce-fuzz all`).

use sketchreduce_fuzz::{fuzz, harness};

fn run(target: &str, iters: u64) {
    let mut h = harness(target).expect("target");
    // A new seed per day would find new things but make CI flaky; fixed seeds, several.
    for seed in 1..=2 {
        match fuzz(h.as_mut(), iters, seed) {
            Ok(r) => assert_eq!(r.inputs, iters),
            Err(f) => panic!("{target}: {f}"),
        }
    }
}

#[test]
fn packet_parser() {
    run("packet", 100_000);
}

#[test]
fn control_decoders() {
    run("control", 10_000);
}

#[test]
fn rendezvous_greetings() {
    run("greeting", 50_000);
}

#[test]
fn switch_state_machine() {
    run("switch", 5_000);
}
