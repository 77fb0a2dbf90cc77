"""The contract between the host and the guest: one set of names, one config, one incarnation
field; and runs saved before that contract still judged alike."""
import json
import shutil
from pathlib import Path

from guest_scripts.contract import INCARNATION, GuestConfig, daemon_serving, parse_daemon_state
from harness.judge import evidence, report
from helpers import FIXTURES, guest_config


def test_the_guest_config_survives_json(tmp_path: Path) -> None:
    config = guest_config(tmp_path, images={"img0": "/x/img0.erofs"}, crash_plan={"1": "read_received"},
                          domain_images=("img0",), threads=2)
    config.write(str(tmp_path / "config.json"))
    again = GuestConfig.read(str(tmp_path / "config.json"))
    assert again == config
    assert again.crash_point(1) == "read_received" and again.crash_point(2) is None


def test_the_daemon_state_file_reads_back() -> None:
    assert parse_daemon_state(daemon_serving(3, 412)) == (3, 412)
    assert parse_daemon_state("") is None
    assert parse_daemon_state("3 starting 412\n") is None


def test_a_run_saved_with_the_legacy_inc_field_is_judged_alike(tmp_path: Path) -> None:
    current = shutil.copytree(FIXTURES / "run-crash-5-kills", tmp_path / "current")
    legacy = shutil.copytree(FIXTURES / "run-crash-5-kills", tmp_path / "legacy")
    log = legacy / "guest" / "daemon.jsonl"
    log.write_text(log.read_text().replace(f'"{INCARNATION}":', '"inc":'))
    assert '"inc":' in log.read_text()
    loaded = evidence.RunLogs.load(legacy)
    assert all(INCARNATION in e and "inc" not in e for e in loaded.daemon)
    assert loaded.daemon == evidence.RunLogs.load(current).daemon
    assert report.evaluate(legacy)["evidence"] == report.evaluate(current)["evidence"]


def test_the_guest_scripts_import_the_standard_library_and_each_other_only() -> None:
    """The guest runs them with `python3 -S`: no site-packages, so no third-party module."""
    import ast
    import sys

    import guest_scripts
    here = Path(guest_scripts.__file__).parent
    siblings = {p.stem for p in here.glob("*.py")}
    for script in here.glob("*.py"):
        for node in ast.walk(ast.parse(script.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in siblings or top == "__future__", f"{script.name}: {name}"
