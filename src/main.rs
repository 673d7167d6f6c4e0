//! The `dropship` binary: parse the command line, run, turn the outcome into an exit status.

fn main() -> std::process::ExitCode {
    dropship::run(std::env::args_os())
}
