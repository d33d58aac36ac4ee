"""`regionguard data update | rollback | status`, over real HTTP from a mirror on 127.0.0.1.

ADDRESS lies in an AWS prefix of eu-central-1 (Frankfurt: region DE) that no Zoom table places;
the "v2" data set moves that prefix to us-east-1 (US), so which set is in force shows in
`explain`, and in what a running `regionguard dns` answers for a Zoom name resolving there.
Never a real upstream URL: every run gives --mirror-base or --mirror.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from regionguard.core import datasets, sources
from regionguard.core.reload import EngineHolder
from regionguard.exits import EXIT_DATA, EXIT_OK
from tests.data_mirror import AWS_NAME, BUNDLED, ORACLE_NAME, Mirror, bundled_files
from tests.dns_support import POLICY, DnsProcess, ZoneServer, addresses, ask

BIN = Path(sys.executable).parent
ADDRESS = "52.93.244.7"
NAME = "data-test.zoom.us"


def moved(aws: bytes, address: str, place: str) -> bytes:
    """AWS ip-ranges.json with every prefix holding `address` moved to region `place`."""
    doc = json.loads(aws)
    ip = ipaddress.ip_address(address)
    hit = 0
    for p in doc["prefixes"]:
        if ip in ipaddress.ip_network(p["ip_prefix"]):
            p["region"] = p["network_border_group"] = place
            hit += 1
    assert hit, f"{address} is in no AWS prefix"
    return json.dumps(doc, indent=2).encode()


V1 = bundled_files()
V2 = dict(V1, **{AWS_NAME: moved(V1[AWS_NAME], ADDRESS, "us-east-1")})


def env_for(data: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, REGIONGUARD_DATA_DIR=str(data), **extra)


def data_cmd(data: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "regionguard"), "data", *args], capture_output=True, text=True,
                          env=env_for(data), timeout=timeout)


def update(data: Path, mirror: Mirror, *args: str) -> subprocess.CompletedProcess:
    return data_cmd(data, "update", "--mirror-base", mirror.base, "--progress", "never", *args)


def region_of(data: Path, address: str = ADDRESS) -> str | None:
    run = subprocess.run([str(BIN / "regionguard"), "explain", "--json", address, "--host", NAME],
                         capture_output=True, text=True, env=env_for(data), timeout=120)
    assert run.returncode in (0, 1), run.stderr
    return json.loads(run.stdout)["addresses"][0]["region"]


def in_force(data: Path) -> str | None:
    try:
        return os.readlink(data / datasets.CURRENT)
    except OSError:
        return None


def test_the_bundled_snapshot_is_in_force_until_an_update(tmp_path):
    data = tmp_path / "data"
    assert region_of(data) == "DE"
    status = data_cmd(data, "status")
    assert status.returncode == EXIT_OK and "bundled snapshot" in status.stdout
    assert "aws 2026-08-22" in status.stdout


def test_a_good_update_is_in_force_and_shown_with_its_dates(tmp_path):
    data = tmp_path / "data"
    with Mirror(V2) as mirror:
        run = update(data, mirror, "--progress", "always")    # the last option wins
    assert run.returncode == EXIT_OK, run.stderr
    assert "fetched in" in run.stdout
    assert "ip-ranges.json" in run.stderr and "100.0%" in run.stderr   # the progress bar
    assert sorted(set(mirror.requests)) == sorted(V2)       # every file, from the mirror
    current = data / in_force(data)
    assert datasets.check_set(current) is None
    assert (current / "aws-ip-ranges.json").read_bytes() == V2[AWS_NAME]
    assert region_of(data) == "US"
    explained = subprocess.run([str(BIN / "regionguard"), "explain", ADDRESS], capture_output=True,
                               text=True, env=env_for(data), timeout=120)
    assert "data: updated set" in explained.stdout and "aws 2026-08-22" in explained.stdout
    validated = subprocess.run([str(BIN / "regionguard"), "validate", str(BUNDLED.parent / "policy.yaml")],
                               capture_output=True, text=True, env=env_for(data), timeout=120)
    assert validated.returncode == 0 and "data: updated set" in validated.stdout
    assert f"zoom-ranges {time.strftime('%Y-%m-%d', time.gmtime())}" in validated.stdout


def test_a_download_without_content_length_shows_the_bytes_received(tmp_path):
    data = tmp_path / "data"
    with Mirror(V2) as mirror:
        mirror.faults[AWS_NAME] = "no-length"
        run = update(data, mirror, "--progress", "always")
    assert run.returncode == EXIT_OK, run.stderr
    size = len(V2[AWS_NAME]) / 1e6
    assert re.search(rf"ip-ranges\.json +{size:.1f} MB received", run.stderr), run.stderr
    assert (data / in_force(data) / "aws-ip-ranges.json").read_bytes() == V2[AWS_NAME]


def _shrunk(files: dict[str, bytes], name: str = AWS_NAME, keep: float = 0.5) -> dict[str, bytes]:
    """`files` with `name` cut to its first `keep` of entries (AWS's prefixes, or a Zoom file's
    lines); still a well-formed file, served with a 200."""
    if name == AWS_NAME:
        doc = json.loads(files[name])
        doc["prefixes"] = doc["prefixes"][: int(len(doc["prefixes"]) * keep)]
        return dict(files, **{name: json.dumps(doc).encode()})
    lines = files[name].splitlines(keepends=True)
    return dict(files, **{name: b"".join(lines[: int(len(lines) * keep)])})


def zoom_total(files: dict[str, bytes]) -> int:
    return len({line for name, body in files.items() if name.startswith("Zoom")
                for line in body.split()})


def test_one_zoom_file_is_a_small_part_of_the_zoom_total():
    """Why the shrink check is per file: ZoomMeetings.txt emptied, or halved, leaves the total of
    Zoom's prefixes within the default --max-shrink (0.2)."""
    assert zoom_total(V1) * 0.8 < zoom_total(_shrunk(V1, "ZoomMeetings.txt", 0)) < zoom_total(V1)
    assert len(V1["ZoomMeetings.txt"].split()) > 10


