"""The deployment files: the image runs as a fixed non-root user that owns only what it writes,
and a NetworkPolicy lets only Dagster's own pods reach the code server's port.

No Docker daemon runs on this machine (`docker info`), so the image is not built here: the
Dockerfile is parsed (instructions, line continuations, ARG/ENV defaults substituted) and what
a build would do is read from it. Likewise no cluster: the policy is checked as the Kubernetes
object it declares.
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


def _image() -> tuple[list[tuple[str, str]], dict[str, str], str, list[list[str]]]:
    """The final stage, its ARG/ENV defaults, its final user, and its RUN commands split at
    `&&` and `;` with the defaults substituted."""
    stage = final_stage(instructions(DOCKERFILE.read_text()))
    values = defaults(stage)
    users = [substitute(args, values) for command, args in stage if command == "USER"]
    assert users, "the image never leaves root: no USER instruction in its final stage"
    commands = [
        shlex.split(part)
        for command, args in stage
        if command == "RUN"
        for part in re.split(r"&&|;", substitute(args, values))
        if part.strip()
    ]
    return stage, values, users[-1], commands


def _owners(commands: list[list[str]]) -> dict[str, str]:
    """The owner each path is given last by a `chown` (recursive or not)."""
    owners: dict[str, str] = {}
    for c in commands:
        if c[0] == "chown":
            owner, *paths = [a for a in c[1:] if not a.startswith("-")]
            owners |= dict.fromkeys(paths, owner.split(":")[0])
    return owners


def test_image_runs_as_a_fixed_non_root_user_owning_only_its_homes():
    stage, values, final_user, commands = _image()
    user, _, group = final_user.partition(":")
    # numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd
    assert user.isdigit() and int(user) != 0, f"final USER {final_user!r} is root or a name"
    assert group.isdigit() and int(group) != 0, f"final USER {final_user!r}: root group"
    # the user exists with that uid
    assert any(c[0] == "useradd" and "--uid" in c and user in c for c in commands), commands
    # it owns the homes it writes, and the code stays root's
    owned = [path for path, owner in _owners(commands).items() if owner in (user, "skiff")]
    for path in (values["SKIFF_HOME"], f"{values['DAGSTER_HOME']}/storage"):
        assert path in owned, f"{path} is not given to uid {user}: {owned}"
    workdir = [args for command, args in stage if command == "WORKDIR"][-1]
    assert not {".", "./", workdir, "/", "/opt"} & set(owned), f"the code is the user's: {owned}"
    # the code server still listens where the webserver and daemon reach it, as that user
    (cmd,) = [args for command, args in stage if command == "CMD"]
    assert '"0.0.0.0", "-p", "4000"' in cmd
    order = [command for command, _ in stage]
    last_user = max(i for i, command in enumerate(order) if command == "USER")
    assert last_user < order.index("CMD"), "the last USER must come before the CMD"


def test_the_instance_config_is_roots_and_read_only_to_the_process():
    """dagster.yaml (storage, run launcher) cannot be replaced by the process it configures:
    it and DAGSTER_HOME are root's, the file has no write bit, and the user owns only the
    storage folder beneath."""
    stage, values, final_user, commands = _image()
    user = final_user.partition(":")[0]
    home = values["DAGSTER_HOME"]
    config = f"{home}/dagster.yaml"
    copies = [substitute(args, values).split() for command, args in stage if command == "COPY"]
    (copy,) = [c for c in copies if c[-1] == config]
    assert not [a for a in copy if a.startswith("--chown")], f"{config} is copied as {copy}"
    owners = _owners(commands)
    for path in (home, config):
        assert owners.get(path) == "root", f"{path} is not root's: {owners}"
    # nothing at or above DAGSTER_HOME is handed to the user (a chown -R would take the file)
    above = [
        p for p, o in owners.items() if o in (user, "skiff") and f"{home}/".startswith(f"{p}/")
    ]
    assert not above, f"uid {user} is given {above}, which holds {config}"
    modes = {c[-1]: c[-2] for c in commands if c[0] == "chmod"}
    assert config in modes and int(modes[config], 8) & 0o222 == 0, f"{config} mode: {modes}"
    assert home in modes and int(modes[home], 8) & 0o022 == 0, f"{home} mode: {modes}"


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
