"""The matrix as data, and --shard I/N: every cell in exactly one shard, the same split on
every runner, and cells the real command line accepts."""
import itertools

import pytest

from harness import cli
from harness.campaign import matrix
from harness.errors import InputError

ALL_SCENARIOS = ["crash", "close-fds", "combined", "crash-points", "no-failover"]


def test_cells_in_a_stable_order():
    cells = matrix.cells(["linux-source-6.12", "tree:/src/linux@v6.13"], ["plain", "debug"], ["crash", "close-fds"])
    assert [c.label for c in cells] == [
        "linux-source-6.12/plain/crash", "linux-source-6.12/plain/close-fds",
        "linux-source-6.12/debug/crash", "linux-source-6.12/debug/close-fds",
        "linux@v6.13/plain/crash", "linux@v6.13/plain/close-fds",
        "linux@v6.13/debug/crash", "linux@v6.13/debug/close-fds",
    ]
    assert matrix.cells(["linux-source-6.12"] * 2, ["plain", "plain"], ["crash"]) == \
        matrix.cells(["linux-source-6.12"], ["plain"], ["crash"])


@pytest.mark.parametrize("kernels, flavors, scenarios, message", [
    ([], ["plain"], ["crash"], "at least one kernel"),
    (["linux-source-6.12"], ["fancy"], ["crash"], "unknown flavour 'fancy'"),
    (["linux-source-6.12"], ["plain"], ["crush"], "unknown scenario 'crush'"),
    (["Linux Source"], ["plain"], ["crash"], "expected a Debian package name"),
    (["tree:"], ["plain"], ["crash"], "expected tree:PATH"),
    (["tree:/src@"], ["plain"], ["crash"], "expected tree:PATH"),
])
def test_a_bad_matrix_is_named(kernels, flavors, scenarios, message):
    with pytest.raises(InputError, match=message):
        matrix.cells(kernels, flavors, scenarios)


@pytest.mark.parametrize("spec, argv", [
    ("linux-source-6.12", ["--package", "linux-source-6.12"]),
    ("package:linux-source-6.13", ["--package", "linux-source-6.13"]),
    ("tree:/src/linux", ["--tree", "/src/linux"]),
    ("tree:/src/linux@v6.12-rc1", ["--tree", "/src/linux", "--ref", "v6.12-rc1"]),
])
def test_a_cell_is_a_command_line_the_harness_accepts(spec, argv):
    (cell,) = matrix.cells([spec], ["debug"], ["combined"])
    assert cell.kernel.argv() == argv
    full = cell.argv(("--seed", "7"))
    args = cli.parser().parse_args(full)
    assert (args.command, args.scenario, args.flavor, args.seed) == ("run", "combined", "debug", 7)
    if spec.startswith("tree:"):
        assert str(args.tree) == "/src/linux" and args.ref == (argv[3] if len(argv) > 2 else None)
    else:
        assert args.package == argv[1]


@pytest.mark.parametrize("text, parsed", [("1/1", (1, 1)), ("3/4", (3, 4)), (" 2 / 5 ", (2, 5))])
def test_shard_spelling(text, parsed):
    assert matrix.parse_shard(text) == parsed


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "2", "a/b", "-1/3", "1/2/3", ""])
def test_a_bad_shard_is_one_clear_error(text):
    with pytest.raises(InputError, match="--shard"):
        matrix.parse_shard(text)
    with pytest.raises(InputError):
        matrix.shard(matrix.cells(["linux-source-6.12"], ["plain"], ["crash"]), 0, 0)


MATRICES = [
    (["linux-source-6.12"], ["plain"], ["crash"]),
    (["linux-source-6.12"], ["plain", "debug"], ALL_SCENARIOS),
    (["linux-source-6.12", "tree:/a", "tree:/a@v1"], ["plain", "debug"], ALL_SCENARIOS),
]


@pytest.mark.parametrize("axes", MATRICES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 40])
def test_every_cell_is_in_exactly_one_shard(axes, n):
    cells = matrix.cells(*axes)
    shards = [matrix.shard(cells, i, n) for i in range(1, n + 1)]
    flat = list(itertools.chain.from_iterable(shards))
    assert sorted(flat, key=cells.index) == cells and len(flat) == len(set(flat))
    # every runner of the fleet computes the same split on its own
    assert shards == [matrix.shard(list(cells), i, n) for i in range(1, n + 1)]
    # within a shard, matrix order
    assert all(s == sorted(s, key=cells.index) for s in shards)
    if n >= len(cells):
        assert all(len(s) <= 1 for s in shards)


def test_shards_are_balanced_by_estimated_time():
    cells = matrix.cells(["linux-source-6.12"], ["plain", "debug"], ALL_SCENARIOS)
    times = [matrix.estimated_s(matrix.shard(cells, i, 3)) for i in range(1, 4)]
    biggest_cell = max(c.run_cost_s() for c in cells) + matrix.BUILD_COST_S * matrix.FLAVOR_FACTOR["debug"]
    assert max(times) - min(times) <= biggest_cell
    # and better than cutting the list in three in order (what a naive split does)
    naive = [matrix.estimated_s(cells[k::3]) for k in range(3)]
    assert max(times) <= max(naive)