@pytest.mark.parametrize("fault, file, says", [
    ("truncate", AWS_NAME, "truncated"),
    ("truncate", "Zoom.txt", "Zoom.txt"),
    ("html", "ZoomMeetings.txt", "HTML"),
    ("html", ORACLE_NAME, "HTML"),
    ("slow", ORACLE_NAME, "timed out"),
    ("404", "ZoomPhone.txt", "HTTP 404"),
    ("shrunk", AWS_NAME, "--force"),
    ("emptied", "ZoomMeetings.txt", "ZoomMeetings.txt: no entries at all"),
    ("shrunk", "ZoomMeetings.txt", "ZoomMeetings.txt: "),
])
def test_a_failed_update_leaves_the_data_in_force(tmp_path, fault, file, says):
    data = tmp_path / "data"
    with Mirror(V1) as mirror:
        assert update(data, mirror).returncode == EXIT_OK
    before = in_force(data)
    assert region_of(data) == "DE"
    served = {"shrunk": _shrunk(V2, file), "emptied": _shrunk(V2, file, 0)}.get(fault, V2)
    with Mirror(served, slow_seconds=3) as mirror:
        if fault not in ("shrunk", "emptied"):
            mirror.faults[file] = fault
        started = time.monotonic()
        run = update(data, mirror, "--timeout", "1", "--retries", "1")
    assert run.returncode == EXIT_DATA, run.stdout + run.stderr
    assert "the data in force is unchanged" in run.stderr and says in run.stderr
    if fault in ("shrunk", "emptied"):
        assert "--force" in run.stderr
    assert time.monotonic() - started < 60
    assert in_force(data) == before
    assert len(list((data / "sets").iterdir())) == 1          # nothing half-written left behind
    assert region_of(data) == "DE"


def test_a_shrunken_source_is_accepted_with_force(tmp_path):
    data = tmp_path / "data"
    with Mirror(V1) as mirror:
        assert update(data, mirror).returncode == EXIT_OK
    with Mirror(_shrunk(V2)) as mirror:
        run = update(data, mirror, "--force")
    assert run.returncode == EXIT_OK, run.stderr


def test_a_set_whose_manifest_has_no_per_file_counts_is_compared_by_its_rows(tmp_path):
    """A set written before manifests counted each Zoom file: the rows its zoom-ranges.csv
    attributes to each file stand in (never more than the file held), so an emptied file is
    still refused; with --force it is accepted, and its count (0) recorded from then on."""
    data = tmp_path / "data"
    with Mirror(V1) as mirror:
        assert update(data, mirror).returncode == EXIT_OK
    manifest_path = data / in_force(data) / datasets.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    assert manifest["zoom_files"]["ZoomMeetings.txt"] == len(V1["ZoomMeetings.txt"].split())
    del manifest["zoom_files"]
    manifest_path.write_text(json.dumps(manifest))
    with Mirror(_shrunk(V1, "ZoomMeetings.txt", 0)) as mirror:
        refused = update(data, mirror)
        assert refused.returncode == EXIT_DATA and "ZoomMeetings.txt: no entries" in refused.stderr
        forced = update(data, mirror, "--force")
    assert forced.returncode == EXIT_OK, forced.stderr
    manifest = json.loads((data / in_force(data) / datasets.MANIFEST).read_text())
    assert manifest["zoom_files"]["ZoomMeetings.txt"] == 0


