"""The core ``train`` task: the one training loop driven by [prior] + [dataset] + [objective]."""

from __future__ import annotations

import pytest
import torch
from emverse.checkpoint import load_checkpoint
from emverse.errors import EmverseError
from emverse.recipe import load_recipe
from emverse.run import read_metrics, run_recipe

pytest.importorskip("emverse_diffusion")

COMMON = """
schema_version = 1
name = "tiny"
seed = 3
task = "{task}"
[forward_model]
type = "example.linear_gaussian"
dim_x = 2
dim_y = 3
noise_sigma = 0.3
[dataset]
type = "diffusion.simulated"
n_train = 256
n_validation = 32
conditional = true
[dataset.prior]
type = "example.gaussian"
dim = 2
[prior]
type = "diffusion.mlp"
dim = 2
condition_dim = 3
hidden = 8
depth = 1
"""

OPTIONS = """steps = 60
batch_size = 32
learning_rate = 2e-3
lr_decay = "cosine"
ema_decay = 0.9
validate_every = 20
checkpoint_every = 25
"""


def test_core_train_equals_the_python_api_and_reloads(tmp_path):
    """The core task and the plugin's Python API (``emverse_diffusion.training.train``, the
    documented way to train in a script) run the same loop and objective from the same data and
    seed: identical EMA weights and validation loss, and a checkpoint the prior loads back."""
    from emverse.run import RunContext, stable_seed
    from emverse_diffusion.training import TrainConfig, train

    core = tmp_path / "core.toml"
    core.write_text(COMMON.format(task="train") + '[options]\n' + OPTIONS + 'amp = false\ncheckpoint_name = "model"\n'
                    + '[objective]\ntype = "diffusion.denoising"\n')
    a = run_recipe(core, tmp_path / "a", progress=False)
    torch.manual_seed(3)  # the network's initialisation, as a run seeds it
    ctx = RunContext(load_recipe(core), tmp_path / "api-ctx")
    prior, dataset = ctx.build("prior"), ctx.build("dataset")
    train_data, validation = dataset.splits(ctx.generator("data"), dtype=ctx.dtype)
    config = TrainConfig(steps=60, batch_size=32, learning_rate=2e-3, lr_decay="cosine", ema_decay=0.9,
                         validate_every=20, checkpoint_every=25, amp=False,
                         seed=stable_seed(3, "train") % (2**62))
    api = train(prior, train_data, config, out_dir=tmp_path / "b", validation=validation, progress=False)
    ta = load_checkpoint(a / "model.safetensors").tensors
    for name, value in api.ema.items():
        assert torch.equal(ta[f"ema.{name}"], value), name
    ma = read_metrics(a)
    assert ma["validation_loss"] == api.history["val_loss"][-1] and ma["steps"] == 60
    # the saved prior loads back through its own checkpoint field
    recipe = load_recipe(core, overrides=[f"prior.checkpoint={a / 'model.safetensors'}"])
    prior = RunContext(recipe, tmp_path / "ctx").build("prior")
    for name, value in prior.network.state_dict().items():
        assert torch.equal(value, ta[f"ema.{name}"]), name


