//! Build script: leaves the debug info out of a debug build's `dropship-agent`,
//! the file the client uploads to servers (170 MB -> 6 MB; its symbols stay, for
//! backtraces and for the test that checks what it links). Release builds strip
//! everything already (`[profile.release]`), and a later `--strip-debug` would
//! undo that.

fn main() {
    if std::env::var("PROFILE").as_deref() == Ok("debug") {
        println!("cargo::rustc-link-arg-bin=dropship-agent=-Wl,--strip-debug");
    }
}
