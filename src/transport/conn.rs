//! The client's end of the protocol: send requests and commands, stream the
//! release, read events. Works over any [`Link`] (SSH channel or child process).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::manifest::Entry;
use crate::package::{self, Release, Selection};
use crate::protocol::{Command, Event, Join, MAX_PARTS, PROTOCOL_VERSION};

/// zstd level for requests: 9 packs a 1,300-file manifest to 41.5 KB in under 5 ms
/// (15: 0.3 % smaller, three times the time; it is on the critical path).
const REQUEST_LEVEL: i32 = 9;

/// Exit status of the bootstrap command when the agent is not installed yet.
pub const AGENT_MISSING: i32 = 97;

/// The longest event line the client reads, in MiB. The largest real one, a `ready`
/// naming the files to send, takes 1 MiB for 150,000 files; a host that prints more
/// without a newline is not speaking dropship's protocol, and must not fill the
/// client's memory.
const MAX_EVENT_MIB: usize = 4;

/// A request as the agent reads it: a `zstd <length>` line, then one zstd frame
/// holding the JSON (a deploy request carries the whole manifest, which
/// dominates the bytes of a small redeploy).
pub fn encode_request(request: &impl Serialize) -> Vec<u8> {
    let json = serde_json::to_vec(request).unwrap_or_default();
    let frame = zstd::bulk::compress(&json, REQUEST_LEVEL).unwrap_or_default();
    let mut bytes = format!("zstd {}\n", frame.len()).into_bytes();
    bytes.extend_from_slice(&frame);
    bytes
}

/// Logs bytes sent and throughput every [`PROGRESS_EVERY`] until `done`.
fn report_progress(
    host: &str,
    sent: &AtomicU64,
    before: u64,
    done: &std::sync::atomic::AtomicBool,
) {
    let started = std::time::Instant::now();
    let mut next = PROGRESS_EVERY;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let elapsed = started.elapsed();
        if elapsed >= next {
            let bytes = sent.load(Ordering::Relaxed) - before;
            // As `report::mb` writes it; transport does not depend on `report`.
            tracing::info!(
                "{host}: uploading: {:.1} MB sent ({:.1} MB/s)",
                bytes as f64 / 1e6,
                bytes as f64 / 1e6 / elapsed.as_secs_f64()
            );
            next += PROGRESS_EVERY;
        }
    }
}

/// How often upload progress is logged.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// A byte pipe to a running agent.
pub trait Link: Read + Write + Send {
    /// Closes the agent's stdin, waits for it to exit; returns its exit code and stderr.
    fn finish(&mut self) -> (Option<i32>, String);

    /// Closes the agent's stdin without waiting for anything.
    fn close_input(&mut self);

    /// Starts `dropship agent-part` beside the agent, to carry one more part of
    /// a release stream to `socket`.
    fn open_part(&mut self, socket: &str) -> io::Result<Box<dyn Link>>;

    /// The round-trip time seen when the link opened (zero when local).
    fn round_trip(&self) -> Duration {
        Duration::ZERO
    }
}

/// Uncompressed bytes per part below which another channel does not pay.
const BYTES_PER_PART: u64 = 8 << 20;
/// The most channels one upload uses. Four carry 3.4 times what one does at
/// 50 ms (bulk data), but each extra channel costs two round trips to open,
/// while every channel waits: on a 17 MB release two were fastest (bench/run).
const MAX_CHANNELS: u64 = 2;
/// Round trips shorter than this (a LAN, loopback) never make one channel the limit.
const SLOW_LINK: Duration = Duration::from_millis(5);

/// How many parts to send: more channels only pay when the link is slow and the
/// upload large. `DROPSHIP_CHANNELS` overrides (1–8).
fn parts_for(release: &Release, send: Option<&[u32]>, round_trip: Duration) -> usize {
    if let Some(forced) = std::env::var("DROPSHIP_CHANNELS")
        .ok()
        .and_then(|value| value.trim().parse::<u32>().ok())
    {
        return forced.clamp(1, MAX_PARTS) as usize;
    }
    if round_trip < SLOW_LINK {
        return 1;
    }
    let entries = &release.manifest.entries;
    let bytes: u64 = match send {
        Some(send) => send
            .iter()
            .filter_map(|&i| entries.get(i as usize))
            .map(Entry::size)
            .sum(),
        None => entries.iter().map(Entry::size).sum(),
    };
    (bytes / BYTES_PER_PART).clamp(1, MAX_CHANNELS) as usize
}

/// The chunks one part's compressor writes, sent to the writer thread.
struct Chunks {
    part: usize,
    buffer: Vec<u8>,
    out: mpsc::SyncSender<(usize, Vec<u8>)>,
}

