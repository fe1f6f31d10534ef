"""install.sh and the systemd units, run for real in a staging root.

install.sh runs with --root into a temporary directory, from a snapshot of the
checkout, so that other edits to the tree cannot change the source hash
between two runs. pip builds the virtualenv once per module and needs PyPI or
a mirror. Without systemd as PID 1, the services are started the way their
units would start them: the ExecStart command with the EnvironmentFile values,
the UMask, and NoNewPrivileges, CapabilityBoundingSet= and
MemoryDenyWriteExecute= applied through setpriv(1) and prctl(PR_SET_MDWE).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import redis

from tests.services import free_port, wait_for_port
from tshjobs.settings import Settings, env_name, load_settings, read_env_file

REPO = Path(__file__).resolve().parent.parent
UNIT_NAMES = ("tshjobs.target", "tshjobs-consumer.service", "tshjobs-dashboard.service")
SERVICE_NAMES = ("tshjobs-consumer.service", "tshjobs-dashboard.service")
TARGET_PREFIX = "/opt/tshjobs"
SECRET_LINE = re.compile(r"^TSHJOBS_SECRET_KEY=([0-9a-f]{64})$", re.MULTILINE)
# Files of a working tree that are not part of the checkout's content.
SNAPSHOT_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
    "*.egg-info", "build", "dist", "node_modules", "demo-data", "test-artifacts",
)  # fmt: skip
REDIS_CONF_BEFORE = "port 6379\n"

# prctl(2) constants of Linux 6.3 and later (include/uapi/linux/prctl.h).
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
MDWE_WRAPPER = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_MDWE) failed: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""


def _kernel_has_mdwe() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", MDWE_WRAPPER, "/bin/true"], check=False,
        capture_output=True,
    )  # fmt: skip
    return probe.returncode == 0


MDWE_SUPPORTED = _kernel_has_mdwe()


@dataclass
class Staged:
    """A checkout snapshot and the tree install.sh laid down from it."""

    checkout: Path
    root: Path
    output: subprocess.CompletedProcess

    def path(self, target: str) -> Path:
        """Return where the target path `target` lies in the staging root."""
        return self.root / target.lstrip("/")

    @property
    def env_file(self) -> Path:
        return self.path("/etc/tshjobs/tshjobs.env")


def run_install(checkout: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(checkout / "install.sh"), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"install.sh exited {result.returncode}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}"
    )


def snapshot_checkout(destination: Path) -> Path:
    shutil.copytree(REPO, destination, ignore=SNAPSHOT_IGNORE, symlinks=True)
    return destination


def copy_root(staged: Staged, destination: Path) -> Staged:
    shutil.copytree(staged.root, destination, symlinks=True)
    return Staged(staged.checkout, destination, staged.output)


def tree_state(root: Path) -> dict[str, tuple]:
    """Map each path under root to its type, mode, mtime and content hash."""
    state = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(directory, name)
            info = full.lstat()
            if stat.S_ISLNK(info.st_mode):
                detail = os.readlink(full)
            elif stat.S_ISREG(info.st_mode):
                detail = hashlib.sha256(full.read_bytes()).hexdigest()
            else:
                detail = ""
            relative = str(full.relative_to(root))
            state[relative] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode),
                               info.st_mtime_ns, detail)  # fmt: skip
    return state


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file into section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def parse_environment_file(path: Path) -> dict[str, str]:
    """Read NAME=value lines as systemd's EnvironmentFile= does for values
    without backslashes. Lines that start with # or ; are comments, and outer
    quotes are removed."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def unit_process_args(staged: Staged, unit: str, env_overrides: dict[str, str],
                      subcommand: list[str] | None = None) -> dict:  # fmt: skip
    """Build Popen arguments that run `unit`'s ExecStart as systemd would.

    The environment is the EnvironmentFile values plus `env_overrides`, and
    the working directory is TSHJOBS_DATA_DIR. `subcommand` replaces the
    arguments after the program (for example ["doctor"]).
    """
    service = parse_unit(staged.path(f"/etc/systemd/system/{unit}"))["Service"]
    exec_start = shlex.split(service["ExecStart"][0])
    program = exec_start[0]
    assert program.startswith(TARGET_PREFIX + "/"), program
    argv = [str(staged.path(program)), *(subcommand or exec_start[1:])]

    env_file = staged.path(service["EnvironmentFile"][0])
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    env.update(parse_environment_file(env_file))
    # tshjobs also reads the env file itself, by default from
    # /etc/tshjobs/tshjobs.env, so point it at the staged copy.
    env["TSHJOBS_ENV_FILE"] = str(env_file)
    env.update(env_overrides)
    env.setdefault("HOME", env["TSHJOBS_DATA_DIR"])

    wrapper = []
    if service.get("NoNewPrivileges") == ["yes"]:
        wrapper += ["--no-new-privs"]
    if service.get("CapabilityBoundingSet") == [""]:
        wrapper += ["--inh-caps=-all", "--bounding-set=-all"]
    if wrapper:
        wrapper = ["setpriv", *wrapper, "--"]
    if service.get("MemoryDenyWriteExecute") == ["yes"] and MDWE_SUPPORTED:
        wrapper += [sys.executable, "-c", MDWE_WRAPPER]

    return {
        "args": wrapper + argv,
        "env": env,
        "cwd": env["TSHJOBS_DATA_DIR"],
        "umask": int(service["UMask"][0], 8),
        # A process group of its own takes the place of the unit's cgroup.
        "start_new_session": True,
    }


