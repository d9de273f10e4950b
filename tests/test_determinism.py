"""The same config and seed give bit-identical losses in two processes on the CPU, with and
without ``train.deterministic`` (which only changes GPU kernels, and must neither break nor
change anything on the CPU)."""

import os
import subprocess
import sys

import torch
from _train_fixtures import losses, write_config

from hybrid_mllm.train.cli_train import main


def test_a_second_process_gives_identical_losses(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(__file__)}
    proc = subprocess.Popen([sys.executable, "-m", "hybrid_mllm.train.cli_train", str(write_config(there, steps=(2, 6))),
                             "train.deterministic=true", "--device", "cpu"],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(there / "stderr.txt", "w"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the other process: the same float reductions
    try:
        assert main([str(write_config(here, steps=(2, 6))), "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert proc.wait(timeout=300) == 0, (there / "stderr.txt").read_text()[-2000:]
    a, b = ([*losses(r / "run", "align"), *losses(r / "run", "finetune")] for r in (here, there))
    assert len(a) == 8 and a == b, (a, b)
