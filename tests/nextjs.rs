//! The slow end-to-end tier: a real Next.js app with `output: 'standalone'`,
//! built by the test with npm (through dropship's `build`), deployed blue-green
//! under PM2 behind nginx, and checked as a browser would fetch it: the page,
//! a static chunk from `.next/static`, and a file from `public/`.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use crate::support::runtime::{Nginx, Pm2Home, free_port};
use crate::support::tree::copy_dir;
use crate::test::Test;

/// GET `path` from 127.0.0.1:`port`: (status line, body).
fn fetch(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: www.example.com\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[test]
fn a_real_nextjs_standalone_build_goes_live_blue_green() {
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("web");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/app"),
        &app,
    );
    let install = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&app)
        .status()
        .expect("npm");
    assert!(
        install.success(),
        "npm install failed (is the npm registry reachable?)"
    );

    let pm2 = Pm2Home::new();
    let (blue, green) = (free_port(), free_port());
    let upstream = work.path().join("upstream.conf");
    fs::write(
        &upstream,
        format!("upstream web {{ server 127.0.0.1:{blue}; }}\n"),
    )
    .unwrap();
    let nginx = Nginx::start("web", &upstream);
    let out = Test::new()
        .args([
            "deploy",
            "--host",
            "local",
            "--strategy",
            "blue-green",
            "--release",
            "n1",
        ])
        .args([
            "--app-port",
            &format!("{blue},{green}"),
            "--health-timeout",
            "60",
        ])
        .arg("--nginx-upstream")
        .arg(&upstream)
        .args(["--nginx-reload", &nginx.reload_command()])
        .args([
            "--build",
            "npm run build",
            "--env",
            "NEXT_TELEMETRY_DISABLED=1\nNEXT_PUBLIC_BUILT_BY=dropship",
        ])
        .arg("--working-directory")
        .arg(&app)
        .arg("--remote-path")
        .arg(work.path().join("srv/web"))
        .env("PM2_HOME", &pm2.path_str())
        .success();
    assert!(
        out.stderr.contains("Next.js standalone build"),
        "{}",
        out.stderr
    );

    let (status, page) = fetch(nginx.port, "/");
    assert!(status.contains(" 200"), "{status}\n{page}");
    assert!(page.contains("Welcome"), "{page}");
    let chunk = page
        .split('"')
        .find(|s| s.starts_with("/_next/static/") && s.ends_with(".js"))
        .unwrap_or_else(|| panic!("no static chunk in the page:\n{page}"));
    let (status, _) = fetch(nginx.port, chunk);
    assert!(status.contains(" 200"), "{chunk}: {status}");
    let (status, robots) = fetch(nginx.port, "/robots.txt");
    assert!(
        status.contains(" 200") && robots.contains("User-agent"),
        "{status}\n{robots}"
    );
    // Source maps stay on the runner.
    assert!(!out.stderr.contains(".map"), "{}", out.stderr);
}
