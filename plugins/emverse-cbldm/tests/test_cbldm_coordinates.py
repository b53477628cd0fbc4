"""The "coordinates" matrix decoder: a realisable W from decoded positions and occupancies."""

import json

import numpy as np
import pytest
import tomllib
import torch
from emverse.checkpoint import save_checkpoint
from emverse.errors import EmverseError, RecipeError
from emverse.recipe import validate_recipe
from emverse_cbldm.clusters import ClusterSpec, build_cluster, from_blocks, weight_matrix
from emverse_cbldm.models import (
    CNNBaseline,
    CoordinateDecoder,
    MatrixVAE,
    MLPBaseline,
    make_decoder,
)
from emverse_cbldm.prior import CbLDMPrior
from emverse_cbldm.recovery import kabsch_rmsd, recover_positions


def _decoder_holding(cluster: np.ndarray, block: int = 32, latent: int = 8) -> CoordinateDecoder:
    """A decoder whose output is ``cluster`` (Å, atoms first) plus a small z-dependent shift."""
    torch.manual_seed(0)
    dec = CoordinateDecoder(block, latent, 4)
    n = cluster.shape[0]
    bias = torch.zeros(2 * block, 4)
    bias[:n, :3] = torch.as_tensor(cluster, dtype=torch.float32) / dec.COORD_SCALE
    bias[n:, :3] = 30.0  # padding rows far away and switched off
    bias[:, 3] = -20.0
    bias[:n, 3] = 20.0
    with torch.no_grad():
        dec.net[-1].bias.copy_(bias.flatten())
    return dec


def test_output_shape_range_and_symmetry():
    torch.manual_seed(1)
    dec = CoordinateDecoder(32, 8, 4)
    z = torch.randn(3, 1, 8, 8)
    out = dec(z).detach()
    assert out.shape == (3, 4, 32, 32)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    w = from_blocks(out)
    assert torch.equal(w, w.transpose(1, 2))
    # the diagonal is the occupancy
    _, logits = dec.coordinates(z)
    torch.testing.assert_close(torch.diagonal(w, dim1=1, dim2=2), torch.sigmoid(logits).detach())


def test_matches_the_dataset_matrix_for_binary_occupancy():
    """Full occupancy on the first k rows, none after: exactly clusters.weight_matrix (padded)."""
    x_atoms = build_cluster(ClusterSpec("Ico", (3,), "Au", 2.88))
    k = x_atoms.shape[0]
    dec = CoordinateDecoder(32, 8, 4)
    x = torch.zeros(1, 64, 3, dtype=torch.float64)
    x[0, :k] = torch.as_tensor(x_atoms)
    x[0, k:] = torch.randn(64 - k, 3, dtype=torch.float64)
    logits = torch.full((1, 64), -1e4, dtype=torch.float64)
    logits[0, :k] = 1e4
    w = dec.matrix(x, logits)[0].numpy()
    np.testing.assert_allclose(w, weight_matrix(x_atoms, 260.0, 64), atol=1e-12)


def test_recovery_returns_the_decoders_own_coordinates():
    cluster = build_cluster(ClusterSpec("Ico", (3,), "Au", 2.88))  # 55 atoms
    dec = _decoder_holding(cluster)
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        blocks = dec(z)
        xs, logits = dec.coordinates(z)
    for i in range(2):
        own = xs[i][torch.sigmoid(logits[i]) > 0.5].double().numpy()
        assert own.shape[0] == cluster.shape[0]
        # the z-dependent part moved the atoms off the template: recovery must follow the decoder
        assert kabsch_rmsd(own, cluster) > 0.01
        x, info = recover_positions(blocks[i].double(), maxiter=200)
        assert info["n_atoms"] == cluster.shape[0]
        assert kabsch_rmsd(x, own) < 0.05


def test_vae_and_baselines_with_the_coordinates_decoder():
    torch.manual_seed(2)
    pdf = torch.rand(2, 3000)
    blocks = torch.rand(2, 4, 32, 32)
    vae = MatrixVAE(32, 8, 4, decoder="coordinates")
    assert isinstance(vae.decoder, CoordinateDecoder)
    loss, _ = vae.loss(blocks, pdf)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in vae.decoder.parameters())
    for cls in (MLPBaseline, CNNBaseline):
        net = cls(32, 8, 4, decoder="coordinates")
        assert isinstance(net.decoder, CoordinateDecoder) and net(pdf).shape == blocks.shape


def test_bad_decoder_value_is_refused_with_the_field_name():
    with pytest.raises(EmverseError, match="matrix_decoder 'mlp'"):
        make_decoder("mlp", 32, 8, 4)
    with pytest.raises(EmverseError, match="matrix_decoder"):
        MatrixVAE(32, 8, 4, decoder="dense")
    raw = tomllib.loads(
        'schema_version = 1\nname = "x"\nseed = 1\ntask = "cbldm.train"\n'
        '[options]\nmatrix_decoder = "points"\n[dataset]\ntype = "cbldm.dataset"\n'
    )
    with pytest.raises(RecipeError, match="matrix_decoder"):
        validate_recipe(raw)
    raw["options"]["matrix_decoder"] = "coordinates"
    recipe = validate_recipe(raw)
    assert recipe.task.params.matrix_decoder == "coordinates"


def test_checkpoint_stores_the_decoder_and_refuses_the_wrong_one(tmp_path):
    torch.manual_seed(0)
    model = CbLDMPrior(
        block=32, latent_size=8, pdf_channels=4, matrix_channels=4, unet_channels=8,
        baselines=("mlp",), matrix_decoder="coordinates",
    )  # fmt: skip
    path = save_checkpoint(
        tmp_path / "c.safetensors", model.checkpoint_tensors(), metadata=model.checkpoint_metadata()
    )
    loaded = CbLDMPrior.from_checkpoint(path, matrix_decoder="coordinates")
    assert isinstance(loaded.matrix_vae.decoder, CoordinateDecoder)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded.decode(x), model.eval().decode(x))
    with pytest.raises(EmverseError, match="matrix_decoder = 'coordinates'"):
        CbLDMPrior.from_checkpoint(path, matrix_decoder="conv")
    # a checkpoint from before the option holds the conv decoder
    old = CbLDMPrior(block=32, latent_size=8, pdf_channels=4, matrix_channels=4, unet_channels=8)
    meta = old.checkpoint_metadata()
    config = json.loads(meta["cbldm_config"])
    del config["matrix_decoder"]
    meta["cbldm_config"] = json.dumps(config)
    p_old = save_checkpoint(tmp_path / "o.safetensors", old.checkpoint_tensors(), metadata=meta)
    assert CbLDMPrior.from_checkpoint(p_old).config["matrix_decoder"] == "conv"
    with pytest.raises(EmverseError, match="matrix_decoder"):
        CbLDMPrior.from_checkpoint(p_old, matrix_decoder="coordinates")
