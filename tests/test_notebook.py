"""What a notebook shows: a run's summary, a job's status and an estimate as readable text and as HTML (names
and messages escaped), and a run's progress as one display updated in place; proved in a real Jupyter
kernel (nbclient) running a job against the fake server, and in-process for each piece."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from IPython.lib.pretty import pretty

import batch_prompt as bp
from batch_prompt.reports.text import estimate_lines, status_lines, summary_head, summary_notes
from batch_prompt.run.ledger import Tally
from batch_prompt.run.notebook import NotebookProgress, in_notebook
from batch_prompt.testing import FakeServer

from .conftest import API_KEY, run_cli
from .test_progress import View

# --- the reports, in-process --------------------------------------------------------------------


def a_summary() -> bp.RunSummary:
    return bp.RunSummary(
        done=4, cached=1, failed=2, requests=5, paid=3, prompt_tokens=30, completion_tokens=12, cost_usd=0.0021,
        errors=Counter({"BadRequestError 400": 2}), error_examples={"BadRequestError 400": "bad <input> & more"},
        unfinished=1, failed_total=2,
    )


def a_status() -> bp.JobStatus:
    model = bp.ModelStatus(model="gpt-4o-mini", total=7, pending=1, running=0, done=4, failed=2, cached=1,
                           requests=3, prompt_tokens=30, completion_tokens=12, cost=0.0021, endpoint=None)
    return bp.JobStatus(
        job="coin <flip>", api="chat", mode="live", state="ready", total=7, pending=1, running=0, done=4, failed=2,
        cached=1, requests=3, prompt_tokens=30, completion_tokens=12, cost=0.0021, unpriced=(), models=(model,),
        errors=(bp.ErrorGroup("BadRequestError 400", 2, "token <|endoftext|> not allowed"),),
    )


def an_estimate() -> bp.Estimate:
    return bp.Estimate((
        bp.ModelEstimate("gpt-4o-mini", 6, 6, 60, 96, 0.0001, 0.00005, 2),
        bp.ModelEstimate("<my-llama>", 6, 6, 60, 96, None, None, 0),
    ), ("<my-llama>",), None)


def test_a_summary_reads_as_the_command_line_says_it() -> None:
    summary = a_summary()
    text = str(summary)
    assert text.splitlines()[:2] == [summary_head(summary), *summary_notes(summary)]
    assert text.startswith("done 4 (1 from cache), failed 2, requests 3 paid for (5 sent), tokens 30+12, ~$0.0021")
    assert "2 x BadRequestError 400, e.g. bad <input> & more" in text
    assert text.endswith("1 prompt pending: resume to continue")
    assert pretty(summary) == text  # IPython's text/plain
    assert repr(summary).startswith("RunSummary(done=4, cached=1")  # the dataclass's, for debuggers


def test_a_summary_in_html_is_a_table_with_its_messages_escaped() -> None:
    page = a_summary()._repr_html_()
    assert re.search(r"<th>done</th>.*<td>4</td><td>1</td><td>2</td><td>5</td><td>3</td><td>30</td><td>12</td>"
                     r"<td>\$0.0021</td>", page)
    assert "bad &lt;input&gt; &amp; more" in page and "<input>" not in page


def test_a_status_reads_as_the_command_line_prints_it(tmp_path: Path) -> None:
    job = a_status()
    assert str(job) == "\n".join(status_lines(job)) == pretty(job)
    assert str(job).splitlines()[0] == "coin <flip> (chat, live): 4 of 7 prompts done (1 from the cache), 1 pending, " \
                                       "2 failed"
    assert repr(job).startswith("JobStatus(job='coin <flip>'")
    db = tmp_path / "jobs.db"
    bp.create(db, templates=["Say {n}"], keywords=[{"n": 1}, {"n": 2}], model="gpt-4o-mini", api="chat", name="x")
    report = bp.status(db)
    assert run_cli("status", str(db)).stdout == "".join(f"{each}\n" for each in report)


def test_a_status_in_html_escapes_the_job_and_its_errors() -> None:
    page = a_status()._repr_html_()
    assert "<strong>coin &lt;flip&gt;</strong> (chat, live): 4 of 7 prompts done" in page
    assert "<td>gpt-4o-mini</td><td>7</td><td>4</td><td>1</td><td>1</td><td>0</td><td>2</td><td>3</td>" in page
    assert "2 failed with BadRequestError 400, e.g. <code>token &lt;|endoftext|&gt; not allowed</code>" in page
    assert "<|" not in page and "<flip>" not in page


def test_an_estimate_reads_as_the_command_line_prints_it_and_escapes_in_html() -> None:
    result = an_estimate()
    assert str(result) == "\n".join(estimate_lines(result)) == pretty(result)
    assert "no known price for `<my-llama>`" in str(result)
    page = result._repr_html_()
    assert "<td>gpt-4o-mini</td><td>6</td><td>6</td><td>60</td><td>96</td><td>$0.00010</td><td>$0.000050</td>" \
           "<td>2</td>" in page
    assert "<td>all</td><td>12</td><td>12</td><td>120</td><td>192</td><td>unknown</td>" in page
    assert "&lt;my-llama&gt;" in page and "<my-llama>" not in page
    assert repr(result).startswith("Estimate(models=(ModelEstimate(")


# --- progress, in-process -----------------------------------------------------------------------


class Shown:
    """What a notebook's display received: (bundle, display id, update) per publish."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], str, bool]] = []

    def __call__(self, bundle: dict[str, str], display_id: str, update: bool) -> None:
        self.calls.append((bundle, display_id, update))