def test_an_objective_for_another_prior_is_refused_at_start(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(COMMON.format(task="train").replace('type = "diffusion.mlp"\ndim = 2\ncondition_dim = 3\nhidden = 8\ndepth = 1\n',
                                     'type = "example.gaussian"\ndim = 2\n')
                      + '[options]\nsteps = 5\nbatch_size = 8\n[objective]\ntype = "diffusion.denoising"\n')
    with pytest.raises(EmverseError, match="cannot save trained weights|trains a network diffusion prior"):
        run_recipe(recipe, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["adam", "lbfgs"])
def test_resume_file_continues_an_optimiser_exactly(tmp_path, kind):
    """ResumeFile round-trips a module and its optimiser (Adam moments; L-BFGS's direction
    history, lists of tensors with empty slots, and its counters): 4 steps, save, a fresh module and optimiser,
    load, 6 more steps equal 10 uninterrupted steps bit for bit; a changed setting is refused."""
    from emverse.checkpoint import ResumeFile

    target = torch.linspace(-1.0, 2.0, 5, dtype=torch.float64)

    def make():
        module = torch.nn.Linear(5, 1).double()
        torch.nn.init.zeros_(module.weight)
        torch.nn.init.constant_(module.bias, 0.3)
        if kind == "adam":
            return module, torch.optim.Adam(module.parameters(), lr=0.05)
        return module, torch.optim.LBFGS(module.parameters(), lr=0.5, max_iter=3, history_size=20)

    def step(module, optimizer):
        def closure():
            optimizer.zero_grad()
            loss = ((module.weight[0] - target) ** 4).sum() + module.bias.pow(2).sum()
            loss.backward()
            return loss
        if kind == "adam":
            closure()
            optimizer.step()
        else:
            optimizer.step(closure)

    straight, opt = make()
    for _ in range(10):
        step(straight, opt)
    first, opt = make()
    for _ in range(4):
        step(first, opt)
    ResumeFile(tmp_path / "state.safetensors", settings={"lr": 0.05}).save(first, opt, 4, {"loss": [1.0]})
    again, opt = make()
    done, history, extra = ResumeFile(tmp_path / "state.safetensors", settings={"lr": 0.05}).load(again, opt)
    assert (done, history, extra) == (4, {"loss": [1.0]}, {})
    for _ in range(6):
        step(again, opt)
    assert torch.equal(again.weight, straight.weight) and torch.equal(again.bias, straight.bias)
    with pytest.raises(EmverseError, match="lr: checkpoint 0.05, now 0.1"):
        ResumeFile(tmp_path / "state.safetensors", settings={"lr": 0.1}).load(*make())


def test_an_objective_that_does_not_fit_the_prior_is_refused_at_validation(tmp_path):
    """cdi.augmented (CBED-pattern networks) asked to train mep.unet3d (a phase-volume network):
    refused by `emverse recipe validate` with both table paths, before any run directory."""
    pytest.importorskip("emverse_cdi")
    pytest.importorskip("emverse_mep")
    from emverse.cli import main

    recipe = tmp_path / "bad.toml"
    recipe.write_text('schema_version = 1\nname = "bad"\ntask = "train"\n[options]\nsteps = 5\n'
                      '[dataset]\ntype = "diffusion.simulated"\n[dataset.prior]\ntype = "example.gaussian"\n'
                      '[objective]\ntype = "cdi.augmented"\n[prior]\ntype = "mep.unet3d"\n')
    with pytest.raises(EmverseError, match=r"\$\.objective.*'cdi.augmented' trains cbed_pattern networks, but "
                                           r"\[prior\] 'mep.unet3d' is a phase_volume network"):
        load_recipe(recipe)
    assert main(["recipe", "validate", str(recipe)]) == 2
    assert not (tmp_path / "runs").exists()


def test_sigterm_inside_a_step_is_held_until_the_step_is_whole(tmp_path):
    """A SIGTERM that lands inside step 13 (sent by the objective itself) lets the step finish;
    the run's interrupt hook then writes the resume file at step 14, between the periodic
    checkpoints (10, 20), and resuming from it gives the uninterrupted weights."""
    import os
    import signal

    from emverse.errors import RunInterrupted
    from emverse.interfaces import Objective
    from emverse.runstate import interrupt_on_signals
    from emverse.training import TensorData, TrainConfig, fit

    class Squares(Objective):
        def __init__(self, stop_at=None):
            self.stop_at = stop_at

        def loss(self, network, batch):
            if batch.step == self.stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return ((network(batch.x) - batch.condition) ** 2).mean() + 0.01 * batch.randn(1).mean()

    def net():
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2).double()

    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    data = TensorData(x, x[:, :2] * 2.0)
    config = TrainConfig(steps=30, batch_size=8, learning_rate=0.05, ema_decay=0.9, checkpoint_every=10, amp=False)
    straight = net()
    fit(straight, Squares(), data, config, progress=False)

    hooks = []
    stopped = net()
    with interrupt_on_signals(), pytest.raises(RunInterrupted):
        fit(stopped, Squares(stop_at=13), data, config, out_dir=tmp_path, progress=False, on_interrupt=hooks.append)
    for hook in hooks:
        hook()
    assert load_checkpoint(tmp_path / "model-resume.safetensors").metadata["step"] == 14
    again = net()
    result = fit(again, Squares(), data, config, out_dir=tmp_path, progress=False)
    assert result.resumed_from == 14
    for a, b in zip(again.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)


