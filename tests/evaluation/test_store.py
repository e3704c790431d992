"""The results store: append, reload, torn lines; a killed run resumes without recomputing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attrlens.errors import InputError
from attrlens.evaluation.store import ResultsStore, record_key

ROOT = Path(__file__).resolve().parents[2]


def test_record_key_is_canonical():
    assert record_key({"a": 1, "b": [1, 2]}) == record_key({"b": [1, 2], "a": 1})
    assert record_key({"a": 1}) != record_key({"a": 2})


def test_append_reload_and_torn_line(tmp_path):
    s = ResultsStore(tmp_path / "out")
    s.append({"key": "k1", "v": 1})
    s.append({"key": "k2", "v": 2})
    # a kill mid-write leaves a torn last line
    with open(s.path, "a") as f:
        f.write('{"key": "k3", "v"')
    s2 = ResultsStore(tmp_path / "out")
    assert len(s2) == 2 and "k1" in s2 and "k3" not in s2 and s2.torn_lines == 1
    s2.append({"key": "k3", "v": 3})  # starts on a fresh line
    s3 = ResultsStore(tmp_path / "out")
    assert [r["v"] for r in s3.records()] == [1, 2, 3]
    s3.append({"key": "k1", "v": 10})  # the later line wins
    assert ResultsStore(tmp_path / "out").get("k1")["v"] == 10
    with pytest.raises(InputError):
        s3.append({"v": 1})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "records.jsonl").write_text('[1, 2]\n')
    with pytest.raises(InputError, match="not a results record"):
        ResultsStore(tmp_path / "other")


SCRIPT = r"""
import json, sys, time
sys.path.insert(0, {tests!r})
from conftest import make_tiny_model
import attrlens.evaluation.runner as R

out, log, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
orig = R.ItemRunner.run

def counted(self, item, spec, key):
    rec = orig(self, item, spec, key)
    with open(log, "a") as f:  # the records counter: one line per computed record
        f.write(json.dumps([item.id, spec.label, key]) + "\n")
    time.sleep(delay)
    return rec

R.ItemRunner.run = counted
R.evaluate({data!r}, methods=["loo", ("lime", {{"num_samples": 32}})],
           metrics=["morf", "lerf", "abpc", "r2"], model=make_tiny_model(), out=out,
           n_test=32, n_calibration=16, chat=False, progress=False)
"""


def _data(tmp_path: Path) -> Path:
    p = tmp_path / "items.jsonl"
    recs = [
        {"id": "fox", "prompt": "The quick brown fox jumps over the lazy dog.",
         "output": " A stitch in time"},
        {"id": "paris", "prompt": "What is the capital of France? Answer with one word.",
         "output": " Paris"},
        {"id": "sky", "prompt": "Explain why the sky is blue.", "output": " Because of"},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def _lines(p: Path) -> list:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


@pytest.mark.integration
def test_killed_run_resumes_without_recomputing(tmp_path):
    data = _data(tmp_path)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests"), data=str(data)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out, log1 = tmp_path / "out", tmp_path / "log1"
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(log1), "2.0"],
                            env=env, start_new_session=True)
    records = out / "records.jsonl"
    t0 = time.time()
    while time.time() - t0 < 180 and not _lines(records):
        assert proc.poll() is None, "the run ended before a record appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = _lines(records)
    assert 1 <= len(first) < 6, "the kill came too late to test resuming"
    done_keys = {r["key"] for r in first}

    log2 = tmp_path / "log2"
    subprocess.run([sys.executable, str(script), str(out), str(log2), "0"], env=env,
                   check=True, timeout=300)
    recomputed = {k for _, _, k in _lines(log2)}
    assert not (recomputed & done_keys), "finished records were recomputed"
    assert len(recomputed) == 6 - len(done_keys)
    assert len(ResultsStore(out)) == 6

    # the same run without a kill gives the same summary
    fresh, log3 = tmp_path / "fresh", tmp_path / "log3"
    subprocess.run([sys.executable, str(script), str(fresh), str(log3), "0"], env=env,
                   check=True, timeout=300)
    assert len(_lines(log3)) == 6
    a = json.loads((out / "summary.json").read_text())
    b = json.loads((fresh / "summary.json").read_text())
    assert a == b
    assert (out / "summary.md").read_text() == (fresh / "summary.md").read_text()


def test_a_folder_that_holds_no_run_is_not_written_into(tmp_path):
    """A folder of the user's (their index.html and summary.md) was overwritten silently."""
    mine = tmp_path / "site"
    mine.mkdir()
    (mine / "index.html").write_text("my page")
    (mine / "summary.md").write_text("my notes")
    with pytest.raises(InputError) as ei:
        ResultsStore(mine)
    msg = str(ei.value)
    assert "is not empty and holds no attrlens run (no records.jsonl; it holds index.html, " \
           "summary.md)" in msg and "give an empty or new folder" in msg and "\n" not in msg
    assert sorted(p.name for p in mine.iterdir()) == ["index.html", "summary.md"]
    assert (mine / "index.html").read_text() == "my page"
    # an empty folder, a run's folder, and one a run left before its first record are used
    (tmp_path / "empty").mkdir()
    ResultsStore(tmp_path / "empty").append({"key": "k"})
    assert "k" in ResultsStore(tmp_path / "empty")
    (tmp_path / "early" / "attributions").mkdir(parents=True)
    ResultsStore(tmp_path / "early")


@pytest.mark.parametrize("out", ["", "  ", None])
def test_an_empty_output_folder_name_is_refused(tmp_path, monkeypatch, out):
    """--out '' wrote the run into the working directory and printed '/summary.md'."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="The output folder must be a folder name, e.g. "
                                         "--out runs/alpaca; got"):
        ResultsStore(out)
    assert list(tmp_path.iterdir()) == []