def test_the_zoom_tables_cloud_rows_follow_the_clouds(tmp_path):
    # 3.21.137.130: a Zoom range (3.21.137.128/25) inside AWS us-east-2, placed US by the bundled
    # zoom-datacenters.csv; AWS moving its prefix to Frankfurt moves the Zoom table's row too
    data = tmp_path / "data"
    zoom_address = "3.21.137.130"
    assert region_of(data, zoom_address) == "US"
    files = dict(V1, **{AWS_NAME: moved(V1[AWS_NAME], zoom_address, "eu-central-1")})
    with Mirror(files) as mirror:
        assert update(data, mirror).returncode == EXIT_OK
    table = (data / in_force(data) / "zoom-datacenters.csv").read_text()
    assert "3.21.137.128/25,DE,DE,AWS eu-central-1 (Frankfurt),cloud" in table
    run = subprocess.run([str(BIN / "regionguard"), "explain", "--json", zoom_address],
                         capture_output=True, text=True, env=env_for(data), timeout=120)
    found = json.loads(run.stdout)["addresses"][0]
    assert found["region"] == "DE" and found["chosen_source"] == "zoom-dc"


def test_one_file_from_its_own_mirror(tmp_path):
    data = tmp_path / "data"
    with Mirror(V1) as first, Mirror({AWS_NAME: V2[AWS_NAME]}) as second:
        run = update(data, first, "--mirror", f"aws={second.base}/{AWS_NAME}")
        assert run.returncode == EXIT_OK, run.stderr
        assert AWS_NAME not in first.requests and second.requests == [AWS_NAME]
    assert region_of(data) == "US"
    bad = data_cmd(data, "update", "--mirror", "nosuch=http://127.0.0.1:9/x")
    assert bad.returncode == EXIT_DATA and "KEY=URL" in bad.stderr


def test_rollback_puts_the_previous_set_back(tmp_path):
    data = tmp_path / "data"
    assert data_cmd(data, "rollback").returncode == EXIT_DATA      # nothing to roll back to
    with Mirror(V1) as mirror:
        assert update(data, mirror).returncode == EXIT_OK
    with Mirror(V2) as mirror:
        assert update(data, mirror).returncode == EXIT_OK
    assert region_of(data) == "US"
    run = data_cmd(data, "rollback")
    assert run.returncode == EXIT_OK, run.stderr
    assert region_of(data) == "DE"
    assert data_cmd(data, "update", "--rollback").returncode == EXIT_OK   # and forth again
    assert region_of(data) == "US"