def test_notebook_progress_is_one_display_updated_at_most_every_interval() -> None:
    now = [100.0]
    shown = Shown()
    progress = NotebookProgress(shown, clock=lambda: now[0], interval=0.25)
    progress.start(View(label="coin <flip>"))
    for _ in range(200):  # a render per answer would be 200 redraws: the interval lets 5 through
        now[0] += 0.005
        progress.render()
    progress.note("rate limited: waiting 4 s")
    progress.note("rate limited: waiting 3 s")  # a countdown: its own last note replaced
    progress.note("stopping: out of quota")
    progress.render(final=True)  # the end is always drawn
    assert 3 <= len(shown.calls) <= 7
    assert len({display_id for _, display_id, _ in shown.calls}) == 1
    assert [update for _, _, update in shown.calls] == [False] + [True] * (len(shown.calls) - 1)
    last = shown.calls[-1][0]
    assert last["text/plain"].splitlines() == [progress.line(), "rate limited: waiting 3 s", "stopping: out of quota"]
    assert '<progress value="5" max="10"' in last["text/html"] and "coin &lt;flip&gt;: 5/10 done" in last["text/html"]


def test_notebook_progress_shows_a_line_per_model() -> None:
    two = {"a": Tally(done=1), "b": Tally(done=2)}
    shown = Shown()
    progress = NotebookProgress(shown, clock=lambda: 10.0)
    progress.start(View(models=two))
    assert shown.calls[0][0]["text/plain"].splitlines()[1:] == progress.model_lines() != []


def test_a_closed_kernel_channel_silences_notebook_progress_and_nothing_else() -> None:
    def closed(bundle: dict[str, str], display_id: str, update: bool) -> None:
        raise ValueError("I/O operation on closed file")

    progress = NotebookProgress(closed)
    progress.start(View())
    progress.render(final=True)
    assert progress.broken


def test_outside_a_kernel_nothing_changes() -> None:
    assert not in_notebook()  # pytest is no kernel (IPython may be loaded: it is not its ZMQ shell)


# --- a real notebook ----------------------------------------------------------------------------


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec of this interpreter (the venv's, with batch-prompt and ipykernel), alone on the Jupyter
    path: no user's or system's `python3` kernel, profile or startup file takes part."""
    spec = tmp_path / "jupyter" / "kernels" / "bp-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "batch-prompt tests", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "jupyter-config"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return "bp-test"


PROMPTS = 200


def test_a_notebook_shows_readable_reports_and_one_progress_display(
    fake: FakeServer, tmp_path: Path, kernel: str,
) -> None:
    import nbformat
    from nbclient import NotebookClient

    fake.configure(latency=0.1)  # 200 prompts, 20 at a time: a run of about a second, redrawn as it goes
    db, cache = str(tmp_path / "jobs.db"), str(tmp_path / "cache")
    cells = [
        "import batch_prompt as bp\n"
        "from batch_prompt.run.retry import RetryPolicy\n"
        f"job = bp.create({db!r}, name='coin <flip>', templates=['Say {{n}}'], "
        f"keywords=[{{'n': n}} for n in range({PROMPTS})], model='gpt-4o-mini', api='chat')",
        f"summary = await job.arun(base_url={fake.url!r}, api_key={API_KEY!r}, cache_dir={cache!r}, concurrency=20, "
        "retry=RetryPolicy.no_wait(3))",
        "summary",
        f"bp.status({db!r})[0]",
        "bp.estimate(dict(templates=['Say {n}'], keywords=[{'n': n} for n in range(4)], model='gpt-4o-mini', "
        f"api='chat'), cache_dir={cache!r}, base_url={fake.url!r})",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    NotebookClient(notebook, kernel_name=kernel, timeout=60, startup_timeout=60,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs: list[list[dict[str, Any]]] = [cell.outputs for cell in notebook.cells]

    assert sum(fake.answered().values()) == PROMPTS  # over real HTTP, from the kernel's process
    run = outputs[1]
    assert [each["output_type"] for each in run] == ["display_data"]  # one display, updated: no line per prompt
    assert run[0]["data"]["text/plain"].startswith(f"coin <flip>: {PROMPTS}/{PROMPTS} done, 0 failed")
    assert f'<progress value="{PROMPTS}" max="{PROMPTS}"' in run[0]["data"]["text/html"]

    summary, status, estimate = (cell[0]["data"] for cell in outputs[2:])
    assert all(cell[0]["output_type"] == "execute_result" and len(cell) == 1 for cell in outputs[2:])
    assert summary["text/plain"].startswith(f"done {PROMPTS} (0 from cache), failed 0, requests {PROMPTS} paid for")
    assert "<th>done</th><th>from cache</th><th>failed</th>" in summary["text/html"]
    assert f"<td>{PROMPTS}</td><td>0</td><td>0</td><td>{PROMPTS}</td><td>{PROMPTS}</td>" in summary["text/html"]
    assert status["text/plain"].startswith(f"coin <flip> (chat, live): {PROMPTS} of {PROMPTS} prompts done")
    assert "<strong>coin &lt;flip&gt;</strong>" in status["text/html"]
    assert f"<td>gpt-4o-mini</td><td>{PROMPTS}</td><td>{PROMPTS}</td>" in status["text/html"]
    assert estimate["text/plain"].startswith("4 prompts in 4 requests to gpt-4o-mini: ~")
    assert "<td>gpt-4o-mini</td><td>4</td><td>4</td>" in estimate["text/html"]
    assert not any(text.startswith(("RunSummary(", "JobStatus(", "Estimate(")) for text in
                   (summary["text/plain"], status["text/plain"], estimate["text/plain"]))
