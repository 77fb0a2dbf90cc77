"""The CI templates (ci/github-actions.yml, ci/gitlab-ci.yml): valid against the CI systems'
own schemas (check-jsonschema's vendored copies, offline), every file they name exists, and
their shell steps run here as far as a machine without GitHub or GitLab allows: with a stand-in
for the harness where a step would run the kernel, and for real where it only lists the matrix.
`act` would run the workflow in containers, but it is not packaged in the registries this
project installs from."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from harness.campaign import matrix
from helpers import ROOT

GITHUB = ROOT / "ci" / "github-actions.yml"
GITLAB = ROOT / "ci" / "gitlab-ci.yml"
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
REPO_PATH = re.compile(r"(?<![\w$/.-])((?:ci|harness|kconfigs|guest_scripts)/[\w.*/-]+)")


def load(path: Path) -> dict:
    return YAML(typ="safe").load(path.read_text())  # YAML 1.2: `on:` stays a string, as GitHub reads it


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("schema, path", [("vendor.github-workflows", GITHUB), ("vendor.gitlab-ci", GITLAB)])
def test_valid_against_the_ci_systems_schema(schema, path):
    r = check_jsonschema(schema, path)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("schema, path, old, new", [
    ("vendor.github-workflows", GITHUB, "timeout-minutes: 330", "timeout-minutes: long"),
    ("vendor.github-workflows", GITHUB, "runs-on: ubuntu-24.04", "runs_on: ubuntu-24.04"),
    ("vendor.gitlab-ci", GITLAB, "exit_codes: [125]", "exit_codes: often"),
    ("vendor.gitlab-ci", GITLAB, "when: always", "when: sometimes"),
])
def test_the_schemas_catch_a_broken_template(schema, path, old, new, tmp_path):
    broken = tmp_path / path.name
    assert old in path.read_text()
    broken.write_text(path.read_text().replace(old, new, 1))
    assert check_jsonschema(schema, broken).returncode != 0


def github_run_steps() -> list[tuple[str, dict]]:
    wf = load(GITHUB)
    return [(job, step) for job, spec in wf["jobs"].items() for step in spec["steps"] if "run" in step]


def gitlab_scripts() -> list[tuple[str, list[str]]]:
    ci = load(GITLAB)
    return [(name, job.get("before_script", []) + job["script"]) for name, job in ci.items()
            if isinstance(job, dict) and "script" in job]


def all_scripts() -> list[str]:
    return [s["run"] for _, s in github_run_steps()] + ["\n".join(lines) for _, lines in gitlab_scripts()]


def test_every_file_a_step_names_exists():
    named = {m for script in all_scripts() for m in REPO_PATH.findall(script)}
    assert {"ci/setup.sh", "ci/matrix.sh", "ci/outcome.sh", "ci/fetch-series.sh"} <= named
    assert [p for p in named if not list(ROOT.glob(p))] == []
    modules = {m for script in all_scripts() for m in re.findall(r"-m (harness\.\w+)", script)}
    assert modules and all((ROOT / (m.replace(".", "/") + ".py")).is_file() for m in modules)
    # and what the workflow hashes for its cache key
    for expr in EXPRESSION.findall(GITHUB.read_text()):
        for pattern in re.findall(r"hashFiles\('([^']+)'\)", expr):
            assert list(ROOT.glob(pattern)), pattern


def test_actions_are_pinned_to_a_major_version():
    uses = [s["uses"] for spec in load(GITHUB)["jobs"].values() for s in spec["steps"] if "uses" in s]
    assert uses and all(re.fullmatch(r"actions/(checkout|cache|upload-artifact)@v\d+", u) for u in uses)


def substitute(script: str, values: dict[str, str]) -> str:
    """GitHub's ${{ }} expressions replaced by what GitHub would put there."""
    return EXPRESSION.sub(lambda m: values[m.group(1)], script)


GITHUB_VALUES = {"matrix.shard": "2", "strategy.job-total": "4", "steps.harness.outputs.code": "0"}


@pytest.mark.parametrize("script", all_scripts())
def test_every_script_is_valid_bash(script):
    values = {**GITHUB_VALUES, **{e: "x" for e in EXPRESSION.findall(script)}}
    r = subprocess.run(["bash", "-n"], input=substitute(script, values), text=True, capture_output=True)
    assert r.returncode == 0, r.stderr


def step(name: str, job: str = "matrix") -> str:
    (found,) = [s["run"] for j, s in github_run_steps() if j == job and s.get("name", "").startswith(name)]
    return found


@pytest.fixture
def fake_python(tmp_path) -> Path:
    """Stands in for .venv/bin/python where a step would run the harness: records its argv, exits
    with $FAKE_CODE."""
    shim = tmp_path / "bin" / "python"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\nexit "${{FAKE_CODE:-0}}"\n')
    shim.chmod(0o755)
    return shim


def run_bash(script: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # GitHub runs `bash -e {0}`, GitLab `bash` with -e and pipefail: the stricter of the two here
    return subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=cwd, text=True, capture_output=True,
                          env={**os.environ, **env}, timeout=120)


def workflow_env() -> dict[str, str]:
    return {k: str(v) for k, v in load(GITHUB)["env"].items()}


