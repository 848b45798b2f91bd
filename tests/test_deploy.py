"""The deployment files: the image runs as a fixed non-root user that owns only what it writes,
and a NetworkPolicy lets only Dagster's own pods reach the code server's port.

Docker is not installed on this machine, so the image is not built here: the Dockerfile is
parsed (instructions, line continuations, ARG/ENV defaults substituted) and what a build would
do is read from it. Likewise no cluster: the policy is checked as the Kubernetes object it
declares.
"""

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
POLICY = ROOT / "deploy" / "networkpolicy.yaml"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined, comments out."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # a comment inside a continuation
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        command, _, args = (pending + stripped).partition(" ")
        out.append((command.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    return out


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (command, _) in enumerate(steps) if command == "FROM"]
    assert starts, "no FROM in the Dockerfile"
    return steps[starts[-1] :]


def defaults(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The ARG and ENV values a build sees by default (later ones win)."""
    values: dict[str, str] = {}
    for command, args in stage:
        if command == "ARG":
            name, _, value = args.partition("=")
            values[name] = value
        elif command == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                values[name] = value
    return values


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def test_image_runs_as_a_fixed_non_root_user_owning_only_its_homes():
    stage = final_stage(instructions(DOCKERFILE.read_text()))
    values = defaults(stage)
    users = [substitute(args, values) for command, args in stage if command == "USER"]
    assert users, "the image never leaves root: no USER instruction in its final stage"
    user, _, group = users[-1].partition(":")
    # numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd
    assert user.isdigit() and int(user) != 0, f"final USER {users[-1]!r} is root or a name"
    assert group.isdigit() and int(group) != 0, f"final USER {users[-1]!r}: root group"
    commands = [
        shlex.split(part)
        for command, args in stage
        if command == "RUN"
        for part in re.split(r"&&|;", substitute(args, values))
        if part.strip()
    ]
    # the user exists with that uid
    assert any(c[0] == "useradd" and "--uid" in c and user in c for c in commands), commands
    # it owns the homes it writes, and the code stays root's
    owned = [
        path
        for c in commands
        if c[0] == "chown"
        for owner, *paths in [[a for a in c[1:] if not a.startswith("-")]]
        if owner.split(":")[0] in (user, "skiff")
        for path in paths
    ]
    for path in (values["SKIFF_HOME"], values["DAGSTER_HOME"]):
        assert path in owned, f"{path} is not given to uid {user}: {owned}"
    workdir = [args for command, args in stage if command == "WORKDIR"][-1]
    assert not {".", "./", workdir, "/", "/opt"} & set(owned), f"the code is the user's: {owned}"
    # the code server still listens where the webserver and daemon reach it, as that user
    (cmd,) = [args for command, args in stage if command == "CMD"]
    assert '"0.0.0.0", "-p", "4000"' in cmd
    order = [command for command, _ in stage]
    last_user = max(i for i, command in enumerate(order) if command == "USER")
    assert last_user < order.index("CMD"), "the last USER must come before the CMD"


def test_network_policy_admits_only_dagster_pods_to_the_code_server_port():
    documents = [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    (policy,) = [d for d in documents if d.get("kind") == "NetworkPolicy"]
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    spec = policy["spec"]
    assert "Ingress" in spec["policyTypes"]
    assert spec["podSelector"]["matchLabels"], "the policy must select the code server's pods"
    ports = [p["port"] for rule in spec["ingress"] for p in rule["ports"]]
    assert ports == [4000]
    for rule in spec["ingress"]:
        # every rule names its peers: none admits the whole cluster or the internet
        assert rule.get("from"), rule
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"], peer
    peers = [
        peer["podSelector"]["matchLabels"] for rule in spec["ingress"] for peer in rule["from"]
    ]
    components = {labels.get("component") for labels in peers}
    assert {"dagster-webserver", "dagster-daemon"} <= components, peers
