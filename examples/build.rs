//! The binaries link libtorch, which torch-sys does not give an rpath: add one from `LIBTORCH`
//! (exported by `scripts/env.sh`), so `cargo run` works without LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    match std::env::var_os("LIBTORCH") {
        Some(dir) => {
            let lib = std::path::Path::new(&dir).join("lib");
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        }
        None => println!("cargo:warning=LIBTORCH is not set: run `. scripts/env.sh` first"),
    }
}
