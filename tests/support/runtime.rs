//! The real runtime parts for activation tests: a private PM2 daemon, a private
//! nginx on loopback, small Node apps, and a load generator that counts failed
//! requests. Everything is stopped by PID when dropped.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private `PM2_HOME`; its daemon (and every app it runs) is killed on drop.
pub struct Pm2Home {
    dir: tempfile::TempDir,
}

impl Pm2Home {
    pub fn new() -> Pm2Home {
        Pm2Home {
            dir: tempfile::Builder::new()
                .prefix("dropship-pm2-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_str(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// `pm2 jlist` names with their status.
    pub fn processes(&self) -> Vec<(String, String)> {
        let out = Command::new("pm2")
            .arg("jlist")
            .env("PM2_HOME", self.path())
            .output()
            .unwrap();
        // The JSON line, past the banner an out-of-date daemon adds.
        let list: serde_json::Value = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| serde_json::from_str(line).ok())
            .unwrap_or_default();
        list.as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap_or("").to_owned(),
                            p["pm2_env"]["status"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Pm2Home {
    fn drop(&mut self) {
        let _ = Command::new("pm2")
            .arg("kill")
            .env("PM2_HOME", self.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let pid = fs::read_to_string(self.path().join("pm2.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            // SAFETY: plain kill(2) on a PID this test's daemon wrote.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A private nginx on 127.0.0.1 (or on port 80 of a network namespace) proxying to
/// the upstream `app` defined in `upstream`.
pub struct Nginx {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    child: Child,
    /// Where it answers from the root namespace.
    pub addr: SocketAddr,
    pub port: u16,
    pub upstream: PathBuf,
}

impl Nginx {
    /// Starts nginx with `upstream` (which must exist) included in its `http` context.
    pub fn start(app: &str, upstream: &Path) -> Nginx {
        let temp = tempfile::Builder::new()
            .prefix("dropship-nginx-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        Nginx::launch(
            None,
            temp.path().to_owned(),
            Some(temp),
            addr,
            &addr.to_string(),
            app,
            upstream,
        )
    }

    /// Starts nginx in network namespace `netns` (`ip netns exec`, which execs nginx:
    /// the child's PID is the master's), listening on `0.0.0.0:80` there and reached
    /// from the root namespace at `ip:80`; its config, pid file and logs go in `dir`.
    pub fn start_in_netns(
        netns: &str,
        ip: Ipv4Addr,
        dir: &Path,
        app: &str,
        upstream: &Path,
    ) -> Nginx {
        fs::create_dir_all(dir).unwrap();
        let addr = SocketAddr::from((ip, 80));
        Nginx::launch(
            Some(netns),
            dir.to_owned(),
            None,
            addr,
            "0.0.0.0:80",
            app,
            upstream,
        )
    }

    fn launch(
        netns: Option<&str>,
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        addr: SocketAddr,
        listen: &str,
        app: &str,
        upstream: &Path,
    ) -> Nginx {
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 512; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  include {};\n  server {{\n    listen {listen};\n    location / {{ proxy_pass http://{app}; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
            upstream.display()
        );
        fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, "nginx"]);
                command
            }
            None => Command::new("nginx"),
        };
        let child = command
            .args(["-p"])
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (is the nginx package installed?)");
        let nginx = Nginx {
            dir,
            _temp: temp,
            child,
            addr,
            port: addr.port(),
            upstream: upstream.to_owned(),
        };
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx did not start: {}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }

    /// The command that reloads this nginx gracefully.
    pub fn reload_command(&self) -> String {
        reload_command(&self.dir)
    }

    /// The directory of its config, pid file and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The PID of the master process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none()
            && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a Node app built for a test does.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// Answers 200 with its variant and `$GREETING`.
    Healthy,
    /// Prints a line and exits at once.
    Crashes,
    /// Listens, but answers 500.
    Unhealthy,
}

/// Writes an app directory whose `.next/standalone/server.js` behaves as asked.
pub fn node_app(root: &Path, variant: &str, behaviour: Behaviour) -> PathBuf {
    let app = root.join(format!("app-{variant}"));
    let standalone = app.join(".next/standalone");
    fs::create_dir_all(&standalone).unwrap();
    fs::create_dir_all(app.join("public")).unwrap();
    fs::write(app.join("public/robots.txt"), "User-agent: *\n").unwrap();
    let body = match behaviour {
        Behaviour::Healthy => format!(
            "const http = require('http');\nconst server = http.createServer((req, res) => {{ res.writeHead(200, {{'content-type': 'text/plain'}}); res.end('{variant} ' + (process.env.GREETING || '') + ' ' + process.env.HOSTNAME + '\\n'); }});\nserver.keepAliveTimeout = 65000;\nserver.listen(Number(process.env.PORT), process.env.HOSTNAME, () => console.log('listening on ' + process.env.PORT));\nprocess.on('SIGTERM', () => process.exit(0));\n"
        ),
        Behaviour::Crashes => "console.error('boom: cannot find module ./missing-chunk.js');\nprocess.exit(1);\n".to_owned(),
        Behaviour::Unhealthy => "const http = require('http');\nhttp.createServer((req, res) => { res.writeHead(500); res.end('database unreachable'); }).listen(Number(process.env.PORT), process.env.HOSTNAME, () => console.error('listening, but the database is unreachable'));\n".to_owned(),
    };
    fs::write(standalone.join("server.js"), body).unwrap();
    app
}

/// The command that reloads the nginx whose `nginx.conf` is in `dir` gracefully.
pub fn reload_command(dir: &Path) -> String {
    let d = dir.display();
    format!("nginx -p {d} -c {d}/nginx.conf -s reload")
}

/// One HTTP GET through a fresh connection; the body, or why it failed.
pub fn get(port: u16) -> Result<String, String> {
    get_from(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), "/")
}

/// One HTTP GET of `path` from `addr` through a fresh connection; the body of a 200,
/// or the status line (or why there was none).
pub fn get_from(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    if response.starts_with("HTTP/1.1 200") {
        Ok(response
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
            .to_owned())
    } else {
        Err(response
            .lines()
            .next()
            .unwrap_or("empty response")
            .to_owned())
    }
}

/// Threads sending requests to `port` without pause until stopped (at most `limit`).
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    pub fn start(port: u16, threads: usize, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                        match get(port) {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(err) => {
                                if errors.len() < 5 {
                                    errors.push(err);
                                }
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    errors
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops the threads; returns (succeeded, failed, sample errors).
    pub fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}
