//! The GitHub side of a run: workflow commands (masks, groups, annotations),
//! the `$GITHUB_OUTPUT` and `$GITHUB_STEP_SUMMARY` files, and the Deployments
//! API. Nothing here knows about SSH or servers.
//!
//! Workflow commands are printed only when `GITHUB_ACTIONS=true`: outside
//! Actions, `::add-mask::<secret>` would print the secret instead of hiding it.
//! Nothing GitHub does can fail a deploy: API problems become warnings.

// Outputs, the step summary and Deployments are wired into the deploy flow next;
// remove this then.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// Whether this process runs as a GitHub Actions step (`GITHUB_ACTIONS=true`).
pub fn is_actions() -> bool {
    std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true")
}

/// Asks the runner to hide `value` in the log: one `::add-mask::` per non-empty
/// line, so a multi-line secret (a private key) is hidden line by line.
/// Prints nothing outside Actions.
pub fn add_mask(value: &str) {
    if !is_actions() {
        return;
    }
    let mut stdout = io::stdout().lock();
    for command in mask_commands(value) {
        let _ = writeln!(stdout, "{command}");
    }
    let _ = stdout.flush();
}

fn mask_commands(value: &str) -> Vec<String> {
    value
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.trim().is_empty())
        .map(|line| format!("::add-mask::{}", escape_data(line)))
        .collect()
}

/// A collapsible group of log lines in Actions, closed when dropped (nothing elsewhere).
pub struct Group(bool);

impl Group {
    /// Opens a group titled `dropship: <title>`.
    pub fn new(title: &str) -> Group {
        let on = is_actions();
        if on {
            println!("::group::dropship: {}", escape_data(title));
        }
        Group(on)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.0 {
            println!("::endgroup::");
        }
    }
}

/// Prints an error annotation, shown on the run's summary page (Actions only).
pub fn error_annotation(title: &str, message: &str) {
    if is_actions() {
        println!("{}", annotation("error", title, message));
    }
}

/// Prints a warning annotation, shown on the run's summary page (Actions only).
pub fn warning_annotation(title: &str, message: &str) {
    if is_actions() {
        println!("{}", annotation("warning", title, message));
    }
}

fn annotation(kind: &str, title: &str, message: &str) -> String {
    format!(
        "::{kind} title={}::{}",
        escape_property(title),
        escape_data(message)
    )
}

