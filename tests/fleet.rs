//! The harness of the EC2 fleet tests, tested: hosts in network namespaces
//! (tests/support/netns.rs) that answer SSH and HTTP on their private IPs and take a
//! real deploy, and moto's server (tests/support/moto.rs) seeded with instances on
//! those IPs, whose target health is a real HTTP check and whose deregistration
//! really drains, with IAM enforcement on request.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::moto::Moto;
use crate::support::netns::{self, NetFleet};
use crate::support::process::{eventually, signal};
use crate::support::runtime::{Behaviour, node_app};

/// `ssh` (the OpenSSH client) to `host` of `fleet` with strict host key checking.
fn ssh(fleet: &NetFleet, host: usize, command: &str) -> std::process::Output {
    Command::new("ssh")
        .arg("-i")
        .arg(fleet.key_path())
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile=\"{}\"",
            fleet.known_hosts_path().display()
        ))
        .args(["-o", "StrictHostKeyChecking=yes"])
        .args(["-o", "BatchMode=yes"])
        .args(["-o", "IdentitiesOnly=yes"])
        .args(["-o", "ConnectTimeout=10"])
        .args(["-F", "/dev/null"])
        .arg(format!(
            "{}@{}",
            crate::support::sshd::current_user(),
            fleet.host(host).ip()
        ))
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh")
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn netns_hosts_answer_ssh_on_their_private_ip_and_see_their_own_directory() {
    crate::support::assert_root("hosts in network namespaces on a bridge");
    let fleet = NetFleet::new(2);
    let known = fleet.known_hosts();
    assert_eq!(known.lines().count(), 2, "{known}");
    for host in fleet.hosts() {
        let line = host.known_hosts_line();
        assert!(
            line.starts_with(&format!("{} ssh-ed25519 AAAA", host.ip())),
            "{line}"
        );
        assert!(known.contains(&line), "{known}");
        assert!(host.fingerprint().starts_with("SHA256:"));
        assert_eq!(
            host.host_spec(),
            format!("{}@{}:22", crate::support::sshd::current_user(), host.ip())
        );
        std::fs::write(
            host.dir().join("whoami"),
            format!("host {}\n", host.index()),
        )
        .unwrap();
    }
    assert_ne!(fleet.host(0).fingerprint(), fleet.host(1).fingerprint());
    for host in fleet.hosts() {
        let remote = fleet.remote_path().display();
        let out = ssh(
            &fleet,
            host.index(),
            &format!(
                "cat {remote}/whoami && ip -o -4 addr show dev eth0 && echo PM2_HOME=$PM2_HOME"
            ),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ssh to {} failed: {}\n--- sshd log\n{}",
            host.ip(),
            String::from_utf8_lossy(&out.stderr),
            host.sshd_log()
        );
        assert!(
            stdout.starts_with(&format!("host {}\n", host.index())),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("inet {}/24", host.ip())),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("PM2_HOME={}", host.pm2_home().display())),
            "{stdout}"
        );
        // nginx is up on :80 with no app behind it yet.
        let answer = host.get("/");
        assert!(
            answer.as_ref().is_err_and(|e| e.contains("502")),
            "{answer:?}"
        );
    }
    // Dropped, the fleet leaves no interface and no namespace behind.
    let names = fleet.resource_names();
    drop(fleet);
    assert_gone(&names);
}

