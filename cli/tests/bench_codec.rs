//! `sketchreduce bench codec --json` through the real binary: the JSON line reviewers read,
//! exact on one decoder thread and on two (a table large enough for every split path).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sketchreduce");

fn bench(threads: &str) -> serde_json::Value {
    let out = Command::new(BIN)
        .args([
            "bench",
            "codec",
            "--dim",
            "1200000",
            "--density",
            "0.05",
            "--workers",
            "4",
            "--overlap",
            "0.5",
            "--index",
            "bitmap",
            "--repeat",
            "1",
            "--min-time-ms",
            "0",
            "--json",
            "--decode-threads",
            threads,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim().lines().count(), 1, "one JSON line: {text}");
    serde_json::from_str(text.trim()).unwrap()
}

#[test]
fn one_and_two_decoder_threads_are_exact_and_reported() {
    let one = bench("1");
    let two = bench("2");
    for (v, threads) in [(&one, 1), (&two, 2)] {
        assert_eq!(v["status"], "ok", "{v}");
        assert_eq!(v["exact"], true, "{v}");
        assert_eq!(v["decode_threads"], threads, "{v}");
        assert!(v["candidates"].as_u64().unwrap() > 100_000, "{v}");
        for field in [
            "decode_gbps",
            "memcpy_gbps",
            "memcpy_gbps_threads",
            "decode_gbps_median",
            "memcpy_gbps_median",
        ] {
            assert!(v[field].as_f64().unwrap() > 0.0, "{field}: {v}");
        }
    }
    // --repeat 1 with --min-time-ms 0 times each measurement once.
    assert_eq!(one["timed_runs"]["decode"], 1, "{one}");
    assert_eq!(one["decode_gbps"], one["decode_gbps_median"], "{one}");
    assert_eq!(one["candidates"], two["candidates"]);
    assert_eq!(one["bytes_per_worker"], two["bytes_per_worker"]);
}
