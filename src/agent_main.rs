//! The `dropship-agent` binary: only the server side of dropship (`agent`,
//! `agent-part`, `run-app`). The client uploads it to servers, one build per CPU
//! architecture; it links neither the GitHub client nor SSH.

fn main() -> std::process::ExitCode {
    dropship::run_agent(std::env::args_os())
}
