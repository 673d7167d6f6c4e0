//! Health checks and drain: poll a probe until it passes or a deadline passes;
//! ask the app over plain HTTP; count live connections to a port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What one look at the app found.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// It answered 2xx or 3xx.
    Healthy,
    /// Not yet; why.
    NotYet(String),
    /// It will never be healthy (the process died); why.
    Dead(String),
}

/// Calls `probe` every `interval` until it is healthy (`Ok`) or dead, or `timeout`
/// passes (`Err` with the last reason).
pub fn wait_until_healthy(
    mut probe: impl FnMut() -> Probe,
    timeout: Duration,
    interval: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        match probe() {
            Probe::Healthy => return Ok(()),
            Probe::Dead(reason) => return Err(reason),
            Probe::NotYet(reason) if started.elapsed() >= timeout => return Err(reason),
            Probe::NotYet(_) => std::thread::sleep(interval),
        }
    }
}

/// One `GET path` to 127.0.0.1:port; healthy on a 2xx or 3xx status.
pub fn http_probe(port: u16, path: &str) -> Probe {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(stream) => stream,
        Err(err) => return Probe::NotYet(format!("port {port}: {err}")),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: dropship-health\r\nConnection: close\r\n\r\n"
    );
    if let Err(err) = stream.write_all(request.as_bytes()) {
        return Probe::NotYet(format!("port {port}: {err}"));
    }
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).unwrap_or(0);
    let line = String::from_utf8_lossy(&head[..n]);
    match line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
    {
        Some(code) if (200..400).contains(&code) => Probe::Healthy,
        Some(code) => Probe::NotYet(format!("GET {path} on port {port} answered {code}")),
        None => Probe::NotYet(format!("GET {path} on port {port} gave no HTTP answer")),
    }
}

/// Established TCP connections whose local port is `port` (connections into the app).
pub fn established_connections(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| count_established(&table, port))
        .sum()
}

fn count_established(table: &str, port: u16) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            local_port == Some(port) && fields.get(3) == Some(&"01")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_stops_at_the_first_healthy_probe() {
        let mut answers = vec![Probe::Healthy, Probe::NotYet("booting".into())];
        let result = wait_until_healthy(
            || answers.pop().unwrap(),
            Duration::from_secs(5),
            Duration::ZERO,
        );
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn a_dead_process_fails_at_once_and_a_slow_one_at_the_deadline() {
        let result = wait_until_healthy(
            || Probe::Dead("exited".into()),
            Duration::from_secs(60),
            Duration::ZERO,
        );
        assert_eq!(result, Err("exited".into()));
        let result = wait_until_healthy(
            || Probe::NotYet("503".into()),
            Duration::from_millis(30),
            Duration::from_millis(5),
        );
        assert_eq!(result, Err("503".into()));
    }

    #[test]
    fn proc_net_tcp_rows_are_counted_by_local_port_and_state() {
        let table = "  sl  local_address rem_address   st\n   0: 0100007F:0BB8 0100007F:D2F0 01 x\n   1: 0100007F:0BB8 00000000:0000 0A x\n   2: 0100007F:0BB9 0100007F:D2F1 01 x\n";
        assert_eq!(count_established(table, 3000), 1);
        assert_eq!(count_established(table, 3001), 1);
    }
}
