"""Crash safety of ``hybrid-train``: SIGKILL at random steps and inside a checkpoint write.

After any kill, every checkpoint directory a user can see loads completely (a write in
progress lives in a hidden ``.NAME.tmp-*`` sibling, removed when training starts again),
the killed run's lock does not block the next one, and resuming from the latest
checkpoint reproduces the uninterrupted run's losses and weights bit for bit on the CPU.
While a trainer runs, a second one on the same output directory is refused in one line.
"""

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _train_fixtures import write_config
from safetensors.torch import load_file

from hybrid_mllm.core.checkpoint import load_checkpoint
from hybrid_mllm.core.cli import run_cli
from hybrid_mllm.train.cli_train import main
from hybrid_mllm.train.lock import LOCK
from hybrid_mllm.train.state import load_state

TESTS = Path(__file__).parent
STEPS = (1, 16)  # align, finetune
SAVE_EVERY = 4
# one thread everywhere: the same float reductions in the killed runs and in this process
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
SEED_ENV = "HYBRID_MLLM_CRASH_SEED"  # the kill steps' seed (default: a random one, printed)


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_here(*args: str) -> None:
    with one_thread():
        assert main([*args, "--device", "cpu"]) == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    root = tmp_path_factory.mktemp("reference")
    train_here(str(write_config(root, steps=STEPS, save_every=SAVE_EVERY)))
    return root / "run"


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    log = open(tmp_path / f"stderr-{time.monotonic_ns()}.txt", "w")  # a pipe could fill up and block the child
    return subprocess.Popen([sys.executable, *args, "--device", "cpu"], env=ENV, stdout=subprocess.DEVNULL, stderr=log)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the trainer exited ({proc.returncode}) before {what}: {Path(proc.stderr.name).read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def finetune_rows(run: Path) -> int:
    """Finetune steps logged so far by a running trainer (a line being written is not counted)."""
    path = run / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return sum('"stage": "finetune"' in line for line in lines)


def visible(stage_dir: Path) -> list[str]:
    return sorted(p.name for p in stage_dir.iterdir() if not p.name.startswith("."))


def hidden(stage_dir: Path) -> list[str]:
    return sorted(p.name for p in stage_dir.iterdir() if p.name.startswith("."))


def assert_checkpoints_whole(run: Path) -> None:
    """Every checkpoint a user can see rebuilds the model and restores the training state."""
    for stage_dir in run.glob("stage-*"):
        for name in visible(stage_dir):
            model = load_checkpoint(stage_dir / name).model
            load_state(stage_dir / name, model, torch.optim.AdamW(model.parameters()))


def assert_same_as(run: Path, reference: Path) -> None:
    """Every logged loss (steps redone after a resume are logged twice) and the final weights
    equal the uninterrupted run's, exactly."""
    want = {(r["stage"], r["step"]): r["loss"] for r in rows(reference)}
    got = rows(run)
    assert {(r["stage"], r["step"]) for r in got} == set(want)
    wrong = [(r["stage"], r["step"], r["loss"], want[r["stage"], r["step"]]) for r in got
             if r["loss"] != want[r["stage"], r["step"]]]
    assert not wrong, f"(stage, step, loss, uninterrupted loss): {wrong[:5]}"
    final = "stage-finetune/final/model.safetensors"
    a, b = load_file(run / final), load_file(reference / final)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def latest(stage_dir: Path) -> Path:
    return max(stage_dir.glob("step-*"))


def test_sigkill_at_random_steps_then_resume(tmp_path, reference):
    seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))  # printed: a failure replays with it
    rng = random.Random(seed)
    first = rng.randrange(SAVE_EVERY + 1, STEPS[1])  # a step checkpoint exists by then
    second = rng.randrange(first + 1, STEPS[1] + 1)
    print(f"{SEED_ENV}={seed}: killed after step {first}, then after step {second}")
    config = str(write_config(tmp_path, steps=STEPS, save_every=SAVE_EVERY))
    run, stage = tmp_path / "run", tmp_path / "run" / "stage-finetune"

    proc = start(tmp_path, "-m", "hybrid_mllm.train.cli_train", config)
    wait_for(lambda: finetune_rows(run) >= first, proc, f"step {first}")
    sigkill(proc)
    assert_checkpoints_whole(run)
    assert (run / LOCK).exists()  # left by the killed run

    resume_from, logged = latest(stage), finetune_rows(run)
    proc = start(tmp_path, "-m", "hybrid_mllm.train.cli_train", config, "--resume", str(resume_from))
    done = int(resume_from.name.split("-")[1])
    wait_for(lambda: finetune_rows(run) >= logged + second - done, proc, f"step {second} after resuming")
    sigkill(proc)
    assert_checkpoints_whole(run)

    train_here(config, "--resume", str(latest(stage)))
    assert hidden(stage) == [] and not (run / LOCK).exists()
    assert_same_as(run, reference)


@pytest.mark.parametrize("where", ["state", "rename"])
def test_sigkill_inside_a_checkpoint_write(tmp_path, reference, where):
    """Killed while writing step-000008 (the 3rd checkpoint, after align/final and step-000004):
    after the weights but before the training state, or with every file written but not renamed."""
    config = str(write_config(tmp_path, steps=STEPS, save_every=SAVE_EVERY))
    run, stage, marker = tmp_path / "run", tmp_path / "run" / "stage-finetune", tmp_path / "paused"
    proc = start(tmp_path, str(TESTS / "_crash_driver.py"), str(marker), where, "3", config)
    wait_for(marker.exists, proc, "the pause inside the checkpoint write")

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert run_cli(main, [config, "--device", "cpu"]) == 2  # a second trainer, same output directory
    assert stderr.getvalue() == (f"error: OutputLocked: {run} is in use by another training run (pid {proc.pid}): "
                                 f"wait for it to finish, or choose another train.output_dir\n")

    sigkill(proc)
    assert visible(stage) == ["step-000004"]
    assert [name.split(".tmp-")[0] for name in hidden(stage)] == [".step-000008"]
    assert_checkpoints_whole(run)

    train_here(config, "--resume", str(stage / "step-000004"))  # the dead run's lock does not block
    assert hidden(stage) == [] and not (run / LOCK).exists()
    assert_same_as(run, reference)
