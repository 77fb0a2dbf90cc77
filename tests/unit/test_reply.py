"""harness.campaign.reply's layout: at most 72 columns whatever it is given, a command a shell reads
back as it was (reply.eml as a whole: test_submit.py)."""
import itertools
import shlex
import subprocess

from harness.campaign import reply
from harness.judge import sides
from harness.judge.sides import Outcome, SideState
from harness.scenarios import SCENARIOS


def test_the_widest_table_still_fits():
    """Every pair of side states, at the most runs --repeat allows, under the longest scenario name."""
    def cell(state: SideState) -> str:
        return str(state) if state is SideState.UNTESTABLE else f"{state} 100/100"
    rows = [("scenario", "base", "series", "outcome")]
    for base, series, same in itertools.product(SideState, SideState, (True, False)):
        outcome = sides.classify(base, series, same)
        rows.append((max(SCENARIOS, key=len), cell(base), cell(series),
                     f"{outcome}" + (" (known)" if outcome is Outcome.PRE_EXISTING else "")))
        assert max(len(line) for line in reply.columns([rows[0], rows[-1]])) <= reply.WIDTH, rows[-1]
    assert reply.columns([("a", "b"), ("ccc", "d")]) == ["a    b", "ccc  d"]


def test_a_long_command_is_broken_where_the_shell_joins_it_back():
    command = shlex.join(["failover-harness", "submit", "--mbox", "/tmp/" + "x" * 90 + "/series.mbox",
                          "--base", "v6.12", "--tree", "/home/runner/work/linux tree", "--seed", "1"])
    lines = reply.shell_lines(command)
    assert len(lines) > 2 and max(len(line) for line in lines) <= reply.WIDTH
    echoed = subprocess.run(["bash", "-c", "printf '%s\\n' " + "\n".join(lines).removeprefix("  ")],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert echoed == shlex.split(command)
