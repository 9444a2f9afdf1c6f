"""The public API is what `__all__` says, and no submodule import can replace a part of it."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest

import batch_prompt as bp

from .conftest import cli_env

PUBLIC = {
    # entry points
    "cancel", "create", "estimate", "export", "iter_results", "load_results", "load_spec", "resume", "aresume",
    "retry_failed", "show", "status", "to_dataframe",
    # data
    "BatchStatus", "ErrorGroup", "Estimate", "ExportSummary", "Job", "JobStatus", "ModelEstimate", "ModelStatus",
    "Prices", "PromptView", "RunOptions", "RunSummary", "Spec",
    # errors
    "BatchPromptError", "CacheError", "ConfigError", "ExportError", "FatalAPIError", "JobConflictError",
    "JobNotFoundError", "MissingFieldError", "NotADatabaseError", "RetryExhausted", "SchemaTooNewError",
    "SpecError", "StoreError",
    "__version__",
}


def public_names(module: types.ModuleType) -> dict[str, object]:
    """What `vars(module)` offers that is neither private nor a submodule."""
    return {name: value for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)}


def test_all_is_the_public_api() -> None:
    assert set(bp.__all__) == PUBLIC
    assert set(public_names(bp)) == PUBLIC - {"__version__"}
    assert bp.__version__ == metadata.version("batch-prompt")


def test_importing_every_submodule_shadows_nothing() -> None:
    before = public_names(bp)
    for info in pkgutil.walk_packages(bp.__path__, "batch_prompt."):
        if info.name.endswith("__main__"):
            continue  # runs a command line
        try:
            importlib.import_module(info.name)
        except ImportError as exc:
            assert info.name == "batch_prompt.resume", exc  # a command only: it refuses to be imported
            assert "python -m batch_prompt.resume" in str(exc)
    after = public_names(bp)
    assert after == before, {name for name in after if after.get(name) is not before.get(name)}
    assert callable(bp.export) and callable(bp.resume)


def test_python_m_batch_prompt_resume_still_runs(tmp_path: Path) -> None:
    bp.create(tmp_path / "jobs.db", templates=["hi"], model="m")
    out = subprocess.run([sys.executable, "-m", "batch_prompt.resume", "--help"], capture_output=True, text=True,
                         env=cli_env(), cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m batch_prompt.resume"), out.stderr


@pytest.mark.parametrize("module", ["batch_prompt.testing", "batch_prompt"])
def test_module_commands_have_help(module: str, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=cli_env(),
                         cwd=tmp_path)
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr
