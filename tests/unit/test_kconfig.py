from pathlib import Path

from harness.kernel import kconfig

ROOT = Path(__file__).resolve().parents[2]


def test_parse_config_set_unset_and_last_wins():
    text = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\nCONFIG_A=m\n# comment\n"
    assert kconfig.parse_config(text) == {"CONFIG_A": "m", "CONFIG_B": "n", "CONFIG_C": '"x y"'}


def test_find_drops_reports_each_vetoed_symbol():
    frag = kconfig.Fragment("f.config", "CONFIG_EROFS_FS=y\nCONFIG_TMPFS=y\nCONFIG_HZ=250\n# CONFIG_X is not set\n")
    final = {"CONFIG_TMPFS": "y", "CONFIG_HZ": "250"}
    drops = kconfig.find_drops([frag], final)
    assert drops == [kconfig.Dropped("CONFIG_EROFS_FS", "y", "n", "f.config")]


def test_no_drops_when_everything_survived():
    frag = kconfig.Fragment("f.config", "CONFIG_A=y\nCONFIG_S=\"abc\"\n")
    assert kconfig.find_drops([frag], {"CONFIG_A": "y", "CONFIG_S": '"abc"'}) == []


def test_fingerprint_changes_with_fragment_and_source():
    a = kconfig.Fragment("a.config", "CONFIG_A=y\n")
    b = kconfig.Fragment("a.config", "CONFIG_A=n\n")
    assert kconfig.fingerprint([a], "src1") == kconfig.fingerprint([a], "src1")
    assert kconfig.fingerprint([a], "src1") != kconfig.fingerprint([b], "src1")
    assert kconfig.fingerprint([a], "src1") != kconfig.fingerprint([a], "src2")


def test_explain_drops_names_the_enclosing_if(tmp_path):
    """The real trap: EROFS_FS sits in `if MISC_FILESYSTEMS` of the file that sources it."""
    (tmp_path / "fs" / "erofs").mkdir(parents=True)
    (tmp_path / "fs" / "Kconfig").write_text(
        'menuconfig MISC_FILESYSTEMS\n\tbool "Misc"\n\nif MISC_FILESYSTEMS\n'
        'source "fs/erofs/Kconfig"\nendif # MISC_FILESYSTEMS\n')
    (tmp_path / "fs" / "erofs" / "Kconfig").write_text(
        'config EROFS_FS\n\ttristate "EROFS"\n\tdepends on BLOCK\n\tselect LIBCRC32C\n\n'
        'config EROFS_FS_ONDEMAND\n\tbool "ondemand"\n\tdepends on EROFS_FS && FSCACHE && CACHEFILES_ONDEMAND\n')
    drops = [kconfig.Dropped("CONFIG_EROFS_FS", "y", "n", "ondemand.config")]
    text = kconfig.explain_drops(tmp_path, drops, {"CONFIG_BLOCK": "y"})
    assert "CONFIG_EROFS_FS: ondemand.config asks for y, olddefconfig left n" in text
    assert "fs/erofs/Kconfig: depends on BLOCK    [BLOCK=y]" in text
    assert "fs/Kconfig: if MISC_FILESYSTEMS    [MISC_FILESYSTEMS=n]" in text
    assert "FSCACHE" not in text  # the next symbol's dependencies are not EROFS_FS's


def test_shipped_fragments_parse_and_ask_for_the_series_symbols():
    symbols = {}
    for frag in kconfig.flavor_fragments("plain"):
        symbols.update(frag.symbols)
    for needed in ("CONFIG_CACHEFILES_ONDEMAND", "CONFIG_EROFS_FS_ONDEMAND", "CONFIG_MISC_FILESYSTEMS",
                   "CONFIG_EXT4_FS", "CONFIG_BLK_DEV_LOOP", "CONFIG_9P_FS", "CONFIG_SERIAL_8250_CONSOLE"):
        assert symbols.get(needed) == "y", needed


def test_the_debug_flavour_adds_the_detectors_to_the_plain_one():
    plain = [f.name for f in kconfig.flavor_fragments("plain")]
    debug = kconfig.flavor_fragments("debug")
    assert [f.name for f in debug][: len(plain)] == plain
    extra = debug[-1].symbols
    for needed in ("CONFIG_KASAN", "CONFIG_PROVE_LOCKING", "CONFIG_DEBUG_ATOMIC_SLEEP", "CONFIG_SOFTLOCKUP_DETECTOR",
                   "CONFIG_DETECT_HUNG_TASK", "CONFIG_DEBUG_LIST", "CONFIG_LKDTM"):
        assert extra.get(needed) == "y", needed
    assert extra["CONFIG_SLUB_TINY"] == "n"  # KASAN's own dependency, tinyconfig's default


def test_builds_go_through_ccache_only_when_its_directory_is_named(monkeypatch):
    """A cold ccache cost 56% more than gcc alone on our config (2026-12-04): it is the user's to
    ask for, by naming its directory; with the directory named and no ccache, gcc alone."""
    from harness.kernel import build
    monkeypatch.setattr(build.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert build.use_ccache({"CCACHE_DIR": "/srv/ccache"})
    assert not build.use_ccache({}) and not build.use_ccache({"CCACHE_DIR": ""})
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    assert not build.use_ccache({"CCACHE_DIR": "/srv/ccache"})