def handles_sigterm(pid: int) -> bool:
    """Tell whether process `pid` has a SIGTERM handler (SigCgt in /proc).

    Python catches SIGINT from the start, but SIGTERM only once Huey or
    gunicorn installs its handlers, after their workers are started.
    """
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(
        re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16
    )
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def kill_unit_processes(process: subprocess.Popen) -> None:
    """SIGKILL what is left of the process group, as systemd does to the cgroup
    when TimeoutStopSec expires."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Staged:
    """The tree of `install.sh --root ROOT --with-redis`, built once."""
    checkout = snapshot_checkout(tmp_path_factory.mktemp("checkout") / "tshjobs")
    root = tmp_path_factory.mktemp("root")
    (root / "etc/redis").mkdir(parents=True)
    (root / "etc/redis/redis.conf").write_text(REDIS_CONF_BEFORE)
    result = run_install(checkout, "--root", str(root), "--with-redis")
    assert_ok(result)
    return Staged(checkout, root, result)


@pytest.fixture
def unit_env(tmp_path, redis_url):
    """Settings that point a unit's process at tmp_path and the test Redis."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return {
        "TSHJOBS_DATA_DIR": str(data_dir),
        "TSHJOBS_ERP_DATABASE_URL": f"sqlite:///{tmp_path / 'erp.db'}",
        "TSHJOBS_REDIS_URL": redis_url,
        "TSHJOBS_SMTP_HOST": "127.0.0.1",
        # A port that nothing listens on, unless a test starts a server.
        "TSHJOBS_SMTP_PORT": str(free_port()),
    }


# --- the script itself ---


def test_install_sh_syntax():
    result = subprocess.run(["bash", "-n", str(REPO / "install.sh")],
                            check=False, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (apt-get install shellcheck)")  # fmt: skip
def test_install_sh_shellcheck():
    result = subprocess.run(["shellcheck", str(REPO / "install.sh")],
                            check=False, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout


def test_help_lists_every_option(tmp_path):
    # --root first: if option parsing broke, the script would only stage.
    result = run_install(REPO, "--root", str(tmp_path), "--help")
    assert_ok(result)
    for option in ("--prefix DIR", "--with-redis", "--no-start", "--root DIR",
                   "--uninstall", "--purge", "--help", "PYTHON"):  # fmt: skip
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option: --bogus"),
        (["--prefix", "opt/tshjobs"], "--prefix must be an absolute path"),
        (["--prefix", "/opt/../etc"], "--prefix must be an absolute path"),
        (["--prefix"], "--prefix requires a directory"),
        (["--root", "/nonexistent/tshjobs-root"], "directory not found"),
    ],
)
def test_invalid_options_rejected(tmp_path, args, message):
    # --root first: if option parsing broke, the script would only stage.
    result = run_install(REPO, "--root", str(tmp_path), *args)
    assert result.returncode == 1
    assert message in result.stderr


def test_non_root_user_rejected():
    # The checkout may sit in a directory that user 65534 cannot read, so
    # bash reads the script from its standard input.
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "bash", "-s"],
        input=(REPO / "install.sh").read_text(),
        check=False, capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert result.returncode == 1
    assert "must run as root" in result.stderr
    assert "--root DIR" in result.stderr


