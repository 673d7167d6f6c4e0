//! moto's server (the AWS API emulator) on 127.0.0.1 for the EC2 fleet tests, with
//! an ELBv2 health checker that really GETs the fleet's hosts and a deregistration
//! delay that really delays (tests/support/moto_server.py says what is emulated), and
//! the harness's own AWS client (tests/support/moto_client.py, boto3) to seed it and
//! to read what a deploy did. Stopped by PID when dropped.
//!
//! Needs `python3` with `moto[server]==5.2.1` (bin/test installs it as root).
//! The harness's own requests carry `dropship-harness` in their User-Agent so that
//! [`Moto::recorded_calls`] can leave them out.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use super::netns::NetFleet;
use crate::test::Test;

/// The region everything is seeded in (and `AWS_REGION` of [`Moto::env`]).
pub const REGION: &str = "eu-west-1";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running moto server; SIGTERMed (then SIGKILLed) by PID when dropped.
pub struct Moto {
    child: Child,
    port: u16,
    dir: TempDir,
    /// The harness's credentials once [`Moto::enforce_iam`] made them necessary.
    harness_keys: Mutex<Option<(String, String)>>,
}

/// What [`Moto::seed`] created.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub vpc_id: String,
    pub subnet_id: String,
    pub security_group_id: String,
    /// One running instance per host, in host order (`PrivateIpAddress` = its IP).
    pub instance_ids: Vec<String>,
    /// A stopped instance with the same tags, at `10.<n>.0.200`.
    pub stopped_instance_id: String,
    /// HTTP on port 80, health check `/`, every running instance registered.
    pub target_group_arn: String,
}