def test_without_an_average_the_ema_is_the_trained_weights(tmp_path):
    """ema_decay = 0 (CbLDM stages, the CDI regression): the returned and checkpointed 'EMA' are
    exactly the trained weights, read from the network rather than copied every step."""
    from emverse.interfaces import Objective
    from emverse.training import TensorData, TrainConfig, fit

    class Squares(Objective):
        def loss(self, network, batch):
            return ((network(batch.x) - batch.condition) ** 2).mean()

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    result = fit(net, Squares(), TensorData(x, x[:, :2]), TrainConfig(steps=7, batch_size=8, ema_decay=0.0,
                 checkpoint_every=3, amp=False), out_dir=tmp_path, progress=False)
    for name, value in net.state_dict().items():
        assert torch.equal(result.ema[name], value)
    saved = load_checkpoint(tmp_path / "model-resume.safetensors").tensors
    for name in net.state_dict():
        assert torch.equal(saved[f"aux.ema.{name}"], saved[f"module.{name}"])


_METHOD_OBJECTIVE_SCRIPT = '''
import os, sys, torch
from emverse.interfaces import Objective
from emverse.training import TensorData, TrainConfig, fit

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 8)
        self.head = torch.nn.Linear(8, 2)

    def energy(self, x, noise):  # not forward: what CDI's training_loss and CbLDM's VAE loss look like
        return self.head(torch.tanh(self.layer(x + 0.1 * noise)))

class ByMethod(Objective):
    def loss(self, network, batch):
        return ((network.energy(batch.x, batch.randn(3)) - batch.condition) ** 2).mean()

g = torch.Generator().manual_seed(0)
x = torch.randn(256, 3, generator=g)
torch.manual_seed(100 + int(os.environ.get("RANK", "0")))  # other weights per process: rank 0's must win
net = Net()
fit(net, ByMethod(), TensorData(x, torch.sin(x[:, :2])), TrainConfig(steps=15, batch_size=32, seed=3, amp=False),
    out_dir=sys.argv[1], progress=False)
'''