/// Escapes a workflow command's message, as `@actions/core` does.
fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a workflow command's property value (`title=`), as `@actions/core` does.
fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// Appends `outputs` to the `$GITHUB_OUTPUT` file at `path`, each in the
/// multi-line-safe form `name<<DELIMITER\nvalue\nDELIMITER\n`, with a random
/// delimiter that occurs in neither the name nor the value.
pub fn write_outputs(path: &Path, outputs: &[(&str, String)]) -> io::Result<()> {
    let mut text = String::new();
    for (name, value) in outputs {
        let delimiter = loop {
            let candidate = format!("ghadelimiter_{}", random_hex());
            if !value.contains(&candidate) && !name.contains(&candidate) {
                break candidate;
            }
        };
        text.push_str(&format!("{name}<<{delimiter}\n{value}\n{delimiter}\n"));
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// 128 unpredictable-enough bits as hex, from the standard library's randomly keyed hasher.
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut halves = [0u64; 2];
    for half in &mut halves {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        *half = hasher.finish();
    }
    format!("{:016x}{:016x}", halves[0], halves[1])
}

/// GitHub refuses a step summary larger than this.
const SUMMARY_LIMIT: u64 = 1024 * 1024;

const SUMMARY_TRUNCATED: &str =
    "\n\n> **dropship:** summary truncated (GitHub keeps at most 1 MiB per step).\n";

/// Appends `markdown` to the `$GITHUB_STEP_SUMMARY` file at `path`, keeping the
/// file within GitHub's 1 MiB limit: what does not fit is cut (at a character
/// boundary) and replaced by a note.
pub fn append_summary(path: &Path, markdown: &str) -> io::Result<()> {
    let existing = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => 0,
        Err(err) => return Err(err),
    };
    let room = usize::try_from(SUMMARY_LIMIT.saturating_sub(existing)).unwrap_or(usize::MAX);
    let text = if markdown.len() <= room {
        markdown.to_string()
    } else if room > SUMMARY_TRUNCATED.len() {
        let mut cut = room - SUMMARY_TRUNCATED.len();
        while !markdown.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}{SUMMARY_TRUNCATED}", &markdown[..cut])
    } else {
        return Ok(());
    };
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// How long one GitHub API call may take, retries included.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// A GitHub deployment of this run's commit to one environment: created by
/// [`Deployments::start`], closed by [`Deployments::finish`]. Every API failure
/// becomes a warning (an annotation in Actions) and never fails the deploy.
pub struct Deployments {
    runtime: tokio::runtime::Runtime,
    client: octocrab::Octocrab,
    /// `owner/name`.
    repository: String,
    environment: String,
    log_url: Option<String>,
    id: Option<u64>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Deployments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployments")
            .field("repository", &self.repository)
            .field("environment", &self.environment)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Deployments {
    /// Deployments for `environment` of the repository in `GITHUB_REPOSITORY`,
    /// through `GITHUB_API_URL` (GitHub Enterprise) or `https://api.github.com`.
    /// `None`, and no request at all, when there is no token or no repository.
    pub fn from_env(token: Option<&str>, environment: &str) -> Option<Deployments> {
        Deployments::from_lookup(token, environment, &|name| std::env::var(name).ok())
    }

    /// [`Deployments::from_env`] with the variables read through `var` (for tests).
    pub fn from_lookup(
        token: Option<&str>,
        environment: &str,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Deployments> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let token = token.map(str::trim).filter(|t| !t.is_empty())?;
        let repository = var("GITHUB_REPOSITORY")?;
        let warn = |message: &str| emit_warning(message);
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            warn("`github-token` holds characters no token has; GitHub deployment skipped");
            return None;
        }
        if repository.split('/').count() != 2 || repository.split('/').any(str::is_empty) {
            warn("GITHUB_REPOSITORY is not `owner/name`; GitHub deployment skipped");
            return None;
        }
        let environment = Some(environment.trim())
            .filter(|e| !e.is_empty())
            .unwrap_or("production")
            .to_string();
        let api_url = var("GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".into());
        let log_url = match (var("GITHUB_SERVER_URL"), var("GITHUB_RUN_ID")) {
            (Some(server), Some(run)) => Some(format!(
                "{}/{repository}/actions/runs/{run}",
                server.trim_end_matches('/')
            )),
            _ => None,
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                warn(&format!(
                    "GitHub deployment skipped: cannot start the runtime: {err}"
                ));
                return None;
            }
        };
        let client = {
            let _context = runtime.enter();
            octocrab::Octocrab::builder()
                .personal_token(token.to_string())
                .set_connect_timeout(Some(API_TIMEOUT))
                .set_read_timeout(Some(API_TIMEOUT))
                .set_write_timeout(Some(API_TIMEOUT))
                .add_retry_config(octocrab::service::middleware::retry::RetryConfig::Simple(2))
                .base_uri(api_url.trim_end_matches('/'))
                .and_then(|builder| builder.build())
        };
        let client = match client {
            Ok(client) => client,
            Err(err) => {
                warn(&format!(
                    "GitHub deployment skipped: cannot use the API at `{api_url}`: {}",
                    describe(&err)
                ));
                return None;
            }
        };
        Some(Deployments {
            runtime,
            client,
            repository,
            environment,
            log_url,
            id: None,
            warnings: Vec::new(),
        })
    }

    /// Creates the deployment of commit `sha` (`GITHUB_SHA`) and marks it
    /// `in_progress`; returns its id, or `None` (after a warning) when GitHub refused.
    pub fn start(&mut self, sha: &str) -> Option<u64> {
        let sha = sha.trim();
        if sha.is_empty() {
            self.warn("GitHub deployment skipped: no commit sha (GITHUB_SHA is empty)".into());
            return None;
        }
        let body = json!({
            "ref": sha,
            "environment": self.environment,
            "auto_merge": false,
            "required_contexts": [],
            "description": "dropship",
        });
        let route = format!("/repos/{}/deployments", self.repository);
        let response = match self.post(&route, &body) {
            Ok(response) => response,
            Err(problem) => {
                self.warn(format!(
                    "could not create the GitHub deployment for `{}`: {problem}",
                    self.environment
                ));
                return None;
            }
        };
        let Some(id) = response.get("id").and_then(Value::as_u64) else {
            // 202 with a message: GitHub merged or declined instead of deploying.
            let message = response
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the response has no deployment id");
            self.warn(format!("GitHub did not create a deployment: {message}"));
            return None;
        };
        self.id = Some(id);
        self.status(id, "in_progress", None);
        Some(id)
    }

    /// Sets the deployment's final status, `success` or `failure`, with
    /// `environment_url` when given. Does nothing when [`Deployments::start`] did not create one.
    pub fn finish(&mut self, success: bool, environment_url: Option<&str>) {
        if let Some(id) = self.id {
            let state = if success { "success" } else { "failure" };
            self.status(id, state, environment_url);
        }
    }

    /// The id of the deployment created by [`Deployments::start`].
    #[cfg(test)]
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// The warnings issued so far (each was also printed).
    #[cfg(test)]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn status(&mut self, id: u64, state: &str, environment_url: Option<&str>) {
        let mut body = json!({ "state": state });
        if let Some(log_url) = &self.log_url {
            body["log_url"] = json!(log_url);
        }
        if let Some(url) = environment_url.map(str::trim).filter(|u| !u.is_empty()) {
            body["environment_url"] = json!(url);
        }
        let route = format!("/repos/{}/deployments/{id}/statuses", self.repository);
        if let Err(problem) = self.post(&route, &body) {
            self.warn(format!(
                "could not set GitHub deployment {id} to `{state}`: {problem}"
            ));
        }
    }

    /// POSTs `body` to `route`; the JSON answer, or what went wrong.
    fn post(&self, route: &str, body: &Value) -> Result<Value, String> {
        let call = self.client.post::<_, Value>(route, Some(body));
        match self
            .runtime
            .block_on(async { tokio::time::timeout(API_TIMEOUT, call).await })
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(describe(&err)),
            Err(_) => Err(format!(
                "no answer within {} seconds",
                API_TIMEOUT.as_secs()
            )),
        }
    }

    fn warn(&mut self, message: String) {
        emit_warning(&message);
        self.warnings.push(message);
    }
}

