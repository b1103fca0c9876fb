//! With `--all-features` this crate's binaries and tests link libtorch (through the
//! collectives' `tch` feature), which torch-sys gives no rpath: add one from `LIBTORCH`
//! (exported by `scripts/env.sh`). Without `LIBTORCH` nothing links libtorch; nothing to do.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