/// Fails if a link or namespace of `names` ([`NetFleet::resource_names`]) exists.
#[track_caller]
fn assert_gone((links, namespaces): &(Vec<String>, Vec<String>)) {
    let (all_links, all_namespaces) = netns::links_and_namespaces();
    // `ip -o link` lines: `7: name: <…>` or `7: name@peer: <…>`.
    let link_names: Vec<&str> = all_links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    let ns_names: Vec<&str> = all_namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for link in links {
        assert!(
            !link_names.contains(&link.as_str()),
            "{link} left behind:\n{all_links}"
        );
    }
    for ns in namespaces {
        assert!(
            !ns_names.contains(&ns.as_str()),
            "{ns} left behind:\n{all_namespaces}"
        );
    }
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn a_fleet_in_a_panicking_test_leaves_nothing_behind() {
    crate::support::assert_root("hosts in network namespaces on a bridge");
    let left = std::sync::Mutex::new(None);
    let unwound = std::panic::catch_unwind(|| {
        let fleet = NetFleet::new(1);
        // As the agent's PM2 and its apps would be: a process left in the namespace.
        let child = fleet
            .host(0)
            .command("sleep")
            .arg("600")
            .spawn()
            .expect("start sleep in the namespace");
        *left.lock().unwrap() = Some((fleet.resource_names(), child));
        panic!("a test failing with a fleet up");
    });
    assert!(unwound.is_err());
    let (names, mut child) = left.into_inner().unwrap().expect("the fleet was up");
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{status}"
    );
    assert_gone(&names);
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn moto_reports_the_fleet_and_checks_target_health_over_http() {
    crate::support::assert_root("hosts in network namespaces on a bridge");
    let fleet = NetFleet::new(2);
    let moto = Moto::start();
    let seeded = moto.seed_fleet(
        &fleet,
        &[("Role", "web"), ("aws:autoscaling:groupName", "web-asg")],
        2,
    );
    assert_eq!(seeded.instance_ids.len(), 2);

    // Discovery: the running instances with the tags, with their private IPs.
    let found = moto
        .call(
            "ec2",
            "describe_instances",
            json!({ "Filters": [
                { "Name": "tag:aws:autoscaling:groupName", "Values": ["web-asg"] },
                { "Name": "tag:Role", "Values": ["web"] },
                { "Name": "instance-state-name", "Values": ["running"] },
            ]}),
        )
        .expect("DescribeInstances");
    let mut instances: Vec<(String, String)> = found["Reservations"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["Instances"].as_array().unwrap().clone())
        .map(|i| {
            (
                i["InstanceId"].as_str().unwrap().to_owned(),
                i["PrivateIpAddress"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    instances.sort_by(|a, b| a.1.cmp(&b.1));
    let expected: Vec<(String, String)> = seeded
        .instance_ids
        .iter()
        .zip(fleet.hosts())
        .map(|(id, host)| (id.clone(), host.ip().to_string()))
        .collect();
    assert_eq!(instances, expected);
    let stopped = moto
        .call(
            "ec2",
            "describe_instances",
            json!({ "InstanceIds": [seeded.stopped_instance_id] }),
        )
        .expect("DescribeInstances of the stopped one");
    assert_eq!(
        stopped["Reservations"][0]["Instances"][0]["State"]["Name"],
        "stopped"
    );

    // Host 0 serves 200 through its nginx; host 1's nginx has no app: 502.
    let mut server = fleet
        .host(0)
        .command("python3")
        .args(["-m", "http.server", "3000", "--bind", "127.0.0.1"])
        .current_dir(fleet.host(0).dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3 -m http.server in host 0");
    assert!(
        eventually(Duration::from_secs(20), || fleet.host(0).get("/").is_ok()),
        "host 0 does not serve: {:?}",
        fleet.host(0).get("/")
    );
    assert!(fleet.host(1).get("/").unwrap_err().contains("502"));
    let tg = &seeded.target_group_arn;
    let (i0, i1) = (&seeded.instance_ids[0], &seeded.instance_ids[1]);
    let mut health = moto.target_health(tg);
    health.sort();
    let mut expected = vec![
        (i0.clone(), "healthy".into(), None),
        (
            i1.clone(),
            "unhealthy".into(),
            Some("Target.ResponseCodeMismatch".into()),
        ),
    ];
    expected.sort();
    assert_eq!(health, expected);

    // Deregistered: draining for the delay (2 s), then unused and no longer listed.
    // Taken before the call: moto's clock for the delay starts during it.
    let deregistered = Instant::now();
    moto.call(
        "elbv2",
        "deregister_targets",
        json!({ "TargetGroupArn": tg, "Targets": [{ "Id": i0 }] }),
    )
    .expect("DeregisterTargets");
    assert!(
        moto.target_states(tg)
            .contains(&(i0.clone(), "draining".into())),
        "{:?}",
        moto.target_states(tg)
    );
    assert!(
        eventually(Duration::from_secs(10), || !moto
            .target_states(tg)
            .iter()
            .any(|(id, _)| id == i0)),
        "still listed: {:?}",
        moto.target_states(tg)
    );
    assert!(deregistered.elapsed() >= Duration::from_secs(2));
    let one = moto
        .call(
            "elbv2",
            "describe_target_health",
            json!({ "TargetGroupArn": tg, "Targets": [{ "Id": i0 }] }),
        )
        .unwrap();
    assert_eq!(
        one["TargetHealthDescriptions"][0]["TargetHealth"]["State"],
        "unused"
    );
    // Registered again, it is checked again at once.
    moto.call(
        "elbv2",
        "register_targets",
        json!({ "TargetGroupArn": tg, "Targets": [{ "Id": i0 }] }),
    )
    .expect("RegisterTargets");
    assert!(
        moto.target_states(tg)
            .contains(&(i0.clone(), "healthy".into()))
    );
    // Its app gone, host 0 fails its checks too (nginx answers 502).
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        eventually(Duration::from_secs(10), || moto
            .target_states(tg)
            .contains(&(i0.clone(), "unhealthy".into()))),
        "{:?}",
        moto.target_health(tg)
    );
    // An nginx that accepts but never answers: the check times out (after 1 s).
    let nginx = fleet.host(1).nginx_pids();
    assert!(nginx.len() >= 2, "nginx has no worker: {nginx:?}");
    nginx.iter().for_each(|pid| signal(*pid, libc::SIGSTOP));
    let health = moto.target_health(tg);
    nginx.iter().for_each(|pid| signal(*pid, libc::SIGCONT));
    assert!(
        health.contains(&(
            i1.clone(),
            "unhealthy".into(),
            Some("Target.Timeout".into())
        )),
        "{health:?}"
    );
    // A stopped instance is `unused`, as moto has it.
    moto.stop_instance(i1);
    let health = moto.target_health(tg);
    assert!(
        health.contains(&(
            i1.clone(),
            "unused".into(),
            Some("Target.InvalidState".into())
        )),
        "{health:?}"
    );
}

#[test]
fn moto_enforces_iam_and_records_the_calls_of_others_only() {
    let moto = Moto::start();
    let ips = ["10.31.0.10".parse().unwrap(), "10.31.0.11".parse().unwrap()];
    let seeded = moto.seed(31, &ips, &[("Role", "web")], 5);
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": ["ec2:DescribeInstances", "elasticloadbalancing:DescribeTargetGroups"],
            "Resource": "*",
        }],
    })
    .to_string();
    let keys = moto.enforce_iam(&policy);
    moto.start_recording();

    let found = moto
        .call_as(&keys, "ec2", "describe_instances", json!({}))
        .expect("DescribeInstances is allowed");
    assert!(found["Reservations"].as_array().unwrap().len() >= 3);
    let (code, message) = moto
        .call_as(
            &keys,
            "ec2",
            "authorize_security_group_ingress",
            json!({ "GroupId": seeded.security_group_id, "IpPermissions": [{
                "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                "IpRanges": [{ "CidrIp": "203.0.113.7/32", "Description": "dropship" }],
            }]}),
        )
        .expect_err("AuthorizeSecurityGroupIngress is not allowed");
    assert_eq!(code, "AccessDenied", "{message}");
    assert!(
        message.contains("is not authorized to perform: ec2:AuthorizeSecurityGroupIngress"),
        "{message}"
    );
    let (code, message) = moto
        .call_as(
            &keys,
            "elbv2",
            "deregister_targets",
            json!({ "TargetGroupArn": seeded.target_group_arn,
                    "Targets": [{ "Id": seeded.instance_ids[0] }] }),
        )
        .expect_err("DeregisterTargets is not allowed");
    assert_eq!(code, "AccessDenied", "{message}");
    assert!(
        message.contains("elasticloadbalancing:DeregisterTargets"),
        "{message}"
    );
    // The `testing` keys of before are no IAM user's: refused too.
    let refused = moto
        .call_as(
            &("testing".into(), "testing".into()),
            "ec2",
            "describe_instances",
            json!({}),
        )
        .expect_err("unknown keys");
    assert_eq!(refused.0, "AuthFailure", "{refused:?}");

    // The harness goes on with its own admin user, and its calls are not recorded.
    moto.call(
        "ec2",
        "authorize_security_group_ingress",
        json!({ "GroupId": seeded.security_group_id, "IpPermissions": [{
            "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
            "IpRanges": [{ "CidrIp": "203.0.113.7/32", "Description": "dropship runner" }],
        }]}),
    )
    .expect("the harness may");
    assert_eq!(
        moto.ingress_rules(&seeded.security_group_id),
        vec![("203.0.113.7/32".into(), 22, "dropship runner".into())]
    );
    assert_eq!(
        moto.recorded_calls(),
        [
            "DescribeInstances",
            "AuthorizeSecurityGroupIngress",
            "DeregisterTargets",
            "DescribeInstances",
        ]
    );
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn the_existing_cli_deploys_to_netns_hosts_listed_by_hand() {
    crate::support::assert_root("hosts in network namespaces on a bridge");
    let fleet = NetFleet::new(2);
    let moto = Moto::start();
    let seeded = moto.seed_fleet(&fleet, &[("Role", "web")], 1);
    moto.start_recording();
    let app = node_app(fleet.work(), "v1", Behaviour::Healthy);
    // With the AWS environment of the EC2 tests, and no EC2 option: no AWS call.
    let out = moto.env_for(fleet.deploy(&app, "r1"), None).success();
    assert_eq!(moto.recorded_calls(), Vec::<String>::new());
    for host in fleet.hosts() {
        assert_eq!(
            host.live().as_deref(),
            Some("releases/r1"),
            "{}",
            out.stderr
        );
        let answer = host.get("/");
        assert!(
            answer.as_ref().is_ok_and(|body| body.starts_with("v1 ")),
            "host {}: {answer:?}\n{}",
            host.index(),
            out.stderr
        );
        let processes = host.pm2_processes();
        assert!(
            processes.iter().any(|(_, status)| status == "online"),
            "host {}: {processes:?}",
            host.index()
        );
    }
    // What the target group's health checks see once the app is up behind nginx.
    let mut states = moto.target_states(&seeded.target_group_arn);
    states.sort();
    let mut healthy: Vec<(String, String)> = seeded
        .instance_ids
        .iter()
        .map(|id| (id.clone(), "healthy".to_owned()))
        .collect();
    healthy.sort();
    assert_eq!(states, healthy);
}

#[test]
#[ignore = "needs root: hosts in network namespaces on a bridge"]
fn blue_green_switches_each_netns_hosts_own_nginx() {
    crate::support::assert_root("hosts in network namespaces on a bridge");
    let fleet = NetFleet::blue_green(2);
    let v1 = node_app(fleet.work(), "v1", Behaviour::Healthy);
    let v2 = node_app(fleet.work(), "v2", Behaviour::Healthy);
    fleet.deploy(&v1, "r1").success();
    let upstream = |host: &crate::support::netns::NetHost| {
        std::fs::read_to_string(host.dir().join("../nginx/upstream.conf")).unwrap()
    };
    let before: Vec<String> = fleet.hosts().iter().map(upstream).collect();
    for host in fleet.hosts() {
        let answer = host.get("/");
        assert!(
            answer.as_ref().is_ok_and(|b| b.starts_with("v1 ")),
            "{answer:?}"
        );
    }
    let out = fleet.deploy(&v2, "r2").success();
    for host in fleet.hosts() {
        let answer = host.get("/");
        assert!(
            answer.as_ref().is_ok_and(|b| b.starts_with("v2 ")),
            "host {}: {answer:?}\n{}\n{}",
            host.index(),
            out.stderr,
            host.nginx_error_log()
        );
        // Its own upstream file was rewritten (to the other port), and its own nginx
        // reloaded: the reload command ran on the host, in its namespaces.
        let now = upstream(host);
        assert_ne!(now, before[host.index()], "host {}", host.index());
    }
}
