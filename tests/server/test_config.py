"""Server configuration: defaults, the TOML file, environment overrides, validation."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from chorus.raft import Member
from chorus.server.config import DEV_SECRET, Config, ConfigError, ServerSpec, default_servers, load

SECRET = "a-long-enough-cluster-secret"

FILE = f"""
[cluster]
secret = "{SECRET}"
data_dir = "state"
write_concern = "all"

[timing]
tick_ms = 20
election_timeout_ms = [400, 800]
heartbeat_ms = 100

[[server]]
id = 1
host = "10.0.0.1"
peer_port = 7001
client_port = 7101

[[server]]
id = 2
host = "10.0.0.2"
peer_port = 7001
client_port = 7101

[[server]]
id = 5
peer_port = 7005
client_port = 7105
"""


def _write(tmp_path: Path, text: str, name: str = "chorus.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _servers(*specs: tuple[int, str, int, int]) -> str:
    return "".join(
        f'\n[[server]]\nid = {i}\nhost = "{h}"\npeer_port = {p}\nclient_port = {c}\n' for i, h, p, c in specs
    )


def test_defaults_without_a_file() -> None:
    cfg = load(None, env={})
    assert cfg.servers == (
        ServerSpec(1, "127.0.0.1", 8081, 8091),
        ServerSpec(2, "127.0.0.1", 8082, 8092),
        ServerSpec(3, "127.0.0.1", 8083, 8093),
    )
    assert [s.peer_address for s in cfg.servers] == ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]
    assert [s.client_address for s in cfg.servers] == ["127.0.0.1:8091", "127.0.0.1:8092", "127.0.0.1:8093"]
    assert cfg.data_dir == Path("data")
    assert cfg.replica_dir(2) == Path("data") / "replica2"
    assert cfg.write_concern == "majority"
    assert cfg.secret == DEV_SECRET
    assert (cfg.tick_ms, cfg.election_timeout_ms, cfg.heartbeat_ms) == (50, (1500, 3000), 150)
    assert cfg.membership.voters == frozenset({1, 2, 3})
    assert cfg.membership.address(2) == Member(2, "127.0.0.1:8082", "127.0.0.1:8092")


def test_the_file_is_read(tmp_path: Path) -> None:
    cfg = load(_write(tmp_path, FILE), env={})
    assert cfg.servers == (
        ServerSpec(1, "10.0.0.1", 7001, 7101),
        ServerSpec(2, "10.0.0.2", 7001, 7101),
        ServerSpec(5, "127.0.0.1", 7005, 7105),
    )
    assert cfg.secret == SECRET
    assert cfg.secret_bytes == SECRET.encode()
    assert cfg.write_concern == "all"
    assert (cfg.tick_ms, cfg.election_timeout_ms, cfg.heartbeat_ms) == (20, (400, 800), 100)
    assert cfg.membership.voters == frozenset({1, 2, 5}) and cfg.membership.address(5) is not None
    assert cfg.spec(5).client_address == "127.0.0.1:7105"
    with pytest.raises(ConfigError, match="not in the configuration"):
        cfg.spec(3)


def test_a_relative_data_dir_is_relative_to_the_files_folder(tmp_path: Path) -> None:
    sub = tmp_path / "etc" / "chorus"
    sub.mkdir(parents=True)
    cfg = load(_write(sub, FILE), env={})
    assert cfg.data_dir == sub / "state"
    assert cfg.replica_dir(5) == sub / "state" / "replica5"


def test_an_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    cfg = load(_write(tmp_path, FILE.replace('data_dir = "state"', f'data_dir = "{target.as_posix()}"')), env={})
    assert cfg.data_dir == target


def test_a_file_without_data_dir_uses_data_next_to_it(tmp_path: Path) -> None:
    cfg = load(_write(tmp_path, f'[cluster]\nsecret = "{SECRET}"\n'), env={})
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.servers == default_servers()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "CHORUS_SECRET": "secret-from-the-environment",
        "CHORUS_DATA_DIR": str(tmp_path / "envdata"),
        "CHORUS_WRITE_CONCERN": "async",
        "CHORUS_TICK_MS": "10",
        "CHORUS_HEARTBEAT_MS": "30",
        "CHORUS_ELECTION_TIMEOUT_MS": "150,300",
        "CHORUS_SNAPSHOT_EVERY": "777",
        "CHORUS_SNAPSHOT_KEEP": "55",
    }
    cfg = load(_write(tmp_path, FILE), env=env)
    assert cfg.secret == "secret-from-the-environment"
    assert cfg.data_dir == tmp_path / "envdata"
    assert cfg.write_concern == "async"
    assert (cfg.tick_ms, cfg.heartbeat_ms, cfg.election_timeout_ms) == (10, 30, (150, 300))
    assert (cfg.snapshot_every, cfg.snapshot_keep) == (777, 55)
    # What the environment does not name still comes from the file.
    assert [s.id for s in cfg.servers] == [1, 2, 5]


@pytest.mark.parametrize(
    "name, value, attr, expected",
    [
        ("CHORUS_SECRET", "another-long-secret-value", "secret", "another-long-secret-value"),
        ("CHORUS_DATA_DIR", "/var/lib/chorus", "data_dir", Path("/var/lib/chorus")),
        ("CHORUS_WRITE_CONCERN", "majority", "write_concern", "majority"),
        ("CHORUS_TICK_MS", "25", "tick_ms", 25),
        ("CHORUS_HEARTBEAT_MS", "120", "heartbeat_ms", 120),
        ("CHORUS_ELECTION_TIMEOUT_MS", "1000,2000", "election_timeout_ms", (1000, 2000)),
        ("CHORUS_SNAPSHOT_EVERY", "5000", "snapshot_every", 5000),
    ],
)
def test_each_variable_overrides_the_file_alone(tmp_path: Path, name: str, value: str, attr: str, expected) -> None:
    path = _write(tmp_path, FILE)
    assert getattr(load(path, env={}), attr) != expected
    assert getattr(load(path, env={name: value}), attr) == expected


def test_environment_applies_without_a_file() -> None:
    cfg = load(None, env={"CHORUS_WRITE_CONCERN": "all", "CHORUS_SECRET": SECRET})
    assert (cfg.write_concern, cfg.secret) == ("all", SECRET)
    assert cfg.servers == default_servers()


def test_the_process_environment_is_used_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("CHORUS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CHORUS_WRITE_CONCERN", "async")
    assert load(None).write_concern == "async"


def test_raft_config_reflects_the_timing(tmp_path: Path) -> None:
    rc = load(_write(tmp_path, FILE), env={}).raft_config()
    assert (rc.tick_ms, rc.election_timeout_ms, rc.heartbeat_ms) == (20, (400, 800), 100)
    assert (rc.election_ticks_min, rc.election_ticks_max, rc.heartbeat_ticks) == (20, 40, 5)
    rc = load(None, env={"CHORUS_TICK_MS": "10", "CHORUS_HEARTBEAT_MS": "30",
                         "CHORUS_ELECTION_TIMEOUT_MS": "150,300"}).raft_config()
    assert (rc.tick_ms, rc.election_timeout_ms, rc.heartbeat_ms) == (10, (150, 300), 30)


def _error(tmp_path: Path, text: str | None, env: dict[str, str] | None = None) -> str:
    path = None if text is None else _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path, env=env or {})
    assert str(err.value)
    return str(err.value)


def test_duplicate_server_ids_are_refused(tmp_path: Path) -> None:
    text = f'[cluster]\nsecret = "{SECRET}"\n' + _servers((1, "h", 1, 2), (2, "h", 3, 4), (1, "h", 5, 6))
    assert "distinct" in _error(tmp_path, text)


def test_non_positive_server_ids_are_refused(tmp_path: Path) -> None:
    text = f'[cluster]\nsecret = "{SECRET}"\n' + _servers((0, "h", 1, 2), (2, "h", 3, 4))
    assert "positive" in _error(tmp_path, text)


@pytest.mark.parametrize(
    "specs",
    [
        ((1, "h", 7001, 7101), (2, "h", 7001, 7102)),  # same peer port
        ((1, "h", 7001, 7101), (2, "h", 7002, 7101)),  # same client port
        ((1, "h", 7001, 7101), (2, "h", 7101, 7102)),  # one's peer port is another's client port
        ((1, "h", 7001, 7001), (2, "h", 7002, 7102)),  # a server's two ports
    ],
)
def test_two_servers_on_one_address_are_refused(tmp_path: Path, specs) -> None:
    assert "address" in _error(tmp_path, f'[cluster]\nsecret = "{SECRET}"\n' + _servers(*specs))


def test_the_same_port_on_different_hosts_is_fine(tmp_path: Path) -> None:
    text = f'[cluster]\nsecret = "{SECRET}"\n' + _servers((1, "a", 7001, 7101), (2, "b", 7001, 7101))
    assert len(load(_write(tmp_path, text), env={}).servers) == 2


def test_a_bad_write_concern_is_refused(tmp_path: Path) -> None:
    assert "write_concern" in _error(tmp_path, FILE.replace('write_concern = "all"', 'write_concern = "most"'))
    assert "quorum" in _error(tmp_path, None, {"CHORUS_WRITE_CONCERN": "quorum"})


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    assert "16" in _error(tmp_path, FILE.replace(SECRET, "short-secret"))
    assert "16" in _error(tmp_path, None, {"CHORUS_SECRET": "x" * 15})
    assert load(None, env={"CHORUS_SECRET": "x" * 16}).secret == "x" * 16


@pytest.mark.parametrize(
    "env",
    [
        {"CHORUS_HEARTBEAT_MS": "800"},  # heartbeat above half the shortest timeout (1500)
        {"CHORUS_ELECTION_TIMEOUT_MS": "200,400"},  # the default heartbeat (150) is above 100
        {"CHORUS_ELECTION_TIMEOUT_MS": "3000,1500", "CHORUS_HEARTBEAT_MS": "100"},  # min above max
        {"CHORUS_ELECTION_TIMEOUT_MS": "0,300", "CHORUS_HEARTBEAT_MS": "100"},
        {"CHORUS_HEARTBEAT_MS": "0"},
        {"CHORUS_TICK_MS": "0"},
        {"CHORUS_TICK_MS": "1000"},  # an election timeout of one tick
    ],
)
def test_timeouts_that_make_no_sense_are_refused(tmp_path: Path, env: dict[str, str]) -> None:
    _error(tmp_path, None, env)


def test_a_heartbeat_too_slow_for_the_file_timeouts_is_refused(tmp_path: Path) -> None:
    msg = _error(tmp_path, FILE.replace("heartbeat_ms = 100", "heartbeat_ms = 300"))
    assert "heartbeat" in msg


@pytest.mark.parametrize(
    "name, value",
    [
        ("CHORUS_TICK_MS", "fast"),
        ("CHORUS_HEARTBEAT_MS", "1.5"),
        ("CHORUS_SNAPSHOT_EVERY", ""),
        ("CHORUS_SNAPSHOT_KEEP", "many"),
        ("CHORUS_ELECTION_TIMEOUT_MS", "150,abc"),
        ("CHORUS_ELECTION_TIMEOUT_MS", "150"),
        ("CHORUS_ELECTION_TIMEOUT_MS", "150,300,450"),
    ],
)
def test_bad_environment_values_are_refused(tmp_path: Path, name: str, value: str) -> None:
    msg = _error(tmp_path, None, {name: value})
    assert "integer" in msg or "min,max" in msg


def test_a_malformed_file_is_refused_and_named(tmp_path: Path) -> None:
    msg = _error(tmp_path, "[cluster\nsecret = ")
    assert "chorus.toml" in msg


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load(tmp_path / "nope.toml", env={})


@pytest.mark.parametrize("missing", ["id", "peer_port", "client_port"])
def test_a_server_without_a_required_key_is_refused(tmp_path: Path, missing: str) -> None:
    lines = [f'[cluster]\nsecret = "{SECRET}"\n', "[[server]]"]
    lines += [f"{k} = {v}" for k, v in (("id", 1), ("peer_port", 7001), ("client_port", 7101)) if k != missing]
    msg = _error(tmp_path, "\n".join(lines) + "\n")
    assert "peer_port" in msg and missing in msg


def test_a_server_with_a_non_integer_port_is_refused(tmp_path: Path) -> None:
    text = f'[cluster]\nsecret = "{SECRET}"\n[[server]]\nid = 1\npeer_port = "high"\nclient_port = 7101\n'
    assert "[[server]]" in _error(tmp_path, text)


@pytest.mark.parametrize(
    "timing",
    ['tick_ms = "fast"', "election_timeout_ms = [1500]", "election_timeout_ms = 1500",
     'heartbeat_ms = "often"'],
)
def test_bad_timing_values_in_the_file_are_a_config_error(tmp_path: Path, timing: str) -> None:
    # An operator's typo should get a ConfigError naming the problem, not a traceback.
    _error(tmp_path, f'[cluster]\nsecret = "{SECRET}"\n[timing]\n{timing}\n')


def test_the_fingerprint_does_not_depend_on_the_order_of_servers() -> None:
    a = Config(servers=default_servers())
    b = Config(servers=tuple(reversed(default_servers())))
    c = Config(servers=(default_servers()[1], default_servers()[2], default_servers()[0]))
    assert a.fingerprint == b.fingerprint == c.fingerprint
    # Nor on anything but the server list.
    assert replace(a, secret=SECRET, write_concern="all", tick_ms=10).fingerprint == a.fingerprint


@pytest.mark.parametrize(
    "change",
    [{"peer_port": 9999}, {"client_port": 9999}, {"host": "10.0.0.9"}, {"id": 4}],
    ids=["peer_port", "client_port", "host", "id"],
)
def test_the_fingerprint_changes_with_the_server_list(change: dict) -> None:
    servers = default_servers()
    other = (*servers[:2], replace(servers[2], **change))
    assert Config(servers=servers).fingerprint != Config(servers=other).fingerprint


def test_the_fingerprint_changes_when_a_server_is_added() -> None:
    assert Config(servers=default_servers(3)).fingerprint != Config(servers=default_servers(4)).fingerprint


def test_the_fingerprint_is_the_same_from_a_file_in_another_order(tmp_path: Path) -> None:
    specs = [(1, "h", 7001, 7101), (2, "h", 7002, 7102), (3, "h", 7003, 7103)]
    head = f'[cluster]\nsecret = "{SECRET}"\n'
    a = load(_write(tmp_path, head + _servers(*specs), "a.toml"), env={})
    b = load(_write(tmp_path, head + _servers(*reversed(specs)), "b.toml"), env={})
    assert a.fingerprint == b.fingerprint
    c = load(_write(tmp_path, head + _servers(*specs[:2], (3, "h", 7004, 7103)), "c.toml"), env={})
    assert c.fingerprint != a.fingerprint


# ---------------------------------------------------------------------------- TLS and limits
def test_tls_files_from_a_directory_relative_to_the_file(tmp_path: Path) -> None:
    cfg = load(_write(tmp_path, FILE + '\n[tls]\ndir = "certs"\n'), env={})
    assert cfg.tls is not None
    p = cfg.tls.paths(5)
    assert (p.ca, p.cert, p.key) == (tmp_path / "certs" / "ca.crt", tmp_path / "certs" / "server-5.crt",
                                     tmp_path / "certs" / "server-5.key")


def test_tls_files_one_by_one_with_the_server_id_in_their_names(tmp_path: Path) -> None:
    text = FILE + '\n[tls]\nca = "/etc/chorus/ca.pem"\ncert = "keys/{id}.pem"\nkey = "keys/{id}.key"\n'
    p = load(_write(tmp_path, text), env={}).tls.paths(2)  # type: ignore[union-attr]
    assert (p.ca, p.cert, p.key) == (Path("/etc/chorus/ca.pem"), tmp_path / "keys" / "2.pem", tmp_path / "keys" / "2.key")


def test_no_tls_unless_configured_and_the_environment_can_name_a_directory(tmp_path: Path) -> None:
    assert load(_write(tmp_path, FILE), env={}).tls is None
    cfg = load(_write(tmp_path, FILE), env={"CHORUS_TLS_DIR": "/srv/tls"})
    assert cfg.tls is not None and cfg.tls.paths(1).cert == Path("/srv/tls/server-1.crt")


@pytest.mark.parametrize("table, complaint", [
    ('[tls]\nca = "a"\n', "needs dir, or all of ca, cert and key"),
    ('[tls]\ndir = 5\n', "[tls] takes"),
    ('[tls]\ndir = "x"\nverify = "no"\n', "has no verify"),
    ("[limits]\nidle_timeout = 5\n", "[limits] has no idle_timeout"),
    ('[limits]\nidle_timeout_s = "long"\n', "idle_timeout_s must be a non-negative"),
    ("[limits]\npending_per_source = 2.5\n", "pending_per_source must be a non-negative int"),
    ("[limits]\nregister_burst = -1\n", "register_burst must be a non-negative"),
])
def test_bad_tls_and_limits_tables_are_refused_plainly(tmp_path: Path, table: str, complaint: str) -> None:
    assert complaint in _error(tmp_path, FILE + "\n" + table)


def test_limits_are_read_and_the_rest_keep_their_defaults(tmp_path: Path) -> None:
    cfg = load(_write(tmp_path, FILE + "\n[limits]\nidle_timeout_s = 2\nregister_burst = 50\n"), env={})
    assert cfg.limits.idle_timeout_s == 2 and cfg.limits.register_burst == 50
    assert cfg.limits.pending_per_source == Config(servers=default_servers()).limits.pending_per_source


def test_a_server_off_loopback_must_have_tls_and_its_own_secret_unless_insecure(tmp_path: Path) -> None:
    from chorus.server.main import refusal

    cfg = load(_write(tmp_path, FILE), env={})  # hosts 10.0.0.x, no [tls]
    assert "without TLS" in (refusal(cfg, 1, insecure=False) or "")
    assert refusal(cfg, 1, insecure=True) is None
    with_tls = load(_write(tmp_path, FILE + '\n[tls]\ndir = "t"\n'), env={})
    assert refusal(with_tls, 1, insecure=False) is None
    assert "development secret" in (refusal(replace(with_tls, secret=DEV_SECRET), 1, insecure=False) or "")
    local = load(None, env={})  # loopback: plaintext and the development secret are allowed
    assert local.tls is None and local.secret == DEV_SECRET and refusal(local, 1, insecure=False) is None