@pytest.mark.slow
def test_torchrun_averages_gradients_for_an_objective_that_calls_a_model_method(tmp_path):
    """Two processes equal one even when the objective calls a method other than forward (a
    DistributedDataParallel wrapper would not see those gradients) and the processes start
    from different weights."""
    from emverse.testing.distributed import two_processes_and_one

    two_processes_and_one(_METHOD_OBJECTIVE_SCRIPT, tmp_path)
    ddp = load_checkpoint(tmp_path / "ddp" / "model-resume.safetensors").tensors
    single = load_checkpoint(tmp_path / "single" / "model-resume.safetensors").tensors
    weights = [k for k in single if k.startswith("module.")]
    assert weights
    for name in weights:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_resume_file_of_the_earlier_layout_still_continues(tmp_path):
    """A run interrupted before the loop wrote ResumeFile's layout (model./ema./rng.noise at the
    top level) continues from its file to the weights of an uninterrupted run."""
    from emverse.checkpoint import load_checkpoint, save_checkpoint
    from emverse.interfaces import Objective
    from emverse.training import TensorData, TrainConfig, fit

    class Squares(Objective):
        def loss(self, network, batch):
            return ((network(batch.x + 0.1 * batch.randn(3)) - batch.condition) ** 2).mean()

    def net():
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2).double()

    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    data, config = TensorData(x, x[:, :2]), TrainConfig(steps=8, batch_size=8, checkpoint_every=4, amp=False)
    straight = net()
    fit(straight, Squares(), data, config, out_dir=tmp_path / "a", progress=False)
    fit(net(), Squares(), data, config, out_dir=tmp_path / "b", progress=False, stop_after=5)
    path = tmp_path / "b" / "model-resume.safetensors"
    new = load_checkpoint(path)  # written at step 4; turn it into the earlier layout
    old = {("model." + k[7:] if k.startswith("module.") else k[4:] if k.startswith("aux.") else k): v
           for k, v in new.tensors.items()}
    save_checkpoint(path, old, metadata={"step": new.metadata["step"], "history": new.metadata["history"],
                                         "optimizer_kinds": new.metadata["optimizer_kinds"],
                                         "train_config": new.metadata["extra"]["train_config"], "world_size": 1})
    resumed = net()
    result = fit(resumed, Squares(), data, config, out_dir=tmp_path / "b", progress=False)
    assert result.resumed_from == 4
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_simulated_store_trains_a_conditional_prior(tmp_path):
    """The joints end to end with no plugin task: the core simulate task writes a store of a
    forward model's (unknowns, noisy observations); diffusion.zarr reads it as training pairs
    (its default keys are the store's) for the core train task, which writes the prior."""
    import zarr

    head = 'schema_version = 1\nname = "{name}"\nseed = 3\ntask = "{task}"\n'
    model = '[forward_model]\ntype = "example.linear_gaussian"\ndim_x = 2\ndim_y = 3\nnoise_sigma = 0.3\n'
    simulate = tmp_path / "simulate.toml"
    simulate.write_text(head.format(name="s", task="simulate")
                        + '[options]\nn = 256\nchunk_size = 64\nstore = "pairs.zarr"\n' + model)
    run_recipe(simulate, tmp_path / "s", progress=False)
    group = zarr.open_group(str(tmp_path / "pairs.zarr"), mode="r")
    assert group["parameters"].shape == (256, 2) and group["observations"].shape == (256, 3)
    train = tmp_path / "train.toml"
    train.write_text(head.format(name="t", task="train")
                     + '[options]\nsteps = 20\nbatch_size = 32\namp = false\ncheckpoint_name = "model"\n'
                     + '[dataset]\ntype = "diffusion.zarr"\npath = "pairs.zarr"\n'
                     + '[objective]\ntype = "diffusion.denoising"\n'
                     + '[prior]\ntype = "diffusion.mlp"\ndim = 2\ncondition_dim = 3\nhidden = 8\ndepth = 1\n')
    run = run_recipe(train, tmp_path / "t", progress=False)
    metrics = read_metrics(run)
    assert metrics["steps"] == 20 and metrics["train_loss"] > 0
    saved = load_checkpoint(run / "model.safetensors").tensors
    assert saved and all(torch.isfinite(v).all() for v in saved.values())


def test_a_posterior_check_without_a_sampler_is_refused_at_validation(tmp_path):
    """train with options.n_observations > 0 but no [sampler]: refused by `emverse recipe
    validate`, naming the option and the missing table, before any run directory; and an infer
    recipe whose [dataset] would contradict a fixed truth is refused the same way."""
    from emverse.cli import main

    recipe = tmp_path / "check.toml"
    recipe.write_text(COMMON.format(task="train") + '[options]\nsteps = 5\nbatch_size = 8\nn_observations = 3\n'
                      '[objective]\ntype = "diffusion.denoising"\n')
    with pytest.raises(EmverseError, match=r"\$\.options\.n_observations.*needs \[sampler\]"):
        load_recipe(recipe)
    assert main(["recipe", "validate", str(recipe)]) == 2
    infer = tmp_path / "infer.toml"
    infer.write_text(COMMON.format(task="infer") + '[options]\nn_observations = 1\ntruth = [0.1, 0.2]\n'
                     '[sampler]\ntype = "diffusion.ddim"\nsteps = 4\n')
    with pytest.raises(EmverseError, match=r"\$\.options\.truth.*the \[dataset\] draws the truths"):
        load_recipe(infer)
    assert not (tmp_path / "runs").exists()


def test_simulate_without_a_forward_model_or_a_dataset_is_refused_at_validation(tmp_path):
    """The simulate task runs a campaign of the [forward_model]'s draws or writes a [dataset]'s
    own store; with neither it is refused before any run directory, naming both tables."""
    from emverse.cli import main

    recipe = tmp_path / "sim.toml"
    recipe.write_text('schema_version = 1\nname = "s"\ntask = "simulate"\n[options]\nn = 4\n')
    with pytest.raises(EmverseError, match=r"needs a \[forward_model\] table .* or a \[dataset\] table"):
        load_recipe(recipe)
    assert main(["recipe", "validate", str(recipe)]) == 2
    assert not (tmp_path / "runs").exists()