@pytest.mark.parametrize("code, job_fails, annotation", [
    (0, False, "::notice title=PASS::"), (1, True, "::error title=FAIL::"),
    (125, False, "::warning title=UNTESTABLE::"), (2, True, "::error title=ERROR::"),
])
def test_github_shard_then_verdict(code, job_fails, annotation, tmp_path, fake_python):
    out = tmp_path / "github_output"
    env = {**workflow_env(), "PYTHON": str(fake_python), "FAKE_CODE": str(code), "GITHUB_OUTPUT": str(out),
           "OUTPUT": str(tmp_path / "runs")}
    r = run_bash(substitute(step("Run shard"), GITHUB_VALUES), env)
    assert r.returncode == 0, r.stderr  # the step records the code; the verdict step acts on it
    assert out.read_text() == f"code={code}\n"
    argv = (tmp_path / "argv").read_text().split("\n")
    assert argv[:5] == ["-m", "harness.cli", "matrix", "--shard", "2/4"]
    assert argv[argv.index("--kernel") + 1] == "linux-source-6.12"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--flavor"] == ["plain", "debug"]
    r = run_bash(substitute(step("Verdict"), {**GITHUB_VALUES, "steps.harness.outputs.code": str(code)}), env)
    assert (r.returncode != 0) is job_fails and r.returncode in (0, code)
    assert r.stdout.startswith(annotation)


def test_github_job_summary_with_and_without_a_report(tmp_path):
    summary = tmp_path / "summary.md"
    env = {"OUTPUT": str(tmp_path / "runs"), "GITHUB_STEP_SUMMARY": str(summary)}
    assert run_bash(step("Job summary"), env).returncode == 0
    assert summary.read_text().startswith("No report")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "report.md").write_text("### failover-harness: ✅ PASS\n")
    summary.unlink()
    assert run_bash(step("Job summary"), env).returncode == 0
    assert summary.read_text() == "### failover-harness: ✅ PASS\n"


@pytest.mark.parametrize("tree, expect", [("", ["--base", "v6.12"]),
                                          ("torvalds/linux", ["--tree", "WS/linux", "--base", "HEAD"])])
def test_github_series_step(tree, expect, tmp_path, fake_python):
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(fake_python)
    out = tmp_path / "github_output"
    env = {**workflow_env(), "FAKE_CODE": "125", "GITHUB_OUTPUT": str(out), "BASE": "v6.12",
           "TREE_REPOSITORY": tree, "GITHUB_WORKSPACE": "WS", "TARGET_URL": "https://github.com/o/r/actions/runs/1",
           "TESTED_BY": "Tess Ter <tess@example.org>" if tree else ""}
    r = run_bash(step("Test the series", "series"), env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr and out.read_text() == "code=125\n"
    argv = (tmp_path / "argv").read_text().split("\n")
    assert argv[:5] == ["-m", "harness.cli", "submit", "--mbox", "series.mbox"] and argv[7:7 + len(expect)] == expect
    rest = argv[7 + len(expect):]
    assert rest[:4] == ["--known-issues", "ci/known-issues.json", "--target-url", env["TARGET_URL"]]
    assert (rest[4:6] == ["--tested-by", "Tess Ter <tess@example.org>"]) is bool(tree)  # only when it is set
    assert ("--tested-by" in rest) is bool(tree)


@pytest.mark.parametrize("code", [0, 1, 125, 2])
def test_gitlab_job_passes_the_code_through(code, tmp_path, fake_python):
    ci = load(GITLAB)
    for job in ("failover-harness", "failover-harness-series"):
        assert ci[job]["allow_failure"] == {"exit_codes": [125]}  # 125: GitLab's warning state, not a failure
        assert ci[job]["artifacts"]["reports"]["junit"] == "runs/junit.xml"
    script = "\n".join(ci["failover-harness"]["script"])
    env = {**{k: str(v) for k, v in ci["variables"].items()}, "PYTHON": str(fake_python), "FAKE_CODE": str(code),
           "CI_NODE_INDEX": "3", "CI_NODE_TOTAL": "4"}
    r = run_bash(script, env)
    assert r.returncode == code
    assert (tmp_path / "argv").read_text().split("\n")[3:5] == ["--shard", "3/4"]


def test_the_fleet_runs_the_whole_matrix_once():
    """What the four GitHub shards would run, listed by the real harness: the matrix, split."""
    env = {**workflow_env(), "PYTHON": sys.executable}
    total = len(load(GITHUB)["jobs"]["matrix"]["strategy"]["matrix"]["shard"])
    listed = []
    for i in range(1, total + 1):
        r = run_bash(f"bash ci/matrix.sh {i}/{total} --list", env)
        assert r.returncode == 0, r.stderr
        listed += [line.split("\t")[0] for line in r.stdout.splitlines()[1:]]
    cells = matrix.cells(env["KERNELS"].split(), env["FLAVORS"].split(), env["SCENARIOS"].split())
    assert sorted(listed) == sorted(c.label for c in cells)
    assert "no-failover" not in env["SCENARIOS"]  # the negative control must FAIL: not a CI job's matrix


@pytest.mark.parametrize("code, expected", [("0", 0), ("1", 1), ("125", 0), ("2", 2), ("130", 130)])
def test_outcome_github(code, expected):
    r = subprocess.run(["bash", str(ROOT / "ci" / "outcome.sh"), "github", code], capture_output=True, text=True)
    assert r.returncode == expected and r.stdout.startswith("::")


@pytest.mark.parametrize("argv", [[], ["github"], ["jenkins", "1"], ["github", "one"]])
def test_outcome_bad_usage(argv):
    r = subprocess.run(["bash", str(ROOT / "ci" / "outcome.sh"), *argv], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("usage:")
