"""The core refiners resume: a refinement stopped at any point and continued from its resume
file ends exactly where the uninterrupted one does, and L-BFGS run in blocks (to write the
file between them) takes the path of one uninterrupted call."""

from __future__ import annotations

import pytest
import torch
from emverse.builtin.refiners import AdamRefiner, LBFGSRefiner
from emverse.checkpoint import ResumeFile
from emverse.errors import EmverseError


class _Rosenbrock(torch.nn.Module):
    """The 6-D Rosenbrock valley as a model that owns its loss (minimum 0 at all ones)."""

    def __init__(self):
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor([-1.2, 1.0, -0.5, 0.8, 1.5, -1.0], dtype=torch.float64))

    def forward(self):
        return self.x

    def loss(self, x, observation):
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum() * observation


class _Stop(Exception):
    pass


def _stop_after(n):
    calls = [0]

    def callback(*_):
        calls[0] += 1
        if calls[0] > n:
            raise _Stop

    return callback


@pytest.mark.parametrize("steps", [12, 200])
@pytest.mark.parametrize("every", [1, 3, 7])
def test_lbfgs_in_blocks_takes_the_path_of_one_call(tmp_path, steps, every):
    """steps = 12 ends on the iteration budget, steps = 200 on torch's own stopping tests."""
    straight_model, blocked_model = _Rosenbrock(), _Rosenbrock()
    straight = LBFGSRefiner(steps=steps).refine(straight_model, 1.0)
    blocked = LBFGSRefiner(steps=steps).refine(blocked_model, 1.0,
                                               resume=ResumeFile(tmp_path / "r.safetensors", every))
    assert torch.equal(straight_model.x, blocked_model.x)
    assert blocked.history["loss"] == straight.history["loss"]  # not one evaluation more
    assert blocked.iterations == straight.iterations
    assert blocked.converged == straight.converged
    if steps == 200:
        assert straight.converged and straight.history["loss"][-1] < 1e-12


@pytest.mark.parametrize("refiner", [LBFGSRefiner(steps=60), AdamRefiner(steps=300, lr=0.02)],
                         ids=["lbfgs", "adam"])
@pytest.mark.parametrize("stop_at", [5, 41])
def test_a_refinement_stopped_anywhere_resumes_exactly(tmp_path, refiner, stop_at):
    straight_model = _Rosenbrock()
    straight = refiner.refine(straight_model, 1.0)
    path = tmp_path / "r.safetensors"
    with pytest.raises(_Stop):
        refiner.refine(_Rosenbrock(), 1.0, resume=ResumeFile(path, 4), callback=_stop_after(stop_at))
    assert path.exists()
    model = _Rosenbrock()  # a fresh process: the start values, overwritten from the file
    told, calls = [], []
    resumed = refiner.refine(model, 1.0, resume=ResumeFile(path, 4, log=told.append),
                             callback=lambda *_: calls.append(1))
    assert torch.equal(model.x, straight_model.x)
    assert resumed.history["loss"] == straight.history["loss"]
    # it went on from the file: only the evaluations after it were made again
    assert told and told[0].startswith("resumed: r.safetensors at step")
    assert 0 < len(calls) <= len(straight.history["loss"]) - 4  # the file was written every 4
    # a finished refinement is restored from its file, not run again
    again_model = _Rosenbrock()
    again = refiner.refine(again_model, 1.0, resume=ResumeFile(path, 4), callback=_stop_after(0))
    assert torch.equal(again_model.x, straight_model.x) and again.iterations == straight.iterations


def test_a_resume_file_of_another_refinement_is_refused(tmp_path):
    path = tmp_path / "r.safetensors"
    AdamRefiner(steps=3).refine(_Rosenbrock(), 1.0, resume=ResumeFile(path, 1, {"refiner": "core.adam"}))
    with pytest.raises(EmverseError, match="settings changed"):
        AdamRefiner(steps=3).refine(_Rosenbrock(), 1.0, resume=ResumeFile(path, 1, {"refiner": "core.lbfgs"}))

    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.x = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))

        def forward(self):
            return self.x

        def loss(self, x, observation):
            return (x**2).sum()

    with pytest.raises(EmverseError, match="other shapes or names"):
        AdamRefiner(steps=3).refine(Other(), 1.0, resume=ResumeFile(path, 1, {"refiner": "core.adam"}))
