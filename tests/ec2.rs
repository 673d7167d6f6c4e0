//! EC2 fleets against a real AWS API (moto's server, tests/support/moto.rs) and
//! real hosts: network namespaces with their own sshd on port 22 at the
//! instance's private IP, their own nginx on port 80 and their own PM2
//! (tests/support/netns.rs). moto's load balancer checks each target over HTTP,
//! as an ALB does, and really waits out the deregistration delay.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::moto::{Moto, REGION, Seeded};
use crate::support::netns::NetFleet;
use crate::support::process::{Ended, Watched, eventually};
use crate::support::runtime::{Behaviour, node_app};
use crate::test::{Output, Test};

const TAGS: &[(&str, &str)] = &[("Role", "web"), ("aws:autoscaling:groupName", "web-asg")];

/// `deploy` of `app` as `release` to the instances tagged `Role=web`, reached at
/// their private IPs, with `extra` options, in moto's environment.
fn ec2_deploy(fleet: &NetFleet, moto: &Moto, app: &Path, release: &str, extra: &[&str]) -> Test {
    let test = Test::new()
        .args(["deploy", "--release", release])
        .args(["--ec2-hosts", "tag:Role=web", "--ec2-address", "private-ip"])
        .args(["--user", &user_of(fleet)])
        .args(run_args(fleet, extra))
        .args(extra.iter().copied())
        .arg("--working-directory")
        .arg(app);
    moto.env_for(test, None)
}

/// The fleet's run options, with `--health-timeout` taken from `extra` if there.
fn run_args(fleet: &NetFleet, extra: &[&str]) -> Vec<String> {
    let mut args = fleet.run_args();
    if extra.contains(&"--health-timeout") {
        let mine = args.iter().position(|a| a == "--health-timeout").unwrap();
        args.drain(mine..mine + 2);
    }
    args
}

/// The index of the host deployed first: hosts come in instance-id order.
fn first_host(seeded: &Seeded) -> usize {
    (0..seeded.instance_ids.len())
        .min_by_key(|&i| &seeded.instance_ids[i])
        .unwrap()
}

fn user_of(fleet: &NetFleet) -> String {
    let spec = fleet.host(0).host_spec();
    spec.split('@').next().unwrap_or_default().to_owned()
}

/// Hosts made by `make`, and moto's server seeded with them (tagged [`TAGS`],
/// registered in a target group that drains for `drain_secs`). Needs root.
#[track_caller]
fn lab(make: fn(usize) -> NetFleet, hosts: usize, drain_secs: u32) -> (NetFleet, Moto, Seeded) {
    crate::support::assert_root("hosts in network namespaces on a bridge");
    let fleet = make(hosts);
    let moto = Moto::start();
    let seeded = moto.seed_fleet(&fleet, TAGS, drain_secs);
    (fleet, moto, seeded)
}

/// The calls of the deploy, each run of the same call counted once (polls vary).
fn calls(moto: &Moto) -> Vec<String> {
    let mut calls = moto.recorded_calls();
    calls.dedup();
    calls
}

fn live(fleet: &NetFleet) -> Vec<Option<String>> {
    fleet.hosts().iter().map(|h| h.live()).collect()
}

fn states(moto: &Moto, seeded: &Seeded) -> Vec<String> {
    let mut states = moto.target_states(&seeded.target_group_arn);
    states.sort();
    let by_host: Vec<String> = seeded
        .instance_ids
        .iter()
        .map(|id| {
            states
                .iter()
                .find(|(i, _)| i == id)
                .map_or("absent".to_owned(), |(_, s)| s.clone())
        })
        .collect();
    by_host
}

/// A Node app that answers `variant` on `/`, and on `/ready` 200 when `ready`,
/// else 500: what the load balancer checks (the health check path of the group
/// is set to `/ready`), while dropship's own check (`/`) passes.
fn lb_app(root: &Path, variant: &str, ready: bool) -> PathBuf {
    let app = node_app(root, variant, Behaviour::Healthy);
    let status = if ready { 200 } else { 500 };
    std::fs::write(
        app.join(".next/standalone/server.js"),
        format!(
            "const http = require('http');\nhttp.createServer((req, res) => {{ const code = req.url === '/ready' ? {status} : 200; res.writeHead(code, {{'content-type': 'text/plain'}}); res.end('{variant}\\n'); }}).listen(Number(process.env.PORT), process.env.HOSTNAME);\nprocess.on('SIGTERM', () => process.exit(0));\n"
        ),
    )
    .unwrap();
    app
}

