import hashlib
from harness.guest import dataset


def test_plan_is_deterministic_and_covers_the_edges():
    spec = dataset.DatasetSpec(seed=7)
    plan = dataset.file_plan(spec, 0)
    assert plan == dataset.file_plan(spec, 0)
    assert plan != dataset.file_plan(dataset.DatasetSpec(seed=8), 0)
    sizes = {rel: size for rel, size, _ in plan}
    assert sizes["empty"] == 0 and sizes["one-byte"] == 1
    assert sizes["dir-a/page-minus-one"] % 4096 == 4095
    assert sizes["dir-a/page-plus-one"] % 4096 == 1
    assert any(zeros for _, _, zeros in plan)
    assert any(rel.count("/") >= 2 for rel in sizes)  # nested directories
    assert all(size % 4096 for rel, size, _ in plan if rel.startswith("dir-c/"))  # unaligned tails


def test_tree_matches_manifest(tmp_path):
    spec = dataset.DatasetSpec(seed=3, images=1, large_files=1)
    manifest = dataset.generate_tree(spec, 0, tmp_path)
    for rel, digest in manifest.items():
        assert hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest() == digest
    again = tmp_path / "again"
    assert dataset.generate_tree(spec, 0, again) == manifest


def test_images_are_reproducible_and_cached(tmp_path):
    spec = dataset.DatasetSpec(seed=5, images=2, large_files=1)
    first = dataset.build(spec, tmp_path / "a")
    second = dataset.build(spec, tmp_path / "b")
    for name in first.images:
        data = first.images[name].read_bytes()
        assert data[1024:1028] == bytes.fromhex("e2e1f5e0")  # EROFS superblock magic, little endian
        assert len(data) % 4096 == 0  # the blob size the daemon gives copen
        assert data == second.images[name].read_bytes()
    assert first.manifest == second.manifest and first.total_files == 2 * 7
    mtime = first.images["img0"].stat().st_mtime_ns
    assert dataset.build(spec, tmp_path / "a").images["img0"].stat().st_mtime_ns == mtime