impl Moto {
    /// Starts moto's server on a free port of 127.0.0.1 (the server binds port 0
    /// and says which it got), with `MOTO_ENABLE_RECORDING=True`.
    pub fn start() -> Moto {
        let dir = tempfile::Builder::new()
            .prefix("dropship-moto-")
            .tempdir()
            .expect("create moto's temp dir");
        let log = fs::File::create(dir.path().join("moto.log")).expect("create moto.log");
        let mut child = Command::new("python3")
            .arg(support_file("moto_server.py"))
            .arg("0")
            .current_dir(dir.path())
            .env("MOTO_ENABLE_RECORDING", "True")
            .env("MOTO_RECORDER_FILEPATH", dir.path().join("recording.jsonl"))
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start python3 (is python3 installed?)");
        let stdout = child.stdout.take().expect("moto's stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep reading so that a late print never blocks the server.
            for _ in lines {}
        });
        let started = Instant::now();
        let line = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => break line,
                Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() < START_TIMEOUT => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "moto's server exited with {status} (is moto[server] installed? \
                             python3 -m pip install 'moto[server]==5.2.1'):\n{}",
                            fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default()
                        );
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "moto's server did not start within {START_TIMEOUT:?}:\n{}",
                        fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default()
                    );
                }
            }
        };
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("odd first line from moto_server.py: {line:?}"));
        let moto = Moto {
            child,
            port,
            dir,
            harness_keys: Mutex::new(None),
        };
        // It printed once bound; make sure it answers before anyone relies on it.
        let answered = Instant::now();
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                answered.elapsed() < Duration::from_secs(20),
                "moto's server does not answer:\n{}",
                moto.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>` (`AWS_ENDPOINT_URL`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment of a dropship run against this server: `AWS_ENDPOINT_URL`,
    /// the `testing` keys (refused once [`Moto::enforce_iam`] ran: pass the keys it
    /// returned instead), `AWS_REGION` and `AWS_DEFAULT_REGION`.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_DEFAULT_REGION", REGION.into()),
            // No instance metadata service to wait for, no profile of the machine's.
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
        ]
    }

    /// `test` with [`Moto::env`], and the credentials `keys` (access key id, secret)
    /// instead of the `testing` ones when given (after [`Moto::enforce_iam`]).
    pub fn env_for(&self, mut test: Test, keys: Option<&(String, String)>) -> Test {
        for (name, value) in self.env() {
            let value = match (name, keys) {
                ("AWS_ACCESS_KEY_ID", Some((key, _))) => key.clone(),
                ("AWS_SECRET_ACCESS_KEY", Some((_, secret))) => secret.clone(),
                _ => value,
            };
            test = test.env(name, &value);
        }
        test
    }

    /// The server's log so far (requests, tracebacks).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Runs a moto_client.py command with the harness's credentials; its JSON answer.
    #[track_caller]
    fn client(&self, command: &str, mut args: Value) -> Value {
        if let Some((key, secret)) = self.harness_keys.lock().unwrap().clone() {
            args["access_key_id"] = key.into();
            args["secret_access_key"] = secret.into();
        }
        let out = Command::new("python3")
            .arg(support_file("moto_client.py"))
            .arg(command)
            .arg(args.to_string())
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .expect("run python3 moto_client.py");
        assert!(
            out.status.success(),
            "moto_client.py {command} failed ({}):\n{}\n--- moto log (tail)\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 30)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "moto_client.py {command} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Seeds a VPC `10.<subnet>.0.0/16`, its subnet `10.<subnet>.0.0/24`, a security
    /// group, one running instance per IP of `hosts` (in order) and a stopped one at
    /// `.200`, all tagged `tags` (`aws:` keys included), and an HTTP:80 target group
    /// with the running instances registered and the given deregistration delay.
    #[track_caller]
    pub fn seed(
        &self,
        subnet: u8,
        hosts: &[Ipv4Addr],
        tags: &[(&str, &str)],
        deregistration_delay_secs: u32,
    ) -> Seeded {
        let tags: serde_json::Map<String, Value> = tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        let out = self.client(
            "seed",
            json!({
                "subnet": subnet,
                "hosts": hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "stopped_ip": format!("10.{subnet}.0.200"),
                "tags": tags,
                "deregistration_delay": deregistration_delay_secs,
                "port": 80,
                "health_path": "/",
            }),
        );
        let text = |key: &str| out[key].as_str().unwrap_or_default().to_owned();
        Seeded {
            vpc_id: text("vpc_id"),
            subnet_id: text("subnet_id"),
            security_group_id: text("security_group_id"),
            instance_ids: out["instance_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            stopped_instance_id: text("stopped_instance_id"),
            target_group_arn: text("target_group_arn"),
        }
    }

    /// [`Moto::seed`] with the fleet's subnet and hosts.
    #[track_caller]
    pub fn seed_fleet(
        &self,
        fleet: &NetFleet,
        tags: &[(&str, &str)],
        deregistration_delay_secs: u32,
    ) -> Seeded {
        let ips: Vec<Ipv4Addr> = fleet.hosts().iter().map(|h| h.ip()).collect();
        self.seed(fleet.subnet(), &ips, tags, deregistration_delay_secs)
    }

    /// Empties moto's recording (the seeding is in it) and records from now on.
    pub fn start_recording(&self) {
        for path in [
            "/moto-api/recorder/reset-recording",
            "/moto-api/recorder/start-recording",
        ] {
            post(self.port, path, "");
        }
    }

    /// The actions recorded since [`Moto::start_recording`], in order
    /// (`DescribeInstances`, `DeregisterTargets`, …), without the harness's own.
    #[track_caller]
    pub fn recorded_calls(&self) -> Vec<String> {
        strings(&self.client("recorded_calls", json!({})))
    }

    /// DescribeTargetHealth of every target (draining ones too): (id, state).
    #[track_caller]
    pub fn target_states(&self, target_group_arn: &str) -> Vec<(String, String)> {
        self.target_health(target_group_arn)
            .into_iter()
            .map(|(id, state, _)| (id, state))
            .collect()
    }

    /// Like [`Moto::target_states`], with the reason (`Target.Timeout`, …).
    #[track_caller]
    pub fn target_health(&self, target_group_arn: &str) -> Vec<(String, String, Option<String>)> {
        let out = self.client(
            "target_states",
            json!({ "target_group_arn": target_group_arn }),
        );
        out.as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                (
                    row[0].as_str().unwrap_or_default().to_owned(),
                    row[1].as_str().unwrap_or_default().to_owned(),
                    row[2].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    /// The security group's IPv4 ingress rules: (cidr, from port, description).
    #[track_caller]
    pub fn ingress_rules(&self, group_id: &str) -> Vec<(String, i64, String)> {
        let out = self.client("ingress_rules", json!({ "group_id": group_id }));
        out.as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                (
                    row[0].as_str().unwrap_or_default().to_owned(),
                    row[1].as_i64().unwrap_or(-1),
                    row[2].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    #[track_caller]
    pub fn stop_instance(&self, instance_id: &str) {
        self.client("stop_instance", json!({ "instance_id": instance_id }));
    }

    /// Any boto3 call as the harness, e.g. `("elbv2", "deregister_targets", {...})`:
    /// the response, or the error's (code, message).
    #[track_caller]
    pub fn call(
        &self,
        service: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, (String, String)> {
        let out = self.client(
            "call",
            json!({ "service": service, "method": method, "params": params }),
        );
        call_result(out)
    }

    /// Like [`Moto::call`], with the credentials `keys` (access key id, secret), as
    /// another program would call (so [`Moto::recorded_calls`] keeps it).
    #[track_caller]
    pub fn call_as(
        &self,
        keys: &(String, String),
        service: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, (String, String)> {
        let out = Command::new("python3")
            .arg(support_file("moto_client.py"))
            .arg("call")
            .arg(
                json!({
                    "service": service, "method": method, "params": params,
                    "access_key_id": keys.0, "secret_access_key": keys.1, "foreign": true,
                })
                .to_string(),
            )
            .envs(self.env())
            .output()
            .expect("run python3 moto_client.py");
        assert!(
            out.status.success(),
            "moto_client.py call failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        call_result(serde_json::from_slice(&out.stdout).expect("moto_client.py prints JSON"))
    }

    /// Creates an IAM user with `policy` (a JSON policy document) inline and returns
    /// its (access key id, secret), then turns moto's IAM enforcement on: every later
    /// request needs an IAM user's keys, and one its policies do not allow gets
    /// `AccessDenied` ("User: arn:… is not authorized to perform: ec2:…"). The harness
    /// goes on with an admin user of its own.
    #[track_caller]
    pub fn enforce_iam(&self, policy: &str) -> (String, String) {
        let out = self.client("enforce_iam", json!({ "policy": policy }));
        let pair = |key: &str| {
            (
                out[key][0].as_str().unwrap_or_default().to_owned(),
                out[key][1].as_str().unwrap_or_default().to_owned(),
            )
        };
        *self.harness_keys.lock().unwrap() = Some(pair("harness"));
        pair("deploy")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        super::process::signal(self.child.id(), libc::SIGTERM);
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

fn support_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(name)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn call_result(out: Value) -> Result<Value, (String, String)> {
    if let Some(error) = out.get("error") {
        return Err((
            error["code"].as_str().unwrap_or_default().to_owned(),
            error["message"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    Ok(out["ok"].clone())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A bodyless POST to moto's own API (moto_api is not subject to IAM).
#[track_caller]
fn post(port: u16, path: &str, body: &str) {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect to moto");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: dropship-harness\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send to moto");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "POST {path}: {}",
        answer.lines().next().unwrap_or("no answer")
    );
}
