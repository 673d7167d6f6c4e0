//! A TCP proxy on 127.0.0.1 in front of a server (the test sshd), for fault
//! injection: it forwards bytes both ways, counts them, and can be told to cut
//! the connection after N bytes from client to server, or at once.
//!
//! A cut is abrupt: both sockets get `SO_LINGER 0` and are shut down, so each
//! side sees the connection die (RST) without any goodbye at the SSH level.
//! Only threads run here; they all end when the proxy is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// No limit on the bytes forwarded.
const UNLIMITED: u64 = u64::MAX;

/// A running proxy; stopped (threads joined, sockets closed) when dropped.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    stop: AtomicBool,
    /// Client→server bytes a connection may forward before it is cut.
    limit: AtomicU64,
    /// Client→server bytes forwarded on the latest connection.
    up: AtomicU64,
    /// Server→client bytes forwarded on the latest connection.
    down: AtomicU64,
    /// Connections cut by a limit or [`Proxy::cut`].
    cuts: AtomicU64,
    /// Every open connection: (id, client side, server side).
    open: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    next_id: AtomicU64,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

impl Proxy {
    /// Listens on a random port of 127.0.0.1 and forwards to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking proxy listener");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            stop: AtomicBool::new(false),
            limit: AtomicU64::new(UNLIMITED),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            pumps: Mutex::new(Vec::new()),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || accept_loop(&listener, &shared))
        };
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts every connection made from now on after `bytes` client→server bytes.
    pub fn cut_after(&self, bytes: u64) {
        self.shared.limit.store(bytes, Ordering::SeqCst);
    }

    /// Forwards everything again (for connections made from now on).
    pub fn unlimited(&self) {
        self.shared.limit.store(UNLIMITED, Ordering::SeqCst);
    }

    /// Cuts every open connection now.
    pub fn cut(&self) {
        self.shared.cut_all();
    }

    /// Client→server bytes forwarded on the latest connection.
    pub fn bytes_up(&self) -> u64 {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Server→client bytes forwarded on the latest connection.
    pub fn bytes_down(&self) -> u64 {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// How many connections were cut so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        self.shared.cut_all();
        let pumps: Vec<_> = self.shared.pumps.lock().unwrap().drain(..).collect();
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

impl Shared {
    /// One pump of connection `id` ended; the last one forgets the connection.
    fn ended(&self, id: u64, alive: &AtomicU64) {
        if alive.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.open.lock().unwrap().retain(|(open, _, _)| *open != id);
        }
    }

    fn cut_all(&self) {
        let open: Vec<_> = self.open.lock().unwrap().drain(..).collect();
        if !open.is_empty() {
            self.cuts.fetch_add(open.len() as u64, Ordering::SeqCst);
        }
        for (_, client, server) in open {
            abort(&client);
            abort(&server);
        }
    }
}

/// Makes the socket reset (not close politely) and wakes every thread blocked on it.
fn abort(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized `linger`.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5))
        else {
            abort(&client);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        shared.up.store(0, Ordering::SeqCst);
        shared.down.store(0, Ordering::SeqCst);
        let (Ok(c1), Ok(c2), Ok(s1), Ok(s2)) = (
            client.try_clone(),
            client.try_clone(),
            server.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        shared.open.lock().unwrap().push((id, client, server));
        let limit = shared.limit.load(Ordering::SeqCst);
        let alive = Arc::new(AtomicU64::new(2));
        let up = {
            let (shared, alive) = (Arc::clone(shared), Arc::clone(&alive));
            thread::spawn(move || {
                pump(c1, s1, &shared, Some(limit));
                shared.ended(id, &alive);
            })
        };
        let down = {
            let shared = Arc::clone(shared);
            thread::spawn(move || {
                pump(s2, c2, &shared, None);
                shared.ended(id, &alive);
            })
        };
        shared.pumps.lock().unwrap().extend([up, down]);
    }
}

/// Copies `from` to `to`; `limit` is set on the client→server direction only.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, limit: Option<u64>) {
    let counter = if limit.is_some() {
        &shared.up
    } else {
        &shared.down
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut allowed = n;
        if let Some(limit) = limit {
            let sent = counter.load(Ordering::SeqCst);
            allowed = usize::try_from(limit.saturating_sub(sent)).map_or(n, |left| left.min(n));
        }
        if allowed > 0 && to.write_all(&buf[..allowed]).is_err() {
            break;
        }
        counter.fetch_add(allowed as u64, Ordering::SeqCst);
        if allowed < n {
            // The limit is reached: cut this connection (and any other still open).
            shared.cut_all();
            return;
        }
    }
    // One side closed: pass the half-close on, as a plain TCP relay would.
    let _ = to.shutdown(Shutdown::Write);
}
