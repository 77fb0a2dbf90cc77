"""The build stage on the real Debian kernel source (no boot): config checks as a user meets them."""
import pytest

from harness.kernel import build, kconfig, source
from harness.errors import InputError
from harness.request import default_cache

pytestmark = pytest.mark.vm


def test_erofs_silently_dropped_without_misc_filesystems_is_caught(tmp_path):
    """The real trap, on the real tree: take MISC_FILESYSTEMS out and EROFS vanishes in
    olddefconfig; the build step must refuse, and say where to look."""
    src = source.debian_package(default_cache())
    fragments = []
    for frag in kconfig.flavor_fragments("plain"):
        text = "\n".join(l for l in frag.text.splitlines() if not l.startswith("CONFIG_MISC_FILESYSTEMS="))
        fragments.append(kconfig.Fragment(frag.name, text))
    req = build.BuildRequest(src, tuple(fragments), tmp_path, jobs=2, timeout_s=600)
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    with pytest.raises(InputError) as caught:
        build.configure(req, build_dir, tmp_path)
    message = str(caught.value)
    assert "CONFIG_EROFS_FS: ondemand.config asks for y, olddefconfig left n" in message
    assert "fs/Kconfig: if MISC_FILESYSTEMS    [MISC_FILESYSTEMS=n]" in message
    assert not (build_dir / ".config").exists()  # never built, never reused
