//! The lossless proof: with the same seed, innet, ring, allgather (and auto) runs of
//! `train_ncf` end with bit-identical parameters after a few iterations.

#[test]
fn train_ncf_parameters_bit_identical_across_algorithms() {
    let dir = std::env::temp_dir().join(format!("ncf-lossless-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_train_ncf"))
        .arg("--out-dir")
        .arg(&dir)
        .args([
            "--workers",
            "3",
            "--compare",
            "--iters",
            "4",
            "--users",
            "3000",
            "--items",
            "800",
            "--batch",
            "128",
            "--quiet",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("final parameters bit-identical across algorithms: YES"),
        "{stdout}"
    );
    assert!(!stdout.contains("RANKS DISAGREE"), "{stdout}");
    std::fs::remove_dir_all(&dir).ok();
    for algo in ["innet", "ring", "allgather", "auto"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(algo)),
            "missing {algo} row: {stdout}"
        );
    }
}
