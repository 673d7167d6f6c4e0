//! Build script: leaves the debug info out of `dropship-agent`, the file the
//! client uploads to servers (a debug build's agent shrinks from 170 MB to 6 MB;
//! its symbols stay, for backtraces and for the test that checks what it links).
//! Release builds strip everything anyway (`[profile.release]`).

fn main() {
    println!("cargo::rustc-link-arg-bin=dropship-agent=-Wl,--strip-debug");
}
