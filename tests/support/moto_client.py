"""The fleet tests' own AWS client, for seeding moto and looking at what a deploy did
(run by tests/support/moto.rs): `python3 moto_client.py <command> '<json args>'`
prints one JSON value on stdout. AWS_ENDPOINT_URL, the credentials and AWS_REGION
come from the environment.

Every request carries `dropship-harness` in its User-Agent, so that
`recorded_calls` can leave the harness's own calls out of moto's recording.
"""

import base64
import json
import os
import sys
import urllib.parse
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HARNESS_AGENT = "dropship-harness"


def client(service, args=None):
    """A boto3 client marked as the harness's, unless args["foreign"] (a stand-in for
    another program, whose calls the recording keeps)."""
    args = args or {}
    kwargs = {}
    if args.get("access_key_id"):
        kwargs["aws_access_key_id"] = args["access_key_id"]
        kwargs["aws_secret_access_key"] = args["secret_access_key"]
    agent = None if args.get("foreign") else HARNESS_AGENT
    return boto3.client(
        service,
        config=Config(user_agent_extra=agent, retries={"max_attempts": 1}),
        **kwargs,
    )


def seed(args):
    """VPC, subnet, security group, one running instance per host IP (tagged), one
    stopped instance, and an HTTP target group on `port` with the running ones."""
    n = args["subnet"]
    ec2 = client("ec2", args)
    elbv2 = client("elbv2", args)
    vpc = ec2.create_vpc(CidrBlock=f"10.{n}.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.{n}.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(
        GroupName=f"web-{n}", Description="web servers", VpcId=vpc
    )["GroupId"]
    tags = [{"Key": k, "Value": v} for k, v in args.get("tags", {}).items()]

    def run(ip):
        spec = {
            "ImageId": "ami-12c6146b",
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceType": "t3.micro",
            "SubnetId": subnet,
            "SecurityGroupIds": [group],
            "PrivateIpAddress": ip,
        }
        if tags:
            spec["TagSpecifications"] = [{"ResourceType": "instance", "Tags": tags}]
        return ec2.run_instances(**spec)["Instances"][0]["InstanceId"]

    instances = [run(ip) for ip in args["hosts"]]
    stopped = run(args["stopped_ip"])
    ec2.stop_instances(InstanceIds=[stopped])
    tg = elbv2.create_target_group(
        Name=f"web-{n}",
        Protocol="HTTP",
        Port=args.get("port", 80),
        VpcId=vpc,
        HealthCheckPath=args.get("health_path", "/"),
        TargetType="instance",
    )["TargetGroups"][0]["TargetGroupArn"]
    elbv2.modify_target_group_attributes(
        TargetGroupArn=tg,
        Attributes=[
            {
                "Key": "deregistration_delay.timeout_seconds",
                "Value": str(args.get("deregistration_delay", 300)),
            }
        ],
    )
    elbv2.register_targets(TargetGroupArn=tg, Targets=[{"Id": i} for i in instances])
    return {
        "vpc_id": vpc,
        "subnet_id": subnet,
        "security_group_id": group,
        "instance_ids": instances,
        "stopped_instance_id": stopped,
        "target_group_arn": tg,
    }


def target_states(args):
    health = client("elbv2", args).describe_target_health(TargetGroupArn=args["target_group_arn"])
    return [
        [d["Target"]["Id"], d["TargetHealth"]["State"], d["TargetHealth"].get("Reason")]
        for d in health["TargetHealthDescriptions"]
    ]


def ingress_rules(args):
    groups = client("ec2", args).describe_security_groups(GroupIds=[args["group_id"]])
    rules = []
    for permission in groups["SecurityGroups"][0].get("IpPermissions", []):
        for ip_range in permission.get("IpRanges", []):
            rules.append(
                [
                    ip_range["CidrIp"],
                    permission.get("FromPort", -1),
                    ip_range.get("Description", ""),
                ]
            )
    return rules


def stop_instance(args):
    client("ec2", args).stop_instances(InstanceIds=[args["instance_id"]])
    return None


def call(args):
    """Any boto3 call: {"ok": response} or {"error": {"code", "message"}}."""
    try:
        response = getattr(client(args["service"], args), args["method"])(
            **args.get("params", {})
        )
    except ClientError as err:
        error = err.response.get("Error", {})
        return {"error": {"code": error.get("Code", ""), "message": error.get("Message", "")}}
    response.pop("ResponseMetadata", None)
    return {"ok": json.loads(json.dumps(response, default=str))}


def enforce_iam(args):
    """An IAM user with `policy` inline and its keys, an admin user for the harness,
    then moto's IAM enforcement on for every later request."""
    iam = client("iam", args)

    def user(name, policy):
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=policy)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    name = args.get("user", "dropship-deploy")
    deploy = user(name, args["policy"])
    admin_policy = json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    )
    admin = user(f"{name}-harness", admin_policy)
    # moto 5.2.1's reset-auth reads its body with float(request.data): "0", not
    # JSON, and not as a form (Flask leaves request.data empty for one).
    request = urllib.request.Request(
        os.environ["AWS_ENDPOINT_URL"] + "/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain", "User-Agent": HARNESS_AGENT},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()
    return {"deploy": list(deploy), "harness": list(admin)}


def action_of(entry):
    headers = {k.lower(): v for k, v in entry.get("headers", {}).items()}
    target = headers.get("x-amz-target")
    if target:
        return target.rsplit(".", 1)[-1]
    body = entry.get("body") or ""
    if entry.get("body_encoded"):
        body = base64.b64decode(body).decode("utf-8", "replace")
    query = urllib.parse.urlparse(entry.get("url", "")).query
    for text in (body, query):
        action = urllib.parse.parse_qs(text).get("Action")
        if action:
            return action[0]
    return f"{entry.get('method', '?')} {urllib.parse.urlparse(entry.get('url', '')).path}"


def recorded_calls(args):
    """The actions in moto's recording, in order, without the harness's own."""
    url = os.environ["AWS_ENDPOINT_URL"] + "/moto-api/recorder/download-recording"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode("utf-8")
    calls = []
    for line in text.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        agent = {k.lower(): v for k, v in entry.get("headers", {}).items()}.get("user-agent", "")
        path = urllib.parse.urlparse(entry.get("url", "")).path
        if HARNESS_AGENT in agent or path.startswith("/moto-api/"):
            continue
        calls.append(action_of(entry))
    return calls


COMMANDS = {
    "seed": seed,
    "target_states": target_states,
    "ingress_rules": ingress_rules,
    "stop_instance": stop_instance,
    "call": call,
    "enforce_iam": enforce_iam,
    "recorded_calls": recorded_calls,
}

if __name__ == "__main__":
    command = sys.argv[1]
    arguments = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    json.dump(COMMANDS[command](arguments), sys.stdout)
    sys.stdout.write("\n")
