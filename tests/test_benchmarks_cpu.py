"""The CPU benchmarks behind README figures still run and print their tables
(small settings: this checks the code, not the numbers)."""

import pytest
import torch

from benchmarks import attention_cpu, step_cpu


@pytest.fixture(autouse=True)
def _threads():
    """The benchmarks pin one thread for the process: give the rest of the suite its own."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_attention_cpu_prints_one_row_per_shape(capsys):
    attention_cpu.main(["--heads", "4", "16", "--sides", "2,4", "--batch", "2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 20 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["4", "16"]
    for r in rows:  # sdpa, bmm, ratio twice: all positive numbers
        assert all(float(c) > 0 for c in r.strip("|").split("|")[2:])


def test_step_cpu_prints_every_shape_and_variant(capsys, monkeypatch):
    monkeypatch.setattr(step_cpu, "SHAPES", ((4, 2),))
    step_cpu.main(["--rounds", "1", "--steps", "4"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 4 | 2 |"))
    assert row.count(" ms") == len(step_cpu.VARIANTS)