fn emit_warning(message: &str) {
    if is_actions() {
        warning_annotation("GitHub deployment", message);
    } else {
        tracing::warn!("{message}");
    }
}

/// An octocrab error in one line: GitHub's status and message, or the transport failure.
fn describe(err: &octocrab::Error) -> String {
    if let octocrab::Error::GitHub { source, .. } = err {
        return format!("HTTP {}: {}", source.status_code.as_u16(), source.message);
    }
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    #[test]
    fn masks_every_non_empty_line() {
        let key = "-----BEGIN KEY-----\r\nab%cd\r\n\r\n   \n-----END KEY-----\n";
        assert_eq!(
            mask_commands(key),
            [
                "::add-mask::-----BEGIN KEY-----",
                "::add-mask::ab%25cd",
                "::add-mask::-----END KEY-----"
            ]
        );
        assert!(mask_commands("").is_empty());
    }

    #[test]
    fn annotations_escape_data_and_properties() {
        assert_eq!(
            annotation("error", "dropship: a, b", "50% done\r\nnext line"),
            "::error title=dropship%3A a%2C b::50%25 done%0D%0Anext line"
        );
        assert_eq!(
            annotation("warning", "t", "a: b, c"),
            "::warning title=t::a: b, c"
        );
    }

    #[test]
    fn outputs_use_a_delimiter_absent_from_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output");
        std::fs::write(&path, "earlier=1\n").unwrap();
        let outputs = [
            ("release", "20260101000000-abc1234".to_string()),
            ("hosts", "a\nghadelimiter_x\nb".to_string()),
        ];
        write_outputs(&path, &outputs).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("earlier=1"));
        for (name, value) in outputs {
            let header = lines.next().unwrap();
            let (got_name, delimiter) = header.split_once("<<").unwrap();
            assert_eq!(got_name, name);
            assert!(delimiter.starts_with("ghadelimiter_") && delimiter.len() > 20);
            assert!(!value.contains(delimiter));
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != delimiter).collect();
            assert_eq!(body.join("\n"), value);
        }
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn summary_stays_under_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary");
        append_summary(&path, "# Deployed\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# Deployed\n");
        let big = "é".repeat(SUMMARY_LIMIT as usize);
        append_summary(&path, &big).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() as u64 <= SUMMARY_LIMIT, "{}", text.len());
        assert!(text.len() as u64 > SUMMARY_LIMIT - 4);
        assert!(text.starts_with("# Deployed\né"));
        assert!(text.ends_with(SUMMARY_TRUNCATED));
        // Full: nothing more is written.
        append_summary(&path, "more").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    /// One request as the fake API saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        authorization: Option<String>,
        body: Value,
    }

    /// A tiny HTTP/1.1 server on 127.0.0.1 that records requests and answers
    /// each with `respond(method, path)` = (status, JSON body).
    struct FakeApi {
        url: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl FakeApi {
        fn start(respond: fn(&str, &str) -> (u16, Value)) -> FakeApi {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = Arc::clone(&seen);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { break };
                    let record = Arc::clone(&record);
                    std::thread::spawn(move || serve(stream, respond, &record));
                }
            });
            FakeApi { url, seen }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        fn vars(&self, path: &str) -> impl Fn(&str) -> Option<String> + use<> {
            let vars: HashMap<&str, String> = [
                ("GITHUB_REPOSITORY", "o/r".to_string()),
                ("GITHUB_API_URL", format!("{}{path}", self.url)),
                ("GITHUB_SERVER_URL", "https://github.example".to_string()),
                ("GITHUB_RUN_ID", "7".to_string()),
            ]
            .into_iter()
            .collect();
            move |name| vars.get(name).cloned()
        }
    }

    fn serve(
        stream: std::net::TcpStream,
        respond: fn(&str, &str) -> (u16, Value),
        record: &Mutex<Vec<Seen>>,
    ) {
        let mut reader = BufReader::new(stream);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        record.lock().unwrap().push(Seen {
            method: method.clone(),
            path: path.clone(),
            authorization: headers.get("authorization").cloned(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        let (status, answer) = respond(&method, &path);
        let answer = answer.to_string();
        let mut stream = reader.into_inner();
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        );
    }

    fn github(method: &str, path: &str) -> (u16, Value) {
        match (method, path) {
            ("POST", p) if p.ends_with("/deployments") => (201, json!({ "id": 42 })),
            ("POST", p) if p.ends_with("/statuses") => (201, json!({ "id": 1 })),
            _ => (404, json!({ "message": "Not Found" })),
        }
    }

    #[test]
    fn creates_the_deployment_and_its_statuses() {
        let api = FakeApi::start(github);
        let vars = api.vars("");
        let mut deployments = Deployments::from_lookup(Some("t0ken"), "production", &vars).unwrap();
        assert_eq!(deployments.start("abc123"), Some(42));
        deployments.finish(true, Some("https://example.com"));
        assert_eq!(deployments.id(), Some(42));
        assert!(
            deployments.warnings().is_empty(),
            "{:?}",
            deployments.warnings()
        );

        let seen = api.seen();
        let log_url = "https://github.example/o/r/actions/runs/7";
        let summary: Vec<(&str, &str, Option<&str>)> = seen
            .iter()
            .map(|s| {
                (
                    s.method.as_str(),
                    s.path.as_str(),
                    s.authorization.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("POST", "/repos/o/r/deployments", Some("Bearer t0ken")),
                (
                    "POST",
                    "/repos/o/r/deployments/42/statuses",
                    Some("Bearer t0ken")
                ),
                (
                    "POST",
                    "/repos/o/r/deployments/42/statuses",
                    Some("Bearer t0ken")
                ),
            ]
        );
        assert_eq!(
            seen[0].body,
            json!({
                "ref": "abc123",
                "environment": "production",
                "auto_merge": false,
                "required_contexts": [],
                "description": "dropship",
            })
        );
        assert_eq!(
            seen[1].body,
            json!({ "state": "in_progress", "log_url": log_url })
        );
        assert_eq!(
            seen[2].body,
            json!({
                "state": "success",
                "log_url": log_url,
                "environment_url": "https://example.com",
            })
        );
    }

    #[test]
    fn failure_status_and_enterprise_api_path() {
        let api = FakeApi::start(github);
        let vars = api.vars("/api/v3/");
        let mut deployments = Deployments::from_lookup(Some("t"), "staging", &vars).unwrap();
        assert_eq!(deployments.start("abc"), Some(42));
        deployments.finish(false, None);
        let seen = api.seen();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].path, "/api/v3/repos/o/r/deployments");
        assert_eq!(seen[0].body["environment"], "staging");
        assert_eq!(seen[2].path, "/api/v3/repos/o/r/deployments/42/statuses");
        assert_eq!(seen[2].body["state"], "failure");
        assert!(seen[2].body.get("environment_url").is_none());
    }

    #[test]
    fn a_server_error_is_a_warning_not_a_failure() {
        let api = FakeApi::start(|_, _| (500, json!({ "message": "boom" })));
        let vars = api.vars("");
        let mut deployments = Deployments::from_lookup(Some("t"), "production", &vars).unwrap();
        assert_eq!(deployments.start("abc"), None);
        deployments.finish(true, Some("https://example.com"));
        assert_eq!(deployments.id(), None);
        let warnings = deployments.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("HTTP 500: boom"), "{warnings:?}");
        // Retried, then given up; `finish` sent nothing without a deployment.
        let seen = api.seen();
        assert!(!seen.is_empty() && seen.len() <= 3, "{seen:?}");
        assert!(seen.iter().all(|s| s.path == "/repos/o/r/deployments"));
    }

    #[test]
    fn an_unreachable_api_is_a_warning() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let vars = move |name: &str| match name {
            "GITHUB_REPOSITORY" => Some("o/r".to_string()),
            "GITHUB_API_URL" => Some(url.clone()),
            _ => None,
        };
        let mut deployments = Deployments::from_lookup(Some("t"), "production", &vars).unwrap();
        assert_eq!(deployments.start("abc"), None);
        assert_eq!(deployments.warnings().len(), 1);
    }

    #[test]
    fn no_token_or_no_repository_means_no_request() {
        let api = FakeApi::start(github);
        let vars = api.vars("");
        assert!(Deployments::from_lookup(None, "production", &vars).is_none());
        assert!(Deployments::from_lookup(Some("  "), "production", &vars).is_none());
        let no_repo = |name: &str| (name != "GITHUB_REPOSITORY").then(|| vars(name)).flatten();
        assert!(Deployments::from_lookup(Some("t"), "production", &no_repo).is_none());
        assert!(Deployments::from_lookup(Some("t\nx"), "production", &vars).is_none());
        assert!(api.seen().is_empty());
    }
}
