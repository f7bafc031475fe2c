"""The `lorakit` command re-executes itself with tcmalloc where installed; LORAKIT_ALLOCATOR chooses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lorakit.allocator import allocator_in_use, preload_environment, tcmalloc_library
from lorakit.errors import ConfigError

LIBRARY = "libtcmalloc_minimal.so.4"


def test_auto_preloads_tcmalloc_and_keeps_what_was_preloaded():
    environment = preload_environment({"LD_PRELOAD": "libother.so", "PATH": "/bin"}, LIBRARY, loaded="system")
    assert environment["LD_PRELOAD"].split() == [LIBRARY, "libother.so"]
    assert environment["PATH"] == "/bin"
    assert int(environment["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 2**40  # no line per large tensor


@pytest.mark.parametrize("environ, library, loaded", [
    ({"LORAKIT_ALLOCATOR": "system"}, LIBRARY, "system"),  # the user's choice
    ({}, None, "system"),  # nothing installed: glibc's malloc, quietly
    ({}, LIBRARY, "tcmalloc"),  # the re-executed process
    ({}, LIBRARY, "jemalloc"),  # the user preloaded another allocator
    ({"LD_PRELOAD": f"/x:{LIBRARY}"}, LIBRARY, "system"),  # named but not loadable: no loop
])
def test_no_restart(environ, library, loaded):
    assert preload_environment(environ, library, loaded) is None


def test_bad_setting_and_missing_library_say_what_to_do():
    with pytest.raises(ConfigError, match="LORAKIT_ALLOCATOR='fast' is not one of auto, tcmalloc, system"):
        preload_environment({"LORAKIT_ALLOCATOR": "fast"}, LIBRARY, "system")
    with pytest.raises(ConfigError, match="libtcmalloc-minimal4"):
        preload_environment({"LORAKIT_ALLOCATOR": "tcmalloc"}, None, "system")


def test_allocator_in_use_reads_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n")
    assert allocator_in_use(maps) == "tcmalloc"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert allocator_in_use(maps) == "system"
    assert allocator_in_use(tmp_path / "absent") == "system"


def _allocator_after_restart(**settings) -> dict:
    """What a fresh Python process that calls restart_with_tcmalloc() ends up with (LD_PRELOAD not inherited)."""
    environ = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", "LORAKIT_ALLOCATOR")}
    code = ("import json, os; from lorakit.allocator import allocator_in_use, restart_with_tcmalloc; "
            "restart_with_tcmalloc(); print(json.dumps({'allocator': allocator_in_use(), "
            "'preload': os.environ.get('LD_PRELOAD', '')}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**environ, **settings})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(tcmalloc_library() is None, reason="no tcmalloc installed (Debian: libtcmalloc-minimal4; "
                                                        "`make install` installs it)")
def test_a_process_restarts_once_with_tcmalloc_and_stays_on_it_when_told():
    restarted = _allocator_after_restart()
    assert restarted["allocator"] == "tcmalloc"
    assert restarted["preload"].split() == [tcmalloc_library()]  # named once: the restarted process did not loop
    assert _allocator_after_restart(LORAKIT_ALLOCATOR="system")["allocator"] == "system"


def test_only_the_commands_own_process_restarts(monkeypatch):
    """`lorakit` and `python -m lorakit.cli` may restart themselves; a program (or test) calling main() is kept."""
    import lorakit.cli as cli

    monkeypatch.setattr(cli, "restart_with_tcmalloc", lambda: pytest.fail("main() restarted its caller's process"))
    monkeypatch.setattr(sys, "argv", ["lorakit", "--help"])
    try:
        cli.main()
    except SystemExit as exit_info:
        assert exit_info.code in (0, None)
    bad = subprocess.run([sys.executable, "-m", "lorakit.cli", "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LORAKIT_ALLOCATOR": "fast"})
    assert bad.returncode == 2 and "LORAKIT_ALLOCATOR='fast' is not one of" in bad.stderr
