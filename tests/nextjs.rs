//! The slow end-to-end tier: the real Next.js fixture apps of `tests/apps`
//! (14, 15 and 16 with npm, one with pnpm, one npm-workspaces monorepo), each
//! built once per run by `support::nextapp`, deployed over SSH blue-green under
//! PM2 behind nginx, and checked as a user would: the pages, the ISR page
//! regenerating, the API route, an image through the optimizer, `public/`
//! files and every static chunk, the lazily loaded one included.
//!
//! Per fixture it prints the figures of the closing note: files, MB, first
//! deploy and redeploy time and bytes sent (not asserted).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use walkdir::WalkDir;

use crate::support::nextapp;
use crate::support::runtime::{Nginx, Pm2Home, free_port};
use crate::support::sshd::Sshd;
use crate::support::{fixture, tree};
use crate::test::{Output, Test, assert_contains, ssh_args};

/// The optimized image every fixture's `/photo` page shows (`public/images/gradient.png`).
const IMAGE: &str = "/images/gradient.png";

/// One HTTP response.
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value of header `name` (lower case), or "".
    fn header(&self, name: &str) -> String {
        self.head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
            .unwrap_or_default()
    }
}

/// GET `path` through nginx on 127.0.0.1:`port`, as a browser that takes WebP.
fn get(port: u16, path: &str) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: www.example.com\r\nAccept: image/avif,image/webp,*/*\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let body = response.get(split + 4..).unwrap_or_default().to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Response { status, head, body }
}

/// GET `path` and assert a 200; the response.
fn get_ok(port: u16, path: &str) -> Response {
    let response = get(port, path);
    assert_eq!(
        response.status,
        200,
        "GET {path}:\n{}\n{}",
        response.head,
        response.text()
    );
    response
}

/// The quoted `/_next/static/…` URLs a page names.
fn static_urls(page: &str) -> Vec<String> {
    let mut urls: Vec<String> = page
        .split(['"', '\\'])
        .filter(|s| s.starts_with("/_next/static/"))
        .map(str::to_owned)
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

/// The `rendered at …` timestamp of the ISR page.
fn rendered_at(port: u16) -> String {
    let page = get_ok(port, "/isr").text();
    let start = page
        .find("rendered at ")
        .unwrap_or_else(|| panic!("no timestamp on /isr:\n{page}"));
    page[start..].chars().take(36).collect()
}

/// A fixture deployed over SSH to a host with PM2 and nginx (blue-green).
struct Deployed {
    name: &'static str,
    app: PathBuf,
    remote: PathBuf,
    nginx: Nginx,
    sshd: Sshd,
    ports: String,
    upstream: PathBuf,
    _pm2: Pm2Home,
    _work: tempfile::TempDir,
}

impl Deployed {
    /// Builds fixture `name` (once per run) and deploys it as release `1`.
    fn new(name: &'static str) -> (Deployed, Output) {
        let app = nextapp::built(name);
        let work = tempfile::tempdir().unwrap();
        let pm2 = Pm2Home::new();
        let sshd = Sshd::start_with_env(&[("PM2_HOME", &pm2.path_str())]);
        let (blue, green) = (free_port(), free_port());
        let upstream = work.path().join("upstream.conf");
        fs::write(
            &upstream,
            format!("upstream web {{ server 127.0.0.1:{blue}; }}\n"),
        )
        .unwrap();
        let nginx = Nginx::start("web", &upstream);
        let deployed = Deployed {
            name,
            app,
            remote: work.path().join("srv/web"),
            nginx,
            sshd,
            ports: format!("{blue},{green}"),
            upstream,
            _pm2: pm2,
            _work: work,
        };
        let out = deployed.deploy("1");
        (deployed, out)
    }

    /// Deploys the built fixture again as `release`.
    fn deploy(&self, release: &str) -> Output {
        Test::new()
            .args(["deploy", "--json", "--strategy", "blue-green", "--release"])
            .arg(release)
            .args(["--app-port", &self.ports, "--health-timeout", "90"])
            .arg("--nginx-upstream")
            .arg(&self.upstream)
            .args(["--nginx-reload", &self.nginx.reload_command()])
            .arg("--working-directory")
            .arg(&self.app)
            .args(ssh_args(&self.sshd, &self.remote))
            .success()
    }

    fn release(&self, release: &str) -> PathBuf {
        self.remote.join("releases").join(release)
    }

    /// Everything a user of the fixture sees, checked through nginx.
    fn check_as_a_user(&self, welcome: &str) {
        let port = self.nginx.port;
        let home = get_ok(port, "/").text();
        assert!(home.contains(welcome), "{home}");
        assert!(home.contains("hello from the committed .env"), "{home}");
        let chunks = static_urls(&home);
        assert!(!chunks.is_empty(), "no static chunk in the page:\n{home}");
        for chunk in &chunks {
            get_ok(port, chunk);
        }

        let api = get_ok(port, "/api/hello").text();
        let json: serde_json::Value = serde_json::from_str(&api).unwrap();
        assert_eq!(json["greeting"], "hello from the committed .env", "{api}");

        let robots = get_ok(port, "/robots.txt").text();
        assert!(robots.contains("User-agent"), "{robots}");
        let image = get_ok(port, IMAGE);
        assert_eq!(image.header("content-type"), "image/png", "{}", image.head);
        assert_eq!(
            image.body,
            fs::read(self.app.join("public").join(&IMAGE[1..])).unwrap()
        );

        self.check_optimized_image();
        self.check_lazy_chunk();
        self.check_isr_regenerates();
    }

    /// `/photo` names `/_next/image?url=…&w=…&q=75`; the optimizer answers it
    /// with a WebP (sharp at work) smaller than the PNG.
    fn check_optimized_image(&self) {
        let photo = get_ok(self.nginx.port, "/photo").text();
        let src = photo
            .split(" src=\"")
            .filter_map(|s| s.split('"').next())
            .find(|s| s.starts_with("/_next/image?url=%2Fimages%2Fgradient.png"))
            .unwrap_or_else(|| panic!("no optimized image on /photo:\n{photo}"))
            .replace("&amp;", "&");
        assert!(src.ends_with("&q=75"), "{src}");
        let optimized = get_ok(self.nginx.port, &src);
        assert_eq!(
            optimized.header("content-type"),
            "image/webp",
            "{src}\n{}",
            optimized.head
        );
        assert_eq!(&optimized.body[8..12], b"WEBP", "{src}");
    }

    /// `/lazy` loads its client component from a chunk the HTML does not name:
    /// the chunk that holds it is served too.
    fn check_lazy_chunk(&self) {
        let lazy = get_ok(self.nginx.port, "/lazy").text();
        assert!(lazy.contains("A lazily loaded component"), "{lazy}");
        let live = self.remote.join("current").canonicalize().unwrap();
        let static_dir = WalkDir::new(&live)
            .into_iter()
            .filter_map(Result::ok)
            .find(|e| e.path().ends_with(".next/static") && !e.path_is_symlink())
            .unwrap_or_else(|| panic!("no .next/static in {}", live.display()))
            .into_path();
        let chunk = WalkDir::new(&static_dir)
            .into_iter()
            .filter_map(Result::ok)
            .find(|e| {
                e.file_type().is_file()
                    && fs::read_to_string(e.path())
                        .is_ok_and(|js| js.contains("loaded lazily in the browser"))
            })
            .unwrap_or_else(|| panic!("no chunk holds the lazy component"))
            .into_path();
        let url = format!(
            "/_next/static/{}",
            chunk.strip_prefix(&static_dir).unwrap().display()
        );
        assert!(!lazy.contains(&url), "{url} is named by /lazy: not lazy");
        let served = get_ok(self.nginx.port, &url).text();
        assert!(served.contains("loaded lazily in the browser"), "{url}");
    }

    /// The ISR page (`revalidate = 1`) shows a new timestamp once more than a
    /// second has passed and a request has triggered the background render.
    fn check_isr_regenerates(&self) {
        let first = rendered_at(self.nginx.port);
        let started = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(1100));
            if rendered_at(self.nginx.port) != first {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{}: /isr still shows `{first}` after 60 s",
                self.name
            );
        }
    }

    /// Every symlink the build shipped in `release` resolves, to a path
    /// inside the release; the count. (Not dropship's own link of `shared`'s
    /// `.env` at the top, which leads to `shared/.env` by design.)
    fn links_resolve_inside(&self, release: &str) -> usize {
        let root = self.release(release).canonicalize().unwrap();
        let mut links = 0;
        for entry in WalkDir::new(&root).into_iter().filter_map(Result::ok) {
            if !entry.path_is_symlink() || entry.path() == root.join(".env") {
                continue;
            }
            links += 1;
            let resolved = entry
                .path()
                .canonicalize()
                .unwrap_or_else(|e| panic!("{} does not resolve: {e}", entry.path().display()));
            assert!(
                resolved.starts_with(&root),
                "{} leads out of the release, to {}",
                entry.path().display(),
                resolved.display()
            );
        }
        links
    }

    /// Redeploys the same build, checks it again, and prints the figures.
    fn redeploy_and_report(&self, first: &Output, welcome: &str) {
        let again = self.deploy("2");
        assert_contains(&again, "nginx sends new requests to port");
        self.check_as_a_user(welcome);
        let (mut files, mut bytes) = (0u64, 0u64);
        for entry in WalkDir::new(self.release("2"))
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
        {
            files += 1;
            bytes += entry.metadata().unwrap().len();
        }
        let figures = |out: &Output| {
            let json = out.json();
            let mb = |key: &str| json[key].as_f64().unwrap_or(0.0) / 1e6;
            format!(
                "{:.1} s, {:.2} MB sent ({:.2} MB release stream)",
                json["duration-ms"].as_f64().unwrap_or(0.0) / 1000.0,
                mb("bytes-sent"),
                mb("artifact-bytes")
            )
        };
        eprintln!(
            "fixture {}: {files} files, {:.1} MB; first deploy {}; redeploy {}",
            self.name,
            bytes as f64 / 1e6,
            figures(first),
            figures(&again)
        );
    }
}

/// Deploys fixture `name`, checks it as a user, checks that the release is
/// the build (links and all), redeploys, and prints the figures.
/// `server_dir`: where the fixture's server.js is in the release.
fn deploy_and_check(name: &'static str, server_dir: &str, welcome: &str) -> Deployed {
    let (site, first) = Deployed::new(name);
    assert_contains(&first, "Next.js standalone build");
    let work = tempfile::tempdir().unwrap();
    let expected =
        fixture::expected_release_at(&site.app, &work.path().join("expected"), server_dir);
    // The shipped `.env` stays beside server.js (the API route shows it is
    // read), `shared`'s `.env` is linked at the top of a monorepo's release;
    // Next.js 16 writes the pages it renders to `.next/server/route-cache`.
    let beside = |rel: &str| format!("{server_dir}/{rel}").replace("./", "");
    fs::remove_file(expected.join(beside(".env"))).unwrap();
    tree::assert_same_tree_except(
        &expected,
        &site.release("1"),
        &[".env", &beside(".env"), &beside(".next/server/route-cache")],
    );
    site.check_as_a_user(welcome);
    site.redeploy_and_report(&first, welcome);
    site
}

#[test]
fn next14_works_as_a_user_sees_it() {
    deploy_and_check("next14", ".", "Welcome to the Next.js 14 fixture");
}

#[test]
fn next15_works_as_a_user_sees_it() {
    deploy_and_check("next15", ".", "Welcome to the Next.js 15 fixture");
}

#[test]
fn next16_works_as_a_user_sees_it() {
    deploy_and_check("next16", ".", "Welcome to the Next.js 16 fixture");
}

/// pnpm's standalone output reaches its packages through links into
/// `node_modules/.pnpm`: they arrive as links, inside the release, and resolve.
#[test]
fn pnpm_links_survive_the_deploy_and_resolve_inside_the_release() {
    let site = deploy_and_check("pnpm", ".", "Welcome to the pnpm fixture");
    let links = site.links_resolve_inside("2");
    assert!(links > 0, "no links in the pnpm release");
    let next = site.release("2").join("node_modules/next");
    assert!(next.is_symlink(), "{}", next.display());
    let target = fs::read_link(&next).unwrap();
    assert!(
        target.starts_with(".pnpm/"),
        "node_modules/next -> {}",
        target.display()
    );
    eprintln!("fixture pnpm: {links} links, all resolving inside the release");
}

/// An npm-workspaces monorepo: server.js under `apps/web/`, with `public/`
/// and `.next/static` beside it, started there; the page shows what it
/// imports from a workspace package.
#[test]
fn monorepo_app_starts_beside_its_server_js() {
    let site = deploy_and_check("monorepo", "apps/web", "Welcome to the monorepo fixture");
    let live = site.release("2");
    assert!(live.join("apps/web/server.js").is_file());
    assert!(live.join("apps/web/public/images/gradient.png").is_file());
    assert!(live.join("apps/web/.next/static").is_dir());
    let home = get_ok(site.nginx.port, "/").text();
    assert!(
        home.contains("from the workspace package @fixture/ui"),
        "{home}"
    );
    let links = site.links_resolve_inside("2");
    eprintln!("fixture monorepo: {links} links, all resolving inside the release");
}

/// A link whose target is not shipped (here pnpm's copy of next, left out by
/// `exclude`) would crash the app once live: it is refused, exit 2, before
/// anything changes on the server.
#[test]
fn a_link_to_a_package_left_out_of_the_release_is_refused_before_anything_changes() {
    let app = nextapp::built("pnpm");
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("srv/web");
    let out = Test::new()
        .args(["deploy", "--host", "local", "--process-manager", "none"])
        .args([
            "--exclude",
            "node_modules/.pnpm/next@*",
            "--working-directory",
        ])
        .arg(&app)
        .arg("--remote-path")
        .arg(&remote)
        .status(2);
    let next = fs::read_link(app.join(".next/standalone/node_modules/next")).unwrap();
    assert!(
        out.stderr.contains(&format!(
            "error: symlink `node_modules/next` points to `{}`, which is not in the release\n  hint: ship what it points to (does `exclude` leave it out?), or add the link to `exclude`\n",
            next.display()
        )),
        "{}",
        out.stderr
    );
    assert!(!remote.exists(), "{}", remote.display());
}