# --- the staged tree ---


def test_staged_tree_modes(staged):
    expected_modes = {
        "/opt/tshjobs": 0o755,
        "/opt/tshjobs/.installed": 0o644,
        "/etc/tshjobs": 0o750,
        "/etc/tshjobs/tshjobs.env": 0o640,
        "/var/lib/tshjobs": 0o2770,
        "/etc/redis/tshjobs.conf": 0o640,
    }
    for name in UNIT_NAMES:
        expected_modes[f"/etc/systemd/system/{name}"] = 0o644
    for target, mode in expected_modes.items():
        path = staged.path(target)
        assert path.exists(), f"{target} is missing"
        actual = stat.S_IMODE(path.stat().st_mode)
        assert actual == mode, f"{target}: mode {oct(actual)}, expected {oct(mode)}"


def test_env_file_has_new_secret(staged):
    text = staged.env_file.read_text()
    secrets_found = SECRET_LINE.findall(text)
    assert len(secrets_found) == 1
    output = staged.output.stdout + staged.output.stderr
    assert secrets_found[0] not in output


def test_env_file_is_example_plus_secret(staged):
    example_path = staged.checkout / "packaging/tshjobs.env.example"
    example = example_path.read_text().splitlines()
    installed = staged.env_file.read_text().splitlines()
    assert len(installed) == len(example)
    for example_line, installed_line in zip(example, installed, strict=True):
        if example_line.startswith("TSHJOBS_SECRET_KEY="):
            assert SECRET_LINE.match(installed_line)
        else:
            assert installed_line == example_line


def test_example_sets_every_setting():
    values = read_env_file(REPO / "packaging/tshjobs.env.example")
    for item in fields(Settings):
        assert env_name(item.name) in values, f"{env_name(item.name)} is missing"
    assert set(values) <= {env_name(item.name) for item in fields(Settings)}


def test_example_values_are_valid(staged):
    settings = load_settings({"TSHJOBS_ENV_FILE": str(staged.env_file)})
    assert settings.redis_url == "redis://127.0.0.1:6379/1"
    assert settings.erp_database_url.startswith("postgresql://")
    assert settings.smtp_port == 587
    assert settings.smtp_security == "starttls"
    assert settings.dashboard_bind == "127.0.0.1:8080"
    assert str(settings.data_dir) == "/var/lib/tshjobs"


def test_env_file_parsed_alike(staged):
    """systemd and tshjobs must read the same values from the env file."""
    by_systemd = parse_environment_file(staged.env_file)
    by_tshjobs = read_env_file(staged.env_file)
    assert by_systemd == by_tshjobs
    for name, value in by_tshjobs.items():
        assert not set(value) & set("\\\"'"), f"{name} has a quote or backslash"


