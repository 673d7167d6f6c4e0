"""moto's server for dropship's EC2 fleet tests, with an ELBv2 health checker that
really checks (started by tests/support/moto.rs; `python3 moto_server.py [PORT]`).

Usage: python3 moto_server.py [PORT]. PORT 0 (the default) lets the kernel pick a
free port; the server prints `listening on 127.0.0.1:<port>` on stdout once it
accepts connections, so the harness never races for a port.

Why: moto's `FakeTargetGroup.health_for` answers `healthy` for every registered
target and `unused` for a deregistered one at once. A deploy that drains a batch,
switches it and waits for the load balancer to call it healthy again would then
test nothing: it would pass with an app that is down and never see a drain. The
fleet tests run real hosts in network namespaces (tests/support/netns.rs) whose
private IPs are the instances' `PrivateIpAddress`, so we can do what an ALB does.

Emulated (monkeypatched on moto 5.2.1's elbv2 models):
- Health of a REGISTERED instance target: each DescribeTargetHealth does one real
  HTTP GET to http://<instance private ip>:<port><path>, where <port> is the
  group's health check port (`traffic-port`, moto's default, means the target's
  port) and <path> the group's HealthCheckPath (default `/`), with a 1 s timeout
  (not the group's HealthCheckTimeoutSeconds: tests must not wait 5 s per call).
  200-399 -> `healthy`; another status -> `unhealthy`, `Target.ResponseCodeMismatch`;
  no answer within 1 s -> `unhealthy`, `Target.Timeout`; refused, reset or not an
  HTTP answer -> `unhealthy`, `Target.FailedHealthChecks`. Reasons and
  descriptions are the ones AWS documents for ALB targets.
  A stopped instance keeps moto's answer (`unused`, `Target.InvalidState`).
- DEREGISTERED targets: `draining`, `Target.DeregistrationInProgress`, until the
  group's `deregistration_delay.timeout_seconds` (default 300, set it low with
  ModifyTargetGroupAttributes) has passed since DeregisterTargets; then `unused`,
  `Target.NotRegistered`. DescribeTargetHealth without `Targets` lists draining
  targets too, as AWS does (moto lists only registered ones). Registering a
  draining target again makes it registered at once (AWS does the same).

Not emulated: the `initial` state (AWS reports `initial`,
`Target.RegistrationInProgress` until HealthyThresholdCount checks passed; here a
target is healthy from its first good answer), the group's Matcher (200-399 is
always healthy; moto fills in "200" for every group, so an explicit Matcher cannot
be told from the default), checks over HTTPS, and a load balancer that really
sends traffic (nothing here stops a drained target from receiving requests).
"""

import http.client
import os
import sys
import threading
import time

# moto's recorder reads this when it is imported: before any moto import.
os.environ.setdefault("MOTO_ENABLE_RECORDING", "True")

from moto.elbv2 import models as elbv2  # noqa: E402

HEALTH_TIMEOUT_SECS = 1.0

_lock = threading.Lock()
# target group ARN -> target id -> monotonic time of its deregistration
_deregistered_at = {}


def _delay_secs(group):
    value = group.attributes.get("deregistration_delay.timeout_seconds", 300)
    try:
        return float(value)
    except (TypeError, ValueError):
        return 300.0


def _check(ip, port, path):
    """One GET as an ALB health checker sends it: (state, reason, description)."""
    conn = http.client.HTTPConnection(ip, int(port), timeout=HEALTH_TIMEOUT_SECS)
    try:
        conn.request("GET", path, headers={"User-Agent": "ELB-HealthChecker/2.0"})
        status = conn.getresponse().status
    except TimeoutError:
        return ("unhealthy", "Target.Timeout", "Request timed out")
    except (OSError, http.client.HTTPException):
        return ("unhealthy", "Target.FailedHealthChecks", "Health checks failed")
    finally:
        conn.close()
    if 200 <= status <= 399:
        return ("healthy", None, None)
    return (
        "unhealthy",
        "Target.ResponseCodeMismatch",
        f"Health checks failed with these codes: [{status}]",
    )


_original_register = elbv2.FakeTargetGroup.register
_original_deregister = elbv2.FakeTargetGroup.deregister
_original_health_for = elbv2.FakeTargetGroup.health_for
_original_describe_target_health = elbv2.ELBv2Backend.describe_target_health


def register(self, targets):
    _original_register(self, targets)
    with _lock:
        times = _deregistered_at.setdefault(self.arn, {})
        for target in targets:
            times.pop(target["Id"], None)


def deregister(self, targets):
    _original_deregister(self, targets)
    now = time.monotonic()
    with _lock:
        times = _deregistered_at.setdefault(self.arn, {})
        for target in targets:
            times[target["Id"]] = now


def _draining(group):
    """Ids of deregistered targets still within the deregistration delay."""
    now = time.monotonic()
    with _lock:
        times = dict(_deregistered_at.get(group.arn, {}))
    return [t for t, at in times.items() if now - at < _delay_secs(group)]


def health_for(self, target, ec2_backend):
    target_id = target["Id"]
    registered = self.targets.get(target_id)
    if registered is None:
        if target_id in self.deregistered_targets and target_id in _draining(self):
            t = self.deregistered_targets[target_id]
            return elbv2.FakeHealthStatus(
                target_id,
                target.get("Port", t["Port"]),
                self.health_check_port,
                "draining",
                "Target.DeregistrationInProgress",
                "Target deregistration is in progress",
            )
        return _original_health_for(self, target, ec2_backend)
    if not target_id.startswith("i-"):
        return _original_health_for(self, target, ec2_backend)
    instance = ec2_backend.get_instance_by_id(target_id)
    if instance is None or instance.state != "running":
        return _original_health_for(self, target, ec2_backend)
    port = self.health_check_port
    if port in (None, "traffic-port"):
        port = registered["Port"]
    path = self.health_check_path or "/"
    state, reason, description = _check(instance.private_ip_address, port, path)
    return elbv2.FakeHealthStatus(
        target_id,
        registered["Port"],
        self.health_check_port,
        state,
        reason,
        description,
    )


def describe_target_health(self, target_group_arn, targets):
    if not targets:
        group = self.target_groups.get(target_group_arn)
        if group is not None:
            targets = list(group.targets.values()) + [
                group.deregistered_targets[t]
                for t in _draining(group)
                if t in group.deregistered_targets and t not in group.targets
            ]
    return _original_describe_target_health(self, target_group_arn, targets)


elbv2.FakeTargetGroup.register = register
elbv2.FakeTargetGroup.deregister = deregister
elbv2.FakeTargetGroup.health_for = health_for
elbv2.ELBv2Backend.describe_target_health = describe_target_health


def main():
    from werkzeug.serving import make_server

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        create_backend_app,
    )

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", port, app, threaded=True)
    print(f"listening on 127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
