"""The IRM has the paper's shape, refuses bad configs and hosts of another shape, and round-trips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import tiny_model
from irmlib.host import Host
from irmlib.irm import IRM, IRMConfig, IRMShapeError, load_irm, read_irm_record, save_irm


def test_paper_architecture_and_output_shape():
    config = IRMConfig(hidden_size=8, n_layers=5)
    irm = IRM(config)
    linears = [m for m in irm.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 24), (24, 24), (24, 24), (24, 24), (24, 40)]
    assert sum(isinstance(m, nn.ReLU) for m in irm.mlp) == 4
    assert irm(torch.randn(2, 3, 8)).shape == (2, 3, 5, 8)


def test_embedded_sized_irm_has_about_40m_parameters():
    irm = IRM(IRMConfig(hidden_size=576, n_layers=30))
    assert 39e6 < sum(p.numel() for p in irm.parameters()) < 41e6


def test_zero_init_outputs_zero_and_paper_init_does_not():
    x = torch.randn(4, 8)
    assert IRM(IRMConfig(hidden_size=8, n_layers=3)).forward(x).abs().max() == 0
    assert IRM(IRMConfig(hidden_size=8, n_layers=3, init="paper")).forward(x).abs().max() > 0


@pytest.mark.parametrize("overrides,message", [
    ({"injected_layers": (0, 7)}, "out of range"),
    ({"injected_layers": ()}, "empty"),
    ({"injected_layers": (2, 1)}, "increasing"),
    ({"site": "mlp"}, "site"),
    ({"init": "xavier"}, "init"),
    ({"input_layer": 2, "injected_layers": (1, 2)}, "before the IRM's input"),
])
def test_bad_configs_are_clear_errors(overrides, message):
    with pytest.raises(IRMShapeError, match=message):
        IRMConfig(hidden_size=8, n_layers=5, **overrides)


def test_save_load_round_trip(tmp_path):
    host = Host.from_model(tiny_model("llama"), name="tiny")
    irm = IRM(IRMConfig.for_host(host, injected_layers=(1, 3), init="paper"))
    save_irm(irm, tmp_path / "ckpt", host.shape, {"emotion": "anger"})
    loaded = load_irm(tmp_path / "ckpt", host)
    assert loaded.config == irm.config
    for (name, a), (_, b) in zip(irm.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    record = read_irm_record(tmp_path / "ckpt")
    assert record["host"] == host.shape and record["metadata"]["emotion"] == "anger"
    assert not list((tmp_path / "ckpt").glob("*.tmp")), "no temporary files left behind"


def test_loading_into_host_of_another_shape_names_both_shapes(tmp_path):
    host = Host.from_model(tiny_model("llama"), name="tiny")
    save_irm(IRM(IRMConfig.for_host(host)), tmp_path / "ckpt", host.shape)
    other = Host.from_model(tiny_model("llama", hidden_size=48), name="wider")
    with pytest.raises(IRMShapeError, match=r"4 layers x hidden 32.*'wider' has 4 layers x hidden 48"):
        load_irm(tmp_path / "ckpt", other)
