"""What a new user meets in the first minute (issue 19): `--version`, the bundled example
policies printed by `regionguard policy example`, and the LICENSE that pyproject.toml names."""

import subprocess
import tomllib

from tests.conftest import BIN, CONFIG, ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "regionguard"), *args], capture_output=True, text=True,
                          timeout=120)


def test_version_is_the_package_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    r = run("--version")
    assert r.returncode == 0 and r.stdout == f"regionguard {version}\n"


def test_policy_example_lists_and_prints_the_bundled_examples(tmp_path):
    shipped = sorted(p.stem for p in (CONFIG / "examples").glob("*.yaml"))
    assert "eu-only" in shipped
    for listing in (run("policy", "example"), run("policy", "example", "--list")):
        assert listing.returncode == 0, listing.stderr
        assert [line.split()[0] for line in listing.stdout.splitlines()] == ["default", *shipped]
    for name in shipped:
        r = run("policy", "example", name)
        assert r.returncode == 0, r.stderr
        assert r.stdout == (CONFIG / "examples" / f"{name}.yaml").read_text()
        # what it prints is a policy file that is valid where the user saves it
        saved = tmp_path / f"{name}.yaml"
        saved.write_text(r.stdout)
        v = run("validate", str(saved))
        assert v.returncode == 0, v.stdout + v.stderr


def test_policy_example_default_prints_the_policy_used_when_none_is_given(tmp_path):
    # after a plain `pip install .` there is no config/ to read it from
    listing = run("policy", "example").stdout.splitlines()
    assert listing[0].split()[0] == "default" and "default policy" in listing[0]
    r = run("policy", "example", "default")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (CONFIG / "policy.yaml").read_text()
    assert run("policy", "example", "default.yaml").stdout == r.stdout
    saved = tmp_path / "mine.yaml"
    saved.write_text(r.stdout)
    v = run("validate", str(saved))
    assert v.returncode == 0, v.stdout + v.stderr


def test_policy_example_with_an_unknown_name_says_which_exist():
    r = run("policy", "example", "eu-olny")
    assert r.returncode == 2 and r.stdout == ""
    assert "'eu-olny' does not exist" in r.stderr and "eu-only" in r.stderr
    assert "Traceback" not in r.stderr


def test_license_file_is_the_mit_licence_pyproject_names():
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 regionguard developers" in text
