"""The import graph of lorakit's modules has no cycles, lazy imports inside functions included."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1] / "src" / "lorakit"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The lorakit modules `path` imports (`from pkg import sub` names the submodule, else the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    cycles, state = [], {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*trail[trail.index(target):], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_offline_kernel_notices_are_dropped_and_other_warnings_kept(caplog):
    import logging

    import lorakit  # noqa: F401  (installs the filters)

    hub = logging.getLogger("kernels._internals.hf_hub")
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        hub.warning("Skipping publisher trust check for 'kernels-community/x' because Hugging Face Hub is in "
                    "offline mode.")
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: offline")
        hub.warning("Kernel repository 'x/y' has no build for this platform")
    assert [record.getMessage() for record in caplog.records] == [
        "Kernel repository 'x/y' has no build for this platform"]


def test_transformers_deprecation_that_peft_triggers_is_hidden_and_others_shown():
    import warnings

    from lorakit import hide_peft_deprecation_notice

    with warnings.catch_warnings(record=True) as caught:
        hide_peft_deprecation_notice()  # again: pytest resets the filters for each test
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("`other_option` is deprecated and will be removed in v6.", FutureWarning)
    assert [str(warning.message) for warning in caught] == ["`other_option` is deprecated and will be removed in v6."]
