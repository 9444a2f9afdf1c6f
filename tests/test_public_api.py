"""The public API is what `__all__` says, and no submodule import can replace a part of it."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import subprocess
import sys
import types
import typing
from importlib import metadata
from pathlib import Path

import pytest

import batch_prompt as bp

from .conftest import cli_env

PUBLIC = {
    # entry points
    "cancel", "create", "estimate", "export", "iter_results", "load_results", "load_spec", "option_probs", "resume",
    "aresume", "retry_failed", "show", "status", "to_dataframe",
    # data
    "BatchStatus", "ErrorGroup", "Estimate", "ExportSummary", "Job", "JobStatus", "ModelEstimate", "ModelStatus",
    "CancelResult", "GroupStatus", "Prices", "PromptView", "Rate", "RunArgs", "RunOptions", "RunSummary", "Spec",
    # errors
    "BatchPromptError", "CacheError", "ConfigError", "ExportError", "FatalAPIError", "JobConflictError",
    "JobNotFoundError", "MissingFieldError", "NotADatabaseError", "RetryExhausted", "SchemaTooNewError",
    "SpecError", "StoreError", "UnknownFieldError",
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


def _named_types(hint: object) -> set[type]:
    """The classes a type hint names, through unions, generics and aliases."""
    found: set[type] = set()
    for arg in typing.get_args(hint):
        found |= _named_types(arg)
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and origin is None:
        found.add(hint)
    return found


def test_every_type_the_api_returns_is_exported() -> None:
    """What a public function or a public class's method returns is `bp.<Name>` (or a builtin type)."""
    exported = {value for name, value in public_names(bp).items() if isinstance(value, type)}
    returned: dict[str, set[type]] = {}
    for name, value in public_names(bp).items():
        callables = [(name, value)] if callable(value) and not isinstance(value, type) else []
        if isinstance(value, type) and not issubclass(value, BaseException):
            callables += [(f"{name}.{attr}", getattr(value, attr)) for attr in vars(value)
                          if not attr.startswith("_") and callable(getattr(value, attr))]
        for where, fn in callables:
            hints = typing.get_type_hints(fn, globalns=vars(inspect.getmodule(fn)))
            if "return" in hints:
                returned[where] = _named_types(hints["return"])
    assert returned["cancel"] == {bp.CancelResult} and returned["Job.run"] == {bp.RunSummary}
    plain = ("builtins", "collections.abc", "typing")
    missing = {where: sorted(t.__qualname__ for t in others) for where, types_ in returned.items()
               if (others := {t for t in types_ - exported if t.__module__ not in plain})}
    assert not missing


def test_run_args_are_the_run_options() -> None:
    """`RunArgs` (the keyword arguments of `Job.run`, `resume`, `cancel`) names every `RunOptions` field with
    its type, and nothing else."""
    fields = {f.name: f.type for f in dataclasses.fields(bp.RunOptions)}
    assert {name: hint.__forward_arg__ for name, hint in bp.RunArgs.__annotations__.items()} == fields
    for fn in (bp.Job.run, bp.Job.arun, bp.resume, bp.aresume, bp.cancel):
        assert str(inspect.signature(fn).parameters["options"].annotation) == "Unpack[RunArgs]"


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