/// Bytes per chunk handed to the writer.
const CHUNK: usize = 128 * 1024;

impl Chunks {
    fn new(part: usize, out: mpsc::SyncSender<(usize, Vec<u8>)>) -> Self {
        Chunks {
            part,
            buffer: Vec::with_capacity(CHUNK),
            out,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.out
            .send((self.part, chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A running agent that said hello.
pub struct AgentConn {
    host: String,
    link: Box<dyn Link>,
    /// The channels that carried the other parts of the stream, closed for
    /// writing; reaped at the end, off the critical path.
    parts: Vec<Box<dyn Link>>,
    pending: Vec<u8>,
    sent: Arc<AtomicU64>,
}

impl AgentConn {
    /// Sends `request` (see [`encode_request`]) on `link` at once — no round trip
    /// to wait for the agent first — then reads the agent's hello.
    pub fn start(host: &str, link: Box<dyn Link>, request: &[u8]) -> Result<AgentConn> {
        let mut conn = AgentConn {
            host: host.to_owned(),
            link,
            parts: Vec::new(),
            pending: Vec::new(),
            sent: Arc::new(AtomicU64::new(0)),
        };
        // A failed write usually means the agent could not start: its exit says why.
        let written = conn
            .link
            .write_all(request)
            .and_then(|()| conn.link.flush());
        conn.sent.fetch_add(request.len() as u64, Ordering::Relaxed);
        match conn.event()? {
            Event::Hello { protocol, .. } if protocol == PROTOCOL_VERSION => match written {
                Ok(()) => Ok(conn),
                Err(err) => Err(conn.write_failed(&err)),
            },
            Event::Hello { version, protocol } => Err(Error::Ssh {
                host: conn.host.clone(),
                step: "starting the agent",
                message: format!(
                    "agent {version} speaks protocol {protocol}, this client {PROTOCOL_VERSION}"
                ),
            }),
            other => Err(conn.unexpected(&other)),
        }
    }

    /// Counts bytes spent installing the agent as sent on this connection.
    pub fn count_upload(&mut self, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Closes `link` at the end with the stream's parts (a channel that did its
    /// work, whose exit need not be waited for now: that costs a round trip).
    pub fn reap_later(&mut self, link: Box<dyn Link>) {
        self.parts.push(link);
    }

    /// The host this agent runs on.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Bytes written to the agent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Sends one JSON line.
    pub fn send(&mut self, message: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_vec(message).unwrap_or_default();
        line.push(b'\n');
        let result = self.link.write_all(&line).and_then(|()| self.link.flush());
        self.sent.fetch_add(line.len() as u64, Ordering::Relaxed);
        result.map_err(|err| self.write_failed(&err))
    }

    /// Streams the release; returns the compressed size. Only the files whose
    /// manifest index is in `send` go, when it is given. Large uploads over a
    /// slow link are split over several channels when the agent can `join` them.
    /// Progress is logged every few seconds while it runs (not per chunk).
    pub fn stream(
        &mut self,
        release: &Release,
        send: Option<&[u32]>,
        join: Option<&Join>,
    ) -> Result<u64> {
        let before = self.bytes_sent();
        let parts = match join {
            Some(_) => parts_for(release, send, self.link.round_trip()),
            None => 1,
        };
        self.send(&Command::Stream {
            parts: u32::try_from(parts).unwrap_or(1),
        })?;
        let selections = package::split(release, send, parts);
        let sent = Arc::clone(&self.sent);
        let done = std::sync::atomic::AtomicBool::new(false);
        let host = self.host.clone();
        let result = std::thread::scope(|scope| {
            scope.spawn(|| report_progress(&host, &sent, before, &done));
            let result = self.send_parts(release, &selections, join);
            done.store(true, Ordering::Relaxed);
            result
        });
        result?;
        Ok(self.bytes_sent() - before)
    }

    /// Compresses each part on its own thread; this thread writes the chunks to
    /// their channels as they come (one writer: libssh2 serialises a session, and
    /// a blocked write would otherwise hold up every channel).
    fn send_parts(
        &mut self,
        release: &Release,
        selections: &[Selection],
        join: Option<&Join>,
    ) -> Result<()> {
        let threads = package::compress_threads()
            .div_ceil(selections.len())
            .max(1);
        let (chunks, arriving) = mpsc::sync_channel::<(usize, Vec<u8>)>(4 * selections.len());
        let mut extra: Vec<Box<dyn Link>> = Vec::new();
        let written = std::thread::scope(|scope| {
            let producers: Vec<_> = selections
                .iter()
                .enumerate()
                .map(|(part, selection)| {
                    let out = Chunks::new(part, chunks.clone());
                    scope.spawn(move || {
                        package::write_archive(release, out, selection, threads)
                            .and_then(|mut out| out.flush())
                    })
                })
                .collect();
            drop(chunks);
            let written = self.write_chunks(arriving, join, &mut extra);
            let produced = producers.into_iter().map(|producer| {
                producer
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            });
            let produced: io::Result<Vec<()>> = produced.collect();
            written.and_then(|()| produced.map(drop).map_err(|err| self.write_failed(&err)))
        });
        // The agent answers `staged` once every part is in, so their channels
        // need not be waited for now: that would cost a round trip.
        for link in &mut extra {
            link.close_input();
        }
        self.parts.extend(extra);
        written
    }

    /// Writes each chunk to its part's channel, opening the channels of the other
    /// parts (into `extra`) when their first chunk comes.
    fn write_chunks(
        &mut self,
        arriving: mpsc::Receiver<(usize, Vec<u8>)>,
        join: Option<&Join>,
        extra: &mut Vec<Box<dyn Link>>,
    ) -> Result<()> {
        for (part, chunk) in arriving {
            let link: &mut dyn Link = match (part.checked_sub(1), join) {
                (None, _) => &mut *self.link,
                (Some(i), Some(join)) => {
                    while extra.len() <= i {
                        let mut link = self.link.open_part(&join.socket).map_err(|err| {
                            Error::ChannelRefused {
                                host: self.host.clone(),
                                message: err.to_string(),
                            }
                        })?;
                        let header = format!("{}\n", join.token);
                        link.write_all(header.as_bytes())
                            .map_err(|err| self.write_failed(&err))?;
                        self.sent.fetch_add(header.len() as u64, Ordering::Relaxed);
                        extra.push(link);
                    }
                    &mut *extra[i]
                }
                (Some(_), None) => continue,
            };
            let written = link.write_all(&chunk);
            self.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            written.map_err(|err| self.write_failed(&err))?;
        }
        Ok(())
    }

    /// Reads the next event; a `failed` event or an early exit becomes an error.
    pub fn event(&mut self) -> Result<Event> {
        // Bytes of `pending` already searched for a newline: each byte is looked at once.
        let mut scanned = 0;
        loop {
            if let Some(at) = self.pending[scanned..].iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=scanned + at).collect();
                return match serde_json::from_slice::<Event>(&line) {
                    Ok(Event::Failed(failure)) => Err(Error::Remote {
                        host: self.host.clone(),
                        failure,
                    }),
                    Ok(event) => {
                        tracing::debug!("{}: agent said {event:?}", self.host);
                        Ok(event)
                    }
                    Err(_) => {
                        Err(self.died(Some(String::from_utf8_lossy(&line).trim().to_owned())))
                    }
                };
            }
            scanned = self.pending.len();
            if scanned > MAX_EVENT_MIB << 20 {
                return Err(Error::NotAgentOutput {
                    host: self.host.clone(),
                    problem: format!("more than {MAX_EVENT_MIB} MiB without a newline"),
                });
            }
            let mut buf = [0u8; 8192];
            match self.link.read(&mut buf) {
                Ok(0) => return Err(self.died(None)),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    return Err(Error::Ssh {
                        host: self.host.clone(),
                        step: "reading from the agent",
                        message: err.to_string(),
                    });
                }
            }
        }
    }

    /// Closes the conversation and waits for the agent to exit.
    pub fn finish(mut self) -> Option<i32> {
        let status = self.link.finish().0;
        for mut part in self.parts.drain(..) {
            part.finish();
        }
        status
    }

    /// The error for an event that makes no sense at this point.
    pub fn unexpected(&self, event: &Event) -> Error {
        Error::Ssh {
            host: self.host.clone(),
            step: "talking to the agent",
            message: format!("unexpected answer {event:?}"),
        }
    }

    /// A write failed: the agent usually said why before it exited, so read that first.
    fn write_failed(&mut self, err: &io::Error) -> Error {
        match self.event() {
            Err(remote @ Error::Remote { .. }) => remote,
            _ => Error::Ssh {
                host: self.host.clone(),
                step: "sending to the agent",
                message: err.to_string(),
            },
        }
    }

    fn died(&mut self, garbage: Option<String>) -> Error {
        let (status, mut stderr) = self.link.finish();
        if let Some(line) = garbage {
            stderr = format!("{line}\n{stderr}");
        }
        let host = self.host.clone();
        let status = match status {
            Some(AGENT_MISSING) => {
                return Error::AgentMissing {
                    host,
                    report: stderr,
                };
            }
            Some(code) => format!("exit status {code}"),
            None => "killed, or the connection dropped".into(),
        };
        Error::AgentDied {
            host,
            status,
            stderr,
        }
    }
}
