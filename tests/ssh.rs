//! Host-key pinning and key authentication against the real sshd. Every refused
//! connection must leave the server untouched.

use crate::support::fixture;
use crate::support::sshd::{HostKey, KeyKind, Sshd};
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

/// What `ssh-keyscan -t <kind>` prints for the test sshd (the usual way to pin a server).
fn keyscan(sshd: &Sshd, kind: &str) -> String {
    let out = std::process::Command::new("ssh-keyscan")
        .args(["-t", kind, "-p", &sshd.port().to_string(), "127.0.0.1"])
        .output()
        .expect("run ssh-keyscan");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(kind),
        "ssh-keyscan -t {kind} printed {text:?}"
    );
    text
}

#[test]
fn a_server_with_several_host_keys_is_accepted_by_whichever_one_is_pinned() {
    let sshd = Sshd::start_with_host_keys();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    let pins = [
        ("ecdsa line", sshd.known_hosts_line_of(HostKey::Ecdsa)),
        ("rsa line", sshd.known_hosts_line_of(HostKey::Rsa)),
        (
            "ssh-keyscan -t ecdsa",
            keyscan(&sshd, "ecdsa-sha2-nistp256"),
        ),
    ];
    for (n, (what, known_hosts)) in pins.iter().enumerate() {
        let out = deploy_args(&sshd, &app, &remote.join(format!("p{n}")))
            .arg("--key-file")
            .arg(sshd.user_key_path())
            .args(["--known-hosts", known_hosts])
            .run();
        assert_eq!(out.code, 0, "pinned by the {what}:\n{}", out.stderr);
    }
}

#[test]
fn a_revoked_host_key_is_refused_even_when_also_pinned() {
    let sshd = Sshd::start_with_host_keys();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    let ed25519 = sshd.known_hosts_line_of(HostKey::Ed25519);
    let key = ed25519.split_once(' ').unwrap().1;
    let out = deploy_args(&sshd, &app, &remote)
        .arg("--key-file")
        .arg(sshd.user_key_path())
        .args(["--known-hosts", &format!("@revoked * {key}\n{ed25519}")])
        .status(2);
    assert!(
        out.stderr.contains(&format!(
            "error: host key {} of {} is revoked in `known-hosts`",
            sshd.host_fingerprint(),
            sshd.host_spec()
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("hint: do not deploy to this server until it has a new host key"),
        "{}",
        out.stderr
    );
    assert!(!remote.exists());
    // Another, unrevoked key of the same server still pins it.
    let ecdsa = sshd.known_hosts_line_of(HostKey::Ecdsa);
    deploy_args(&sshd, &app, &remote)
        .arg("--key-file")
        .arg(sshd.user_key_path())
        .args(["--known-hosts", &format!("@revoked * {key}\n{ecdsa}")])
        .success();
}

#[test]
fn a_fingerprint_of_any_host_key_type_pins_the_server() {
    let sshd = Sshd::start_with_host_keys();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    for (n, kind) in [HostKey::Ecdsa, HostKey::Rsa].into_iter().enumerate() {
        deploy_args(&sshd, &app, &remote.join(format!("f{n}")))
            .arg("--key-file")
            .arg(sshd.user_key_path())
            .args(["--host-fingerprint", &sshd.host_fingerprint_of(kind)])
            .success();
    }
    // A wrong one names every key the server offers, with its type.
    let wrong = format!("SHA256:{}", "A".repeat(43));
    let out = deploy_args(&sshd, &app, &remote.join("f9"))
        .arg("--key-file")
        .arg(sshd.user_key_path())
        .args(["--host-fingerprint", &wrong])
        .status(2);
    assert!(
        out.stderr.contains(&format!(
            "error: host key of {} does not match the pinned key: expected {wrong}, the server presented {} (ssh-ed25519), {} (ecdsa-sha2-nistp256), {} (ssh-rsa)",
            sshd.host_spec(),
            sshd.host_fingerprint_of(HostKey::Ed25519),
            sshd.host_fingerprint_of(HostKey::Ecdsa),
            sshd.host_fingerprint_of(HostKey::Rsa),
        )),
        "{}",
        out.stderr
    );
    assert!(!remote.join("f9").exists());
}