def test_a_damaged_set_is_never_read(tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    with Mirror(V2) as mirror:
        assert update(data, mirror).returncode == EXIT_OK
    current = data / in_force(data)
    with open(current / "zoom-ranges.csv", "ab") as f:   # no longer the size its manifest says
        f.write(b"1.2.3.0/24,zoom,x,2026-01-01\n")
    assert datasets.check_set(current) is not None
    assert region_of(data) == "DE"      # the bundled snapshot, not half an updated set


def test_a_running_engine_holder_follows_the_set_in_force(tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    monkeypatch.setenv("REGIONGUARD_DATA_DIR", str(data))
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    holder = EngineHolder(policy)
    assert holder.engine.locator.locate(ADDRESS).region == "DE"
    with Mirror(V2) as mirror:
        assert update(data, mirror).returncode == EXIT_OK
    assert holder.check() is None
    assert holder.engine.locator.locate(ADDRESS).region == "US"
    first = str(data / in_force(data))
    assert any(key[0].startswith(first) for key in sources._file_cache)
    with Mirror(V1) as mirror:
        assert update(data, mirror).returncode == EXIT_OK
    assert holder.check() is None
    assert holder.engine.locator.locate(ADDRESS).region == "DE"
    # the tables of a set no longer in force are not kept
    assert not any(key[0].startswith(first) for key in sources._file_cache)
    # a set that is not whole: refused, the running engine (and its data) stays, and says why
    with Mirror(V2) as mirror:
        assert update(data, mirror).returncode == EXIT_OK
    (data / in_force(data) / "cloud-regions.csv").unlink()
    engine = holder.engine
    with caplog.at_level(logging.ERROR):
        error = holder.check()
    assert error is not None and "the new data set is not used" in str(error)
    assert "cloud-regions.csv is missing" in str(error)
    assert holder.engine is engine and holder.engine.locator.locate(ADDRESS).region == "DE"
    assert "not reloaded" in caplog.text


def test_front_ends_warn_at_start_up_when_the_data_is_old(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("REGIONGUARD_DATA_DIR", str(tmp_path / "none"))
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    monkeypatch.setenv(datasets.MAX_AGE_ENV, "0")           # 0: never warn
    with caplog.at_level(logging.WARNING):
        EngineHolder(policy)
    assert "days old" not in caplog.text
    monkeypatch.setenv(datasets.MAX_AGE_ENV, "1")
    with caplog.at_level(logging.WARNING):
        EngineHolder(policy)
    assert "aws data is" in caplog.text and "oracle data is" in caplog.text
    assert "regionguard data update" in caplog.text


def _zone_answer(query: dns.message.Message, transport: str) -> bytes | None:
    reply = dns.message.make_response(query)
    q = query.question[0]
    if q.name.to_text().rstrip(".") == NAME and q.rdtype == 1:   # A
        reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", ADDRESS, "198.51.100.10"))
    return reply.to_wire()


def test_a_running_dns_server_answers_with_the_new_data_after_an_update(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("REGIONGUARD_DATA_DIR", str(data))     # the server's environment
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)                                  # opt_in: [DE]
    with Mirror(V1) as mirror:
        assert update(data, mirror).returncode == EXIT_OK
    monkeypatch.setenv(datasets.MAX_AGE_ENV, "1")             # the bundled AWS file is older
    zone = ZoneServer()
    zone.answer = _zone_answer
    server = DnsProcess(policy, [zone.address], "--state-dir", "off")
    try:
        assert addresses(ask(server.port, NAME)) == {ADDRESS, "198.51.100.10"}   # DE: allowed
        log = "".join(server.log)
        assert "aws data is" in log and "days old" in log      # warned at start-up
        with Mirror(V2) as mirror:
            assert update(data, mirror).returncode == EXIT_OK
        deadline = time.monotonic() + 30
        seen = None
        while time.monotonic() < deadline:
            seen = addresses(ask(server.port, NAME))
            if seen == {"198.51.100.10"}:                      # US now: filtered out
                break
            time.sleep(0.2)
        assert seen == {"198.51.100.10"}, "the server never switched to the new data"
        assert server.proc.poll() is None
        assert data_cmd(data, "rollback").returncode == EXIT_OK
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and seen != {ADDRESS, "198.51.100.10"}:
            seen = addresses(ask(server.port, NAME))
            time.sleep(0.2)
        assert seen == {ADDRESS, "198.51.100.10"}, "the server never went back after a rollback"
    finally:
        server.close()
        zone.close()


def test_a_sources_file_replaces_the_official_list(tmp_path):
    data = tmp_path / "data"
    with Mirror(V2) as mirror:
        sources_file = tmp_path / "sources.yaml"
        zoom = "".join(f"  - {mirror.base}/{name}\n" for name in V2 if name.startswith("Zoom"))
        sources_file.write_text(f"aws: {{url: {mirror.base}/{AWS_NAME}}}\n"
                                f"oracle: {{url: {mirror.base}/{ORACLE_NAME}}}\nzoom:\n{zoom}")
        run = data_cmd(data, "update", "--sources", str(sources_file))
        assert run.returncode == EXIT_OK, run.stderr
    assert region_of(data) == "US"
    (tmp_path / "bad.yaml").write_text("aws: nothing\n")
    bad = data_cmd(data, "update", "--sources", str(tmp_path / "bad.yaml"))
    assert bad.returncode == EXIT_DATA and "bad.yaml" in bad.stderr and "zoom:" in bad.stderr


def test_one_update_at_a_time(tmp_path):
    data = tmp_path / "data"
    # the first holds the lock until the second has been turned away (not for a fixed 4 s)
    with Mirror(V2, slow_seconds=60) as mirror:
        mirror.faults[AWS_NAME] = "slow"
        first = subprocess.Popen([str(BIN / "regionguard"), "data", "update", "--mirror-base",
                                  mirror.base, "--progress", "never"], env=env_for(data),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while AWS_NAME not in mirror.requests and time.monotonic() < deadline:
                time.sleep(0.05)                              # the first holds the lock now
            second = update(data, mirror)
            mirror.release.set()
            assert second.returncode == EXIT_DATA and "another" in second.stderr
            assert first.wait(timeout=60) == EXIT_OK, first.stderr.read()
        finally:
            first.kill()
            first.wait()
            first.stdout.close()
            first.stderr.close()
    assert region_of(data) == "US"