def test_venv_runs_tshjobs(staged):
    result = subprocess.run(
        [str(staged.path("/opt/tshjobs/venv/bin/tshjobs")), "--help"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "consumer" in result.stdout
    assert "dashboard" in result.stdout


def test_install_record_names_version(staged):
    record = staged.path("/opt/tshjobs/.installed").read_text()
    assert "version=0.1.0" in record
    assert re.search(r"^source_sha256=[0-9a-f]{64}$", record, re.MULTILINE)


def test_redis_include_added_once(staged):
    text = staged.path("/etc/redis/redis.conf").read_text()
    assert text.startswith(REDIS_CONF_BEFORE)
    assert text.count("include /etc/redis/tshjobs.conf\n") == 1


def test_root_mode_prints_skipped_commands(staged):
    skipped = [line for line in staged.output.stderr.splitlines()
               if line.startswith("install.sh: --root: skipped: ")]  # fmt: skip
    for command in ("apt-get install", "useradd --system", "systemctl enable --now",
                    "tshjobs doctor", "CONFIG SET appendonly yes"):  # fmt: skip
        assert any(command in line for line in skipped), command


def test_second_run_changes_nothing(staged):
    before = tree_state(staged.root)
    secret_before = SECRET_LINE.search(staged.env_file.read_text()).group(1)
    result = run_install(staged.checkout, "--root", str(staged.root), "--with-redis")
    assert_ok(result)
    after = tree_state(staged.root)
    assert sorted(after) == sorted(before)
    changed = [path for path in before if before[path] != after[path]]
    assert changed == []
    assert SECRET_LINE.search(staged.env_file.read_text()).group(1) == secret_before
    assert "is up to date" in result.stderr
    assert "installed /" not in result.stderr
    assert "keeping the existing /etc/tshjobs/tshjobs.env" in result.stderr


def test_source_change_reinstalls(staged, tmp_path):
    checkout = snapshot_checkout(tmp_path / "checkout")
    init = checkout / "tshjobs/__init__.py"
    init.write_text(init.read_text() + "\nINSTALL_TEST_MARK = 1\n")
    copy = copy_root(staged, tmp_path / "root")
    units_before = {
        name: tree_state(copy.root)[f"etc/systemd/system/{name}"] for name in UNIT_NAMES
    }
    env_before = copy.env_file.read_bytes()
    record_before = copy.path("/opt/tshjobs/.installed").read_text()

    result = run_install(checkout, "--root", str(copy.root), "--with-redis")
    assert_ok(result)
    assert "installing tshjobs 0.1.0" in result.stderr
    assert copy.path("/opt/tshjobs/.installed").read_text() != record_before
    state = tree_state(copy.root)
    for name in UNIT_NAMES:
        assert state[f"etc/systemd/system/{name}"] == units_before[name]
    assert copy.env_file.read_bytes() == env_before
    marked = subprocess.run(
        [str(copy.path("/opt/tshjobs/venv/bin/python")), "-c",
         "import tshjobs; print(tshjobs.INSTALL_TEST_MARK)"],
        check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert marked.stdout.strip() == "1", marked.stderr


def test_prefix_option_moves_venv(staged, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    result = run_install(staged.checkout, "--root", str(root), "--prefix", "/srv/jobs",
                         "--no-start")  # fmt: skip
    assert_ok(result)
    assert (root / "srv/jobs/venv/bin/tshjobs").is_file()
    assert not (root / "opt/tshjobs").exists()
    for name in SERVICE_NAMES:
        service = parse_unit(root / "etc/systemd/system" / name)["Service"]
        assert service["ExecStart"][0].startswith("/srv/jobs/venv/bin/tshjobs ")


# --- the units ---


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian package systemd)")  # fmt: skip
def test_units_pass_systemd_analyze_verify(staged, tmp_path):
    # verify checks that ExecStart exists, so point it at the staged venv.
    for name in UNIT_NAMES:
        text = staged.path(f"/etc/systemd/system/{name}").read_text()
        text = text.replace(TARGET_PREFIX + "/", str(staged.path(TARGET_PREFIX)) + "/")
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / name) for name in UNIT_NAMES)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == ""


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian package systemd)")  # fmt: skip
@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_unit_exposure_at_most_2(staged, name):
    # systemd-analyze's threshold is in tenths: 20 is an exposure of 2.0.
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20",
         str(staged.path(f"/etc/systemd/system/{name}"))],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_unit_service_settings(staged, name):
    unit = parse_unit(staged.path(f"/etc/systemd/system/{name}"))
    service = unit["Service"]
    exec_start = shlex.split(service["ExecStart"][0])
    assert exec_start[0] == "/opt/tshjobs/venv/bin/tshjobs"
    assert exec_start[1] == name.removeprefix("tshjobs-").removesuffix(".service")
    assert service["User"] == ["tshjobs"]
    assert service["Group"] == ["tshjobs"]
    assert service["EnvironmentFile"] == ["/etc/tshjobs/tshjobs.env"]
    assert service["WorkingDirectory"] == ["/var/lib/tshjobs"]
    assert service["Restart"] == ["always"]
    assert service["RestartSec"] == ["5"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["ReadWritePaths"] == ["/var/lib/tshjobs"]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert service["CapabilityBoundingSet"] == [""]
    after = unit["Unit"]["After"][0].split()
    for dependency in ("network-online.target", "redis-server.service",
                       "postgresql.service"):  # fmt: skip
        assert dependency in after
    assert unit["Unit"]["Wants"] == ["network-online.target"]
    assert unit["Install"]["WantedBy"] == ["tshjobs.target"]


def test_consumer_unit_stops_gracefully(staged):
    service = parse_unit(staged.path("/etc/systemd/system/tshjobs-consumer.service"))
    assert service["Service"]["KillSignal"] == ["SIGINT"]
    assert service["Service"]["KillMode"] == ["mixed"]
    assert int(service["Service"]["TimeoutStopSec"][0]) > 300


# --- the services, started as their units would start them ---


@pytest.mark.skipif(not MDWE_SUPPORTED,
                    reason="the kernel has no prctl(PR_SET_MDWE) (Linux 6.3 or later)")  # fmt: skip
def test_unit_sandbox_emulation_applies(staged, unit_env):
    """The wrapper really sandboxes, and the venv's C extensions load in it."""
    process = unit_process_args(staged, "tshjobs-consumer.service", unit_env)
    probe = """
import mmap
import fpdf, gunicorn, huey, PIL.Image, psycopg, redis
import dashboard, tasks, tshjobs.cli
print("psycopg implementation", psycopg.pq.__impl__)
status = open("/proc/self/status").read()
print([line for line in status.splitlines() if line.startswith(("CapEff", "NoNewPrivs"))])
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("write+exec mapping allowed")
except OSError:
    print("write+exec mapping denied")
"""
    # Keep the wrapper, replace the program with a probe run by the venv.
    program = str(staged.path("/opt/tshjobs/venv/bin/tshjobs"))
    wrapper = process["args"][: process["args"].index(program)]
    venv_python = str(staged.path("/opt/tshjobs/venv/bin/python"))
    result = subprocess.run(wrapper + [venv_python, "-c", probe], check=False,
                            env=process["env"], cwd=process["cwd"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "psycopg implementation binary" in result.stdout
    assert "'CapEff:\\t0000000000000000'" in result.stdout
    assert "'NoNewPrivs:\\t1'" in result.stdout
    assert "write+exec mapping denied" in result.stdout


def test_doctor_names_failed_checks(staged, unit_env):
    process = unit_process_args(
        staged, "tshjobs-consumer.service", unit_env, ["doctor"]
    )
    result = subprocess.run(
        check=False, capture_output=True, text=True, timeout=120, **process
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "ok   settings: all TSHJOBS_* values are valid" in lines
    assert any(line.startswith("ok   queue: Redis reachable") for line in lines)
    assert any(line.startswith("FAIL ERP database: ") for line in lines)
    assert any(line.startswith("FAIL SMTP server: ") for line in lines)
    assert "Traceback" not in result.stdout + result.stderr
    assert "All checks passed." not in result.stdout


def test_doctor_passes_with_services(staged, unit_env):
    from aiosmtpd.controller import Controller

    class AcceptAll:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    smtp = Controller(AcceptAll(), hostname="127.0.0.1",
                      port=int(unit_env["TSHJOBS_SMTP_PORT"]))  # fmt: skip
    smtp.start()
    try:
        overrides = {**unit_env, "TSHJOBS_SMTP_SECURITY": "none",
                     "TSHJOBS_SMTP_USERNAME": ""}  # fmt: skip
        unit = "tshjobs-consumer.service"
        init = unit_process_args(staged, unit, overrides, ["erp", "init"])
        result = subprocess.run(
            check=False, capture_output=True, text=True, timeout=120, **init
        )
        assert result.returncode == 0, result.stderr
        doctor = unit_process_args(staged, unit, overrides, ["doctor"])
        result = subprocess.run(
            check=False, capture_output=True, text=True, timeout=120, **doctor
        )
    finally:
        smtp.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "All checks passed."


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_consumer_stops_on_sigint(staged, unit_env, tmp_path, worker_type):
    unit = staged.path("/etc/systemd/system/tshjobs-consumer.service")
    stop_timeout = int(parse_unit(unit)["Service"]["TimeoutStopSec"][0])
    overrides = {**unit_env, "TSHJOBS_WORKER_TYPE": worker_type}
    process = unit_process_args(staged, "tshjobs-consumer.service", overrides)
    log_path = tmp_path / "consumer.log"
    with log_path.open("w") as log:
        consumer = subprocess.Popen(stdout=log, stderr=subprocess.STDOUT, **process)
        try:
            # Huey sets its signal handlers after starting the workers; a
            # SIGINT before that leaves process workers running.
            deadline = time.monotonic() + 60
            while not handles_sigterm(consumer.pid):
                assert consumer.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)

            # KillMode=mixed: the signal goes to the main process only.
            started = time.monotonic()
            consumer.send_signal(signal.SIGINT)
            returncode = consumer.wait(timeout=stop_timeout)
            elapsed = time.monotonic() - started
        finally:
            kill_unit_processes(consumer)
    output = log_path.read_text()
    assert returncode == 0, output
    assert elapsed < stop_timeout
    assert "Received SIGINT" in output
    assert "Traceback" not in output


def test_dashboard_serves_and_stops(staged, unit_env, tmp_path):
    unit = "tshjobs-dashboard.service"
    service = parse_unit(staged.path(f"/etc/systemd/system/{unit}"))["Service"]
    assert "KillSignal" not in service, "gunicorn stops gracefully on SIGTERM"
    stop_timeout = int(service["TimeoutStopSec"][0])
    port = free_port()
    overrides = {**unit_env, "TSHJOBS_DASHBOARD_BIND": f"127.0.0.1:{port}"}
    init = unit_process_args(staged, unit, overrides, ["erp", "init"])
    result = subprocess.run(
        check=False, capture_output=True, text=True, timeout=120, **init
    )
    assert result.returncode == 0, result.stderr

    process = unit_process_args(staged, unit, overrides)
    log_path = tmp_path / "dashboard.log"
    with log_path.open("w") as log:
        dashboard = subprocess.Popen(stdout=log, stderr=subprocess.STDOUT, **process)
        try:
            wait_for_port(port, timeout=60)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                        timeout=30) as response:  # fmt: skip
                status, body = response.status, json.load(response)
            # gunicorn 25.1 and later create a control socket in
            # $HOME/.gunicorn, and the unit user's home is the data directory.
            control_socket = Path(
                overrides["TSHJOBS_DATA_DIR"], ".gunicorn/gunicorn.ctl"
            )
            control_socket_existed = control_socket.is_socket()

            # KillMode=mixed: the signal goes to gunicorn's master only.
            dashboard.send_signal(signal.SIGTERM)
            returncode = dashboard.wait(timeout=stop_timeout)
        finally:
            kill_unit_processes(dashboard)
    output = log_path.read_text()
    assert status == 200, output
    assert body["status"] == "ok"
    assert returncode == 0, output
    assert "Traceback" not in output
    assert control_socket_existed


# --- Redis persistence ---


def test_redis_snippet_keeps_queue(staged, tmp_path):
    port = free_port()
    config = tmp_path / "redis.conf"
    config.write_text(
        f'bind 127.0.0.1\nport {port}\ndir {tmp_path}\nsave ""\n'
        f"include {staged.path('/etc/redis/tshjobs.conf')}\n"
    )

    def start():
        server = subprocess.Popen(["redis-server", str(config)],
                                  stdout=subprocess.DEVNULL)  # fmt: skip
        wait_for_port(port)
        return server

    server = start()
    try:
        client = redis.Redis(port=port)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.lpush("huey.redis.tshjobs", b"task")
        client.close()
        # A crash: no shutdown save. RDB snapshots are off (save "").
        server.kill()
        server.wait(timeout=10)

        server = start()
        client = redis.Redis(port=port)
        assert client.llen("huey.redis.tshjobs") == 1
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


# --- uninstall ---


def test_uninstall_keeps_config_and_data(staged, tmp_path):
    copy = copy_root(staged, tmp_path / "root")
    (copy.path("/var/lib/tshjobs") / "audit.db").write_text("data")
    env_before = copy.env_file.read_bytes()

    result = run_install(staged.checkout, "--uninstall", "--root", str(copy.root))
    assert_ok(result)
    for name in UNIT_NAMES:
        assert not copy.path(f"/etc/systemd/system/{name}").exists()
    assert not copy.path("/opt/tshjobs").exists()
    assert copy.env_file.read_bytes() == env_before
    assert (copy.path("/var/lib/tshjobs") / "audit.db").read_text() == "data"
    assert copy.path("/etc/redis/tshjobs.conf").exists()
    assert "skipped: systemctl disable --now" in result.stderr


def test_purge_removes_everything(staged, tmp_path):
    copy = copy_root(staged, tmp_path / "root")
    result = run_install(staged.checkout, "--purge", "--root", str(copy.root))
    assert_ok(result)
    for target in ("/opt/tshjobs", "/etc/tshjobs", "/var/lib/tshjobs",
                   "/etc/redis/tshjobs.conf"):  # fmt: skip
        assert not copy.path(target).exists(), f"{target} was not removed"
    for name in UNIT_NAMES:
        assert not copy.path(f"/etc/systemd/system/{name}").exists()
    assert copy.path("/etc/redis/redis.conf").read_text() == REDIS_CONF_BEFORE
    assert "skipped: userdel tshjobs" in result.stderr
