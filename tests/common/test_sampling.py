"""common.sampling: (temperature, top_p) -> generate() kwargs, refused when out of range; the server's wrapper."""
from __future__ import annotations

import math

import pytest

from common.cli import UserError
from common.sampling import sampling_kwargs
from common.serving.backend import Sampling
from common.serving.generation import hf_sampling

GREEDY = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


@pytest.mark.parametrize("top_p", [1.0, 0.3])
def test_temperature_zero_is_greedy_whatever_top_p(top_p):
    assert sampling_kwargs(0.0, top_p) == GREEDY
    assert sampling_kwargs(0, top_p) == GREEDY  # an int zero too


def test_positive_temperature_samples_with_top_p_and_top_k_off():
    kwargs = sampling_kwargs(0.7, 0.9)
    assert kwargs == {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0}
    assert type(kwargs["temperature"]) is float and type(kwargs["top_p"]) is float
    assert sampling_kwargs(1, 1) == {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}


@pytest.mark.parametrize("temperature", [-0.1, math.nan, math.inf, -math.inf])
def test_bad_temperature_is_refused(temperature):
    with pytest.raises(UserError) as err:
        sampling_kwargs(temperature, 1.0)
    assert str(err.value) == f"temperature must be a finite number >= 0, got {temperature}"


@pytest.mark.parametrize("top_p", [0.0, -0.5, 1.01, math.nan])
def test_bad_top_p_is_refused_even_when_greedy(top_p):
    for temperature in (0.0, 0.5):
        with pytest.raises(UserError) as err:
            sampling_kwargs(temperature, top_p)
        assert str(err.value) == f"top_p must be in (0, 1], got {top_p}"


def test_server_adds_one_beam_on_top():
    """The server's kwargs are common.sampling's plus num_beams 1 (a checkpoint's num_beams must not apply)."""
    assert hf_sampling(Sampling(0.0, 1.0, 16)) == {**GREEDY, "num_beams": 1}
    assert hf_sampling(Sampling(0.5, 0.8, 16)) == {"do_sample": True, "temperature": 0.5, "top_p": 0.8, "top_k": 0,
                                                   "num_beams": 1}