fn check_path(moto: &Moto, seeded: &Seeded, path: &str) {
    moto.call(
        "elbv2",
        "modify_target_group",
        json!({ "TargetGroupArn": seeded.target_group_arn, "HealthCheckPath": path }),
    )
    .expect("set the health check path");
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn ec2_hosts_deploys_to_every_running_instance_and_names_each_by_its_id() {
    let (fleet, moto, seeded) = lab(NetFleet::new, 2, 1);
    let app = node_app(fleet.work(), "v1", Behaviour::Healthy);
    let summary = fleet.work().join("summary.md");
    moto.start_recording();
    let out = ec2_deploy(&fleet, &moto, &app, "r1", &[])
        .env("GITHUB_STEP_SUMMARY", &summary.display().to_string())
        .success();
    assert_eq!(calls(&moto), ["DescribeInstances"]);
    assert_eq!(
        live(&fleet),
        [Some("releases/r1".into()), Some("releases/r1".into())]
    );
    let summary = std::fs::read_to_string(&summary).unwrap();
    for (host, id) in fleet.hosts().iter().zip(&seeded.instance_ids) {
        let line = format!("ec2-hosts: {id} at {}", host.ip());
        assert!(
            out.stderr.contains(&line),
            "no `{line}` in:\n{}",
            out.stderr
        );
        let named = format!("{} ({id})", host.host_spec());
        assert!(
            summary.contains(&named),
            "no `{named}` in the summary:\n{summary}"
        );
        assert!(host.get("/").is_ok_and(|b| b.starts_with("v1 ")));
    }
    // The stopped instance with the same tags is no host.
    assert!(
        !out.stderr.contains(&seeded.stopped_instance_id),
        "{}",
        out.stderr
    );
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn no_running_instance_matching_is_bad_input_naming_the_filters_and_the_region() {
    let (fleet, moto, _) = lab(NetFleet::new, 1, 1);
    let app = node_app(fleet.work(), "v1", Behaviour::Healthy);
    let test = Test::new()
        .args(["deploy", "--release", "r1", "--user", "root"])
        .args(["--ec2-hosts", "tag:Role=db\ninstance-state-name=running"])
        .args(fleet.run_args())
        .arg("--working-directory")
        .arg(&app);
    let out = moto.env_for(test, None).status(2);
    assert_eq!(
        out.stderr,
        format!(
            "error: no running EC2 instance in {REGION} matches all of: tag:Role=db, instance-state-name=running\n  hint: check that the instances are running and tagged so: `aws ec2 describe-instances --region {REGION} --filters Name=tag:Role,Values=db Name=instance-state-name,Values=running`\n"
        )
    );
    assert_eq!(fleet.host(0).live(), None);
}

/// Deploys `r1` to every host without the load balancer, then `r2` with it.
fn deployed_once(fleet: &NetFleet, moto: &Moto) {
    let v1 = node_app(fleet.work(), "v1", Behaviour::Healthy);
    ec2_deploy(fleet, moto, &v1, "r1", &[]).success();
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn a_rolling_restart_takes_one_host_at_a_time_out_of_the_load_balancer() {
    let (fleet, moto, seeded) = lab(NetFleet::new, 2, 1);
    deployed_once(&fleet, &moto);
    let (plain, _, _) = timed(&fleet, &moto, "v1b", &["--rollout", "rolling"]);
    eprintln!("rolling restart of 2 hosts without a target group: {plain:.1} s");
    let v2 = node_app(fleet.work(), "v2", Behaviour::Healthy);
    moto.start_recording();
    let tg = seeded.target_group_arn.clone();
    let test = ec2_deploy(
        &fleet,
        &moto,
        &v2,
        "r2",
        &[
            "--rollout",
            "rolling",
            "--target-group",
            &tg,
            "--drain-timeout",
            "30",
        ],
    );
    let mut watched = Watched::new(test.spawn());
    // What the load balancer saw while the deploy ran.
    let mut seen: Vec<Vec<String>> = Vec::new();
    let started = Instant::now();
    let ended = loop {
        let now = states(&moto, &seeded);
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        if let Some(ended) = watched.try_wait() {
            break ended;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(ended, Ended::Exited(0), "{}", watched.stderr());
    eprintln!("rolling restart of 2 hosts with a target group: {secs:.1} s; states seen: {seen:?}");
    // Each host left the load balancer, never both at once, and came back.
    for host in 0..2 {
        assert!(
            seen.iter().any(|s| s[host] != "healthy"),
            "host {host} never left the load balancer: {seen:?}"
        );
    }
    assert!(
        seen.iter()
            .all(|s| s.iter().filter(|st| *st != "healthy").count() <= 1),
        "both hosts were out at once: {seen:?}"
    );
    assert_eq!(states(&moto, &seeded), ["healthy", "healthy"]);
    let batch = [
        "DeregisterTargets",
        "DescribeTargetHealth",
        "RegisterTargets",
        "DescribeTargetHealth",
    ];
    let mut expected = vec!["DescribeInstances", "DescribeTargetHealth"];
    expected.extend(batch);
    expected.extend(batch);
    assert_eq!(calls(&moto), expected);
    let stderr = watched.stderr();
    for host in fleet.hosts() {
        assert_eq!(host.live().as_deref(), Some("releases/r2"));
        assert!(host.get("/").is_ok_and(|b| b.starts_with("v2 ")));
        let id = &seeded.instance_ids[host.index()];
        for step in [
            "left the load balancer and drained in",
            "healthy in the load balancer after",
        ] {
            let wanted = format!("{} ({id}): {step}", host.host_spec());
            assert!(stderr.contains(&wanted), "no `{wanted}` in:\n{stderr}");
        }
    }
}

/// `web` of `arn:…:targetgroup/web/73e2d6bc24d8a067`.
fn group_name(arn: &str) -> &str {
    arn.split("targetgroup/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or(arn)
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn a_host_the_load_balancer_never_sees_healthy_fails_and_is_put_back() {
    let (fleet, moto, seeded) = lab(NetFleet::new, 2, 1);
    let v1 = lb_app(fleet.work(), "v1", true);
    ec2_deploy(&fleet, &moto, &v1, "r1", &[]).success();
    check_path(&moto, &seeded, "/ready");
    assert_eq!(states(&moto, &seeded), ["healthy", "healthy"]);
    let v2 = lb_app(fleet.work(), "v2", false);
    let tg = seeded.target_group_arn.clone();
    let extra = [
        "--rollout",
        "rolling",
        "--target-group",
        &tg,
        "--health-timeout",
        "3",
    ];
    let out = ec2_deploy(&fleet, &moto, &v2, "r2", &extra).status(1);
    let host = fleet.host(first_host(&seeded));
    let id = &seeded.instance_ids[host.index()];
    let expected = format!(
        "error: {} ({id}) is not healthy in target group `{}` after 3 s: unhealthy (Target.ResponseCodeMismatch: Health checks failed with these codes: [500])\n  hint: look at the target group's health check (path, port, success codes) and the app's log on that host; raise `health-timeout` if the load balancer needs longer (healthy threshold × interval)\n",
        host.host_spec(),
        group_name(&tg),
    );
    assert!(
        out.stderr.ends_with(&expected),
        "expected the end:\n{expected}\n--- got:\n{}",
        out.stderr
    );
    // The first host was put back; the second was never touched; both are in the
    // load balancer and healthy on r1.
    assert_eq!(
        live(&fleet),
        [Some("releases/r1".into()), Some("releases/r1".into())]
    );
    assert_eq!(states(&moto, &seeded), ["healthy", "healthy"]);
    assert!(host.get("/").is_ok_and(|b| b.starts_with("v1")));
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn a_cancelled_deploy_registers_its_hosts_again_and_removes_its_ssh_rule() {
    // Targets drain for a minute: the deploy is cancelled while it waits.
    let (fleet, moto, seeded) = lab(NetFleet::new, 2, 60);
    deployed_once(&fleet, &moto);
    let v2 = node_app(fleet.work(), "v2", Behaviour::Healthy);
    let tg = seeded.target_group_arn.clone();
    let sg = seeded.security_group_id.clone();
    let test = ec2_deploy(
        &fleet,
        &moto,
        &v2,
        "r2",
        &[
            "--rollout",
            "rolling",
            "--target-group",
            &tg,
            "--ssh-ingress",
            &sg,
        ],
    )
    .env("DROPSHIP_RUNNER_IP", &fleet.runner_ip().to_string());
    let mut watched = Watched::new(test.spawn());
    let first = first_host(&seeded);
    let draining = eventually(Duration::from_secs(60), || {
        states(&moto, &seeded)[first] == "draining"
    });
    assert!(
        draining,
        "host {first} never drained:\n{}",
        watched.stderr()
    );
    let rule = format!("{}/32", fleet.runner_ip());
    assert!(
        moto.ingress_rules(&sg)
            .iter()
            .any(|(cidr, port, _)| *cidr == rule && *port == 22),
        "no SSH rule for the runner during the deploy: {:?}",
        moto.ingress_rules(&sg)
    );
    crate::support::process::signal(watched.pid(), libc::SIGTERM);
    assert_eq!(
        watched.wait(Duration::from_secs(30)),
        Ended::Exited(143),
        "{}",
        watched.stderr()
    );
    let stderr = watched.stderr();
    assert!(
        stderr.contains("cancelled (SIGTERM): putting back what this deploy changed in AWS"),
        "{stderr}"
    );
    assert_eq!(states(&moto, &seeded), ["healthy", "healthy"], "{stderr}");
    assert!(
        !moto
            .ingress_rules(&sg)
            .iter()
            .any(|(cidr, _, _)| *cidr == rule),
        "the rule stayed: {:?}",
        moto.ingress_rules(&sg)
    );
    // The agents saw their client go and kept r1.
    assert!(
        eventually(Duration::from_secs(20), || live(&fleet)
            == [Some("releases/r1".into()), Some("releases/r1".into())]),
        "{:?}",
        live(&fleet)
    );
}

/// Serves one HTTP answer with `body` to every request on a free port of
/// 127.0.0.1 (the runner-IP lookup); stops with the test process.
fn answering(body: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn ssh_ingress_opens_ssh_for_this_runner_during_the_deploy_only() {
    let (fleet, moto, seeded) = lab(NetFleet::new, 1, 1);
    let sg = seeded.security_group_id.clone();
    // A rule a deploy that died left, and one that is not dropship's.
    for (cidr, description) in [
        (
            "198.51.100.7/32",
            "dropship: SSH for 198.51.100.7 during deploy r0",
        ),
        ("192.0.2.0/24", "office"),
    ] {
        moto.call(
            "ec2",
            "authorize_security_group_ingress",
            json!({ "GroupId": sg, "IpPermissions": [{ "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                "IpRanges": [{ "CidrIp": cidr, "Description": description }] }] }),
        )
        .unwrap();
    }
    let app = node_app(fleet.work(), "v1", Behaviour::Healthy);
    let lookup = answering(format!("{}\n", fleet.runner_ip()));
    moto.start_recording();
    let test = ec2_deploy(&fleet, &moto, &app, "r1", &["--ssh-ingress", &sg])
        .env("DROPSHIP_RUNNER_IP_URL", &lookup);
    let mut watched = Watched::new(test.spawn());
    let rule = format!("{}/32", fleet.runner_ip());
    let opened = eventually(Duration::from_secs(30), || {
        moto.ingress_rules(&sg).iter().any(|(cidr, _, d)| {
            *cidr == rule
                && *d == format!("dropship: SSH for {} during deploy r1", fleet.runner_ip())
        })
    });
    assert!(
        opened,
        "no rule for the runner: {:?}\n{}",
        moto.ingress_rules(&sg),
        watched.stderr()
    );
    assert_eq!(
        watched.wait(Duration::from_secs(60)),
        Ended::Exited(0),
        "{}",
        watched.stderr()
    );
    let left: Vec<String> = moto
        .ingress_rules(&sg)
        .into_iter()
        .map(|(cidr, _, _)| cidr)
        .collect();
    assert_eq!(left, ["192.0.2.0/24"]);
    assert_eq!(
        calls(&moto),
        [
            "DescribeInstances",
            "DescribeSecurityGroupRules",
            "RevokeSecurityGroupIngress",
            "AuthorizeSecurityGroupIngress",
            "RevokeSecurityGroupIngress"
        ]
    );
    let stderr = watched.stderr();
    assert!(
        stderr.contains(&format!(
            "{sg}: removed the SSH rule sgr-" // its id varies
        )) && stderr.contains(
            "an earlier deploy left (\"dropship: SSH for 198.51.100.7 during deploy r0\")"
        ),
        "{stderr}"
    );
    assert_eq!(fleet.host(0).live().as_deref(), Some("releases/r1"));
}

/// What a deploy user with only `ec2:DescribeInstances` and
/// `elasticloadbalancing:DescribeTargetHealth` may do.
const READ_ONLY: &str = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
  "Action": ["ec2:DescribeInstances", "elasticloadbalancing:DescribeTargetHealth"], "Resource": "*"}]}"#;

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn a_missing_permission_names_the_call_and_changes_nothing() {
    let (fleet, moto, seeded) = lab(NetFleet::new, 1, 1);
    deployed_once(&fleet, &moto);
    let keys = moto.enforce_iam(READ_ONLY);
    let v2 = node_app(fleet.work(), "v2", Behaviour::Healthy);
    let tg = seeded.target_group_arn.clone();
    let test = Test::new()
        .args(["deploy", "--release", "r2", "--ec2-hosts", "tag:Role=web"])
        .args([
            "--ec2-address",
            "private-ip",
            "--user",
            &user_of(&fleet),
            "--target-group",
            &tg,
        ])
        .args(fleet.run_args())
        .arg("--working-directory")
        .arg(&v2);
    let out: Output = moto.env_for(test, Some(&keys)).status(2);
    let last = out.stderr.lines().rev().take(2).collect::<Vec<_>>();
    assert_eq!(
        last,
        [
            "  hint: allow `elasticloadbalancing:DeregisterTargets` in the IAM policy of the role or user whose credentials dropship uses (README, \"IAM policy\"); `dropship doctor` checks every permission a deploy needs",
            "error: AWS elasticloadbalancing:DeregisterTargets failed in eu-west-1: AccessDenied: User: arn:aws:iam::123456789012:user/dropship-deploy is not authorized to perform: elasticloadbalancing:DeregisterTargets",
        ],
        "{}",
        out.stderr
    );
    assert_eq!(fleet.host(0).live().as_deref(), Some("releases/r1"));
    assert_eq!(states(&moto, &seeded), ["healthy"]);

    // `doctor` says the same before a deploy does.
    let doctor = Test::new()
        .args([
            "doctor",
            "--ec2-hosts",
            "tag:Role=web",
            "--ec2-address",
            "private-ip",
        ])
        .args([
            "--user",
            &user_of(&fleet),
            "--target-group",
            &tg,
            "--ssh-ingress",
            &seeded.security_group_id,
        ])
        .args(fleet.run_args().into_iter().take(6));
    let doctor = moto
        .env_for(doctor, Some(&keys))
        .env("DROPSHIP_RUNNER_IP", &fleet.runner_ip().to_string())
        .run();
    let aws: Vec<&str> = doctor
        .stdout
        .lines()
        .skip_while(|l| *l != "AWS:")
        .take_while(|l| !l.ends_with(':') || *l == "AWS:")
        .collect();
    eprintln!("{}", doctor.stdout);
    assert!(aws.len() >= 6, "{}\n{}", doctor.stdout, doctor.stderr);
    assert!(
        aws[1].starts_with(
            "  ✓ aws: credentials of arn:aws:iam::123456789012:user/dropship-deploy in eu-west-1"
        ),
        "{aws:?}"
    );
    assert_eq!(
        aws[2],
        "  ✓ ec2:DescribeInstances: allowed (asked with DryRun)"
    );
    assert!(aws[3].starts_with("  ✗ ec2:DescribeSecurityGroupRules: AWS ec2:DescribeSecurityGroupRules failed in eu-west-1: "), "{aws:?}");
    assert_eq!(doctor.code, 2, "{}\n{}", doctor.stdout, doctor.stderr);
}

/// Times a deploy of `release` (with `extra`), which must succeed; the calls it made.
fn timed(
    fleet: &NetFleet,
    moto: &Moto,
    variant: &str,
    extra: &[&str],
) -> (f64, Vec<String>, Output) {
    let app = node_app(fleet.work(), variant, Behaviour::Healthy);
    moto.start_recording();
    let started = Instant::now();
    let out = ec2_deploy(fleet, moto, &app, variant, extra).success();
    (started.elapsed().as_secs_f64(), moto.recorded_calls(), out)
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn four_hosts_in_batches_of_two_leave_and_rejoin_the_load_balancer_two_at_a_time() {
    let (fleet, moto, seeded) = lab(NetFleet::new, 4, 1);
    deployed_once(&fleet, &moto);
    let tg = seeded.target_group_arn.clone();
    let rolling = ["--rollout", "rolling", "--batch-size", "2"];
    let (plain, plain_calls, _) = timed(&fleet, &moto, "r2", &rolling);
    let mut gated = rolling.to_vec();
    gated.extend(["--target-group", &tg, "--drain-timeout", "30"]);
    let (with_lb, calls, out) = timed(&fleet, &moto, "r3", &gated);
    eprintln!(
        "rolling restart of 4 hosts in batches of 2: {plain:.1} s without a target group ({} AWS calls), {with_lb:.1} s with one ({} AWS calls: {:?})",
        plain_calls.len(),
        calls.len(),
        calls
    );
    assert_eq!(plain_calls, ["DescribeInstances"]);
    let mut compact = calls.clone();
    compact.dedup();
    let batch = [
        "DeregisterTargets",
        "DescribeTargetHealth",
        "RegisterTargets",
        "DescribeTargetHealth",
    ];
    let mut expected = vec!["DescribeInstances", "DescribeTargetHealth"];
    expected.extend(batch);
    expected.extend(batch);
    assert_eq!(compact, expected, "{}", out.stderr);
    assert_eq!(states(&moto, &seeded), ["healthy"; 4]);
    for host in fleet.hosts() {
        assert_eq!(host.live().as_deref(), Some("releases/r3"));
        assert!(host.get("/").is_ok_and(|b| b.starts_with("r3 ")));
    }
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn a_drain_longer_than_drain_timeout_warns_and_the_switch_goes_on() {
    // The load balancer would drain for a minute.
    let (fleet, moto, seeded) = lab(NetFleet::new, 1, 60);
    deployed_once(&fleet, &moto);
    let tg = seeded.target_group_arn.clone();
    let extra = ["--target-group", &tg, "--drain-timeout", "2"];
    let (secs, _, out) = timed(&fleet, &moto, "r2", &extra);
    let host = fleet.host(0);
    let warning = format!(
        "{} ({}): left the load balancer; still draining after 2 s (`drain-timeout`), switched anyway",
        host.host_spec(),
        seeded.instance_ids[0]
    );
    assert_eq!(
        out.stderr.matches(&warning).count(),
        1,
        "not once `{warning}` in:\n{}",
        out.stderr
    );
    assert!(secs < 30.0, "it waited {secs:.1} s");
    assert_eq!(host.live().as_deref(), Some("releases/r2"));
    assert_eq!(states(&moto, &seeded), ["healthy"]);
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn blue_green_keeps_hosts_in_the_load_balancer_and_gates_each_batch_on_its_health() {
    let (fleet, moto, seeded) = lab(NetFleet::blue_green, 2, 1);
    deployed_once(&fleet, &moto);
    let tg = seeded.target_group_arn.clone();
    let (_, calls, out) = timed(
        &fleet,
        &moto,
        "r2",
        &["--rollout", "rolling", "--target-group", &tg],
    );
    let mut compact = calls.clone();
    compact.dedup();
    // No deregistration: nginx drains the old port on each host.
    assert_eq!(
        compact,
        ["DescribeInstances", "DescribeTargetHealth"],
        "{calls:?}"
    );
    // Membership, then one gate per batch.
    assert_eq!(calls.len(), 4, "{calls:?}");
    for host in fleet.hosts() {
        let gate = format!(
            "{} ({}): healthy in the load balancer after",
            host.host_spec(),
            seeded.instance_ids[host.index()]
        );
        assert!(
            out.stderr.contains(&gate),
            "no `{gate}` in:\n{}",
            out.stderr
        );
        assert!(host.get("/").is_ok_and(|b| b.starts_with("r2 ")));
    }
    assert_eq!(states(&moto, &seeded), ["healthy", "healthy"]);
}
