"""Outputs, final states and gradients of jaxseq.LSTM/GRU/RNN against torch packed sequences.

Default run: every (cell, num_layers 1-3, uni/bidirectional, proj_size) combination, each in two
settings of (bias, batch_first, hx) so that every value of those flags meets every combination of
the others, in float64, and a third of them in float32 (the other float32 cases are ``slow``). The full cartesian product is marked `slow`.
Tolerances (relative to the largest torch value): float64 1e-10, float32 1e-5.
"""
import itertools

import pytest

from jaxseq.parity.harness import Config, run, worst

TOL = {"float64": 1e-10, "float32": 1e-5}
CELLS = [("LSTM", 0), ("LSTM", 2), ("GRU", 0), ("RNN_TANH", 0), ("RNN_RELU", 0)]
FLAG_SETTINGS = [dict(bias=True, batch_first=False, with_hx=True),
                 dict(bias=False, batch_first=True, with_hx=False)]


def _configs(flag_settings):
    for (mode, proj), layers, bidi, flags in itertools.product(CELLS, [1, 2, 3], [False, True],
                                                               flag_settings):
        yield Config(mode=mode, proj_size=proj, num_layers=layers, bidirectional=bidi, **flags,
                     seed=layers * 10 + bidi)


DEFAULT = list(_configs(FLAG_SETTINGS))
FULL = list(_configs([dict(bias=b, batch_first=f, with_hx=h)
                      for b, f, h in itertools.product([True, False], repeat=3)]))


def _check(cfg, dtype, **options):
    errors = run(cfg, dtype, **options)
    assert errors.pop("padding_and_empty_rows_exact") == 0, "padding output/grad not exactly zero"
    bad = {k: v for k, v in errors.items() if not v <= TOL[dtype]}
    assert not bad, f"{cfg.label()} {dtype}: {bad}"
    assert {"output", "h_n", "grad_x"} <= errors.keys()


#: float64 on every default config, float32 on every third (the rest of float32 is ``slow``).
CASES = [(c, "float64") for c in DEFAULT] + [(c, "float32") for c in DEFAULT[::3]]


@pytest.mark.parametrize("cfg, dtype", CASES, ids=[f"{c.label()}-{d}" for c, d in CASES])
def test_parity(cfg, dtype):
    _check(cfg, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [c for i, c in enumerate(DEFAULT) if i % 3], ids=Config.label)
def test_parity_float32_rest(cfg):
    _check(cfg, "float32")


@pytest.mark.parametrize("cfg, dtype", [
    (Config(mode="LSTM", num_layers=2, bidirectional=True, proj_size=2, with_hx=True, zero_rows=1),
     "float64"),
    (Config(mode="GRU", num_layers=2, bidirectional=True, batch_first=True, bias=False), "float32"),
    (Config(mode="RNN_RELU", with_hx=True), "float64"),
], ids=lambda v: v.label() if isinstance(v, Config) else v)
def test_parity_of_the_forward_mode_path(cfg, dtype):
    """``forward_mode=True``: reverse mode is JAX's transpose of the custom JVP; same parity."""
    _check(cfg, dtype, forward_mode=True)


@pytest.mark.parametrize("cfg", [
    Config(mode="LSTM", num_layers=2, bidirectional=True, with_hx=True, zero_rows=2),
    Config(mode="LSTM", proj_size=2, bidirectional=True, batch_first=True, with_hx=True, zero_rows=1),
    Config(mode="GRU", num_layers=2, bidirectional=True, with_hx=True, zero_rows=3, batch=7),
    Config(mode="RNN_TANH", bias=False, with_hx=False, zero_rows=1),
], ids=Config.label)
def test_zero_length_rows(cfg):
    """Non-empty rows match torch; empty rows output only padding and return h0 (identity grad)."""
    _check(cfg, "float64")


@pytest.mark.parametrize("cfg", [Config(time=1, batch=1), Config(time=1, batch=4, bidirectional=True),
                                 Config(mode="GRU", batch=1, time=9, num_layers=2)], ids=Config.label)
def test_edge_shapes(cfg):
    _check(cfg, "float64")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cfg", FULL, ids=Config.label)
def test_parity_full_matrix(cfg, dtype):
    _check(cfg, dtype)


def test_errors_are_actually_measured():
    """Sanity check of the harness itself: a perturbed weight must show up as a large error."""
    import numpy as np
    from jaxseq.parity import harness

    original = harness.jaxseq.load_torch_state_dict

    def perturbed(module, sd):
        sd = {k: v.clone() for k, v in sd.items()}
        sd["weight_hh_l0"][0, 0] += 1e-3
        return original(module, sd)

    harness.jaxseq.load_torch_state_dict = perturbed
    try:
        errors = run(Config(), "float64")
    finally:
        harness.jaxseq.load_torch_state_dict = original
    assert worst(errors, "output") > 1e-6 and np.isfinite(worst(errors))
