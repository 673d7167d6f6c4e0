//! Host-key pinning and key authentication against the real sshd. Every refused
//! connection must leave the server untouched.

use crate::support::{fixture, sshd::KeyKind, sshd::Sshd};
use crate::test::Test;

fn deploy_args(sshd: &Sshd, app: &std::path::Path, remote: &std::path::Path) -> Test {
    Test::new()
        .args([
            "deploy",
            "--process-manager",
            "none",
            "--release",
            "r1",
            "--host",
        ])
        .arg(sshd.host_spec())
        .arg("--working-directory")
        .arg(app)
        .arg("--remote-path")
        .arg(remote)
}

#[test]
fn an_unpinned_host_fails_closed_and_prints_what_to_pin() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    let out = deploy_args(&sshd, &app, &remote)
        .arg("--key-file")
        .arg(sshd.user_key_path())
        .status(2);
    assert!(
        out.stderr.contains(&sshd.host_fingerprint()),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&sshd.known_hosts_line()),
        "{}",
        out.stderr
    );
    assert!(!remote.exists());
    // The printed fingerprint works as a pin.
    deploy_args(&sshd, &app, &remote)
        .arg("--key-file")
        .arg(sshd.user_key_path())
        .args(["--host-fingerprint", &sshd.host_fingerprint()])
        .success();
}

#[test]
fn a_changed_host_key_is_refused_and_both_fingerprints_are_shown() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    let wrong = format!("SHA256:{}", "A".repeat(43));
    let out = deploy_args(&sshd, &app, &remote)
        .arg("--key-file")
        .arg(sshd.user_key_path())
        .args(["--host-fingerprint", &wrong])
        .status(2);
    assert!(out.stderr.contains("does not match"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&wrong) && out.stderr.contains(&sshd.host_fingerprint()),
        "{}",
        out.stderr
    );
    assert!(!remote.exists());

    let other = Sshd::start();
    let out = deploy_args(&sshd, &app, &remote)
        .arg("--key-file")
        .arg(sshd.user_key_path())
        .arg("--known-hosts")
        .arg(
            other
                .known_hosts_line()
                .replace(&other.port().to_string(), &sshd.port().to_string()),
        )
        .status(2);
    assert!(out.stderr.contains("does not match"), "{}", out.stderr);
    assert!(!remote.exists());
}

#[test]
fn a_refused_key_says_which_user_and_key() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    let stranger = sshd.extra_key(KeyKind::Ed25519, None, false);
    let out = deploy_args(&sshd, &app, &remote)
        .arg("--key-file")
        .arg(&stranger)
        .arg("--known-hosts-file")
        .arg(sshd.known_hosts_path())
        .status(2);
    assert!(
        out.stderr.contains("refused the ed25519 key SHA256:"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("for user `{}`", sshd.user())),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("authorized_keys"), "{}", out.stderr);
    assert!(!remote.exists());
}

#[test]
fn ecdsa_and_rsa_keys_in_openssh_and_pem_formats_work() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    for (n, kind) in [KeyKind::EcdsaP256, KeyKind::RsaOpenSsh, KeyKind::RsaPem]
        .into_iter()
        .enumerate()
    {
        let key = sshd.extra_key(kind, None, true);
        let text = std::fs::read_to_string(&key).unwrap();
        Test::new()
            .args(["deploy", "--process-manager", "none", "--host"])
            .arg(sshd.host_spec())
            .args(["--release", &format!("k{n}"), "--working-directory"])
            .arg(&app)
            .arg("--remote-path")
            .arg(&remote)
            .arg("--known-hosts-file")
            .arg(sshd.known_hosts_path())
            .env("DROPSHIP_KEY", &text)
            .success();
    }
}

#[test]
fn an_encrypted_key_needs_the_right_passphrase() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    let key = sshd.extra_key(KeyKind::Ed25519, Some("open sesame"), true);
    let run = |passphrase: Option<&str>| {
        let mut test = deploy_args(&sshd, &app, &remote)
            .arg("--key-file")
            .arg(&key)
            .arg("--known-hosts-file")
            .arg(sshd.known_hosts_path());
        if let Some(p) = passphrase {
            test = test.env("DROPSHIP_KEY_PASSPHRASE", p);
        }
        test
    };
    let out = run(None).status(2);
    assert!(
        out.stderr.contains("no passphrase was given"),
        "{}",
        out.stderr
    );
    let out = run(Some("wrong")).status(2);
    assert!(out.stderr.contains("wrong passphrase"), "{}", out.stderr);
    assert!(!out.stderr.contains("open sesame"));
    assert!(!remote.exists());
    run(Some("open sesame")).success();
}

#[test]
fn connection_refused_names_the_host() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let sshd = Sshd::start();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let out = Test::new()
        .args(["deploy", "--process-manager", "none", "--host"])
        .arg(format!("someone@127.0.0.1:{port}"))
        .arg("--working-directory")
        .arg(&app)
        .args(["--remote-path", "/srv/nothing-here"])
        .arg("--key-file")
        .arg(sshd.user_key_path())
        .status(1);
    assert!(
        out.stderr
            .contains(&format!("cannot connect to someone@127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
}
