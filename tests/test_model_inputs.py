"""The library checks what it is given (issue 24 item 4): on a loaded model, embed_support, classify and forward
answer a wrong argument with one ValueError naming the argument and the shape it expects, instead of a torch
error deep inside the network or, for labels out of range, phantom classes and NaN images, outputs that are
silently wrong."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import matchnet


@pytest.fixture(scope="module")
def model():
    return matchnet.load("omniglot-vinyals")


def episode(way: int = 5, queries: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    support = (torch.rand(1, way, 1, 28, 28, generator=g) > 0.8).float()
    return support, torch.arange(way).unsqueeze(0), (torch.rand(1, queries, 1, 28, 28, generator=g) > 0.8).float()


def nan_at(x: torch.Tensor, index: int) -> torch.Tensor:
    x = x.clone()
    x[0, index, 0, 5, 5] = float("nan")
    return x


S, L, Q = episode()
SUPPORT_CASES = {  # name: (images, labels, n_way, message)
    "labels out of range": (S, torch.tensor([[0, 1, 2, 3, 7]]), 5, r"labels: expected class indices 0\.\.4 "
                            r"\(n_way = 5\); got values from 0 to 7"),
    "negative label": (S, torch.tensor([[0, 1, 2, 3, -1]]), 5, r"labels: expected class indices 0\.\.4"),
    "n_way larger than the labels": (S, L, 8, r"labels: every class 0\.\.7 needs a support example \(n_way = 8\); "
                                     r"the labels hold only 5 distinct values"),
    "a gap in the labels": (S, torch.tensor([[0, 1, 2, 3, 5]]), None, r"every class 0\.\.5 needs a support example"),
    "one NaN support image": (nan_at(S, 3), L, 5, r"images\[0, 3\] holds NaN or infinite values"),
    "32x32 into a 28x28 model": (torch.rand(1, 5, 1, 32, 32), L, 5, r"images: expected \[E, S, 1, 28, 28\]; got "
                                 r"\[1, 5, 1, 32, 32\]: this model takes 1x28x28 images"),
    "three channels": (torch.rand(1, 5, 3, 28, 28), L, 5, r"images: expected \[E, S, 1, 28, 28\]; got \[1, 5, 3, 28"),
    "no episode dimension": (S[0], L, 5, r"images: expected \[E, S, 1, 28, 28\]; got \[5, 1, 28, 28\]: the episode "
                             r"dimension is missing \(images\.unsqueeze\(0\)"),
    "labels without the episode dimension": (S, L[0], 5, r"labels: expected an integer tensor \[E, S\] = \[1, 5\].*"
                                             r"got \[5\]: the episode dimension is missing"),
    "one label too few": (S, L[:, :4], 5, r"labels: expected an integer tensor \[E, S\] = \[1, 5\].*got \[1, 4\]"),
    "empty support": (S[:, :0], L[:, :0], None, r"images: expected \[E, S, 1, 28, 28\]; got \[1, 0, 1, 28, 28\], "
                      r"an empty tensor"),
    "a NumPy array": (S.numpy(), L, 5, r"images: expected a torch\.Tensor \[E, S, 1, 28, 28\] of floats; got "
                      r"numpy\.ndarray \(torch\.from_numpy"),
    "uint8 images": ((S * 255).to(torch.uint8), L, 5, r"images: expected a float tensor \[E, S, 1, 28, 28\] in "
                     r"\[0, 1\]; got torch\.uint8 \(images\.float\(\) / 255"),
    "float labels": (S, L.float(), 5, r"labels: expected an integer tensor \[E, S\].*got torch\.float32"),
    "NumPy labels": (S, L.numpy(), 5, r"labels: expected an integer tensor \[E, S\].*got numpy\.ndarray"),
    "n_way not a number": (S, L, "5", r"n_way: expected a positive int"),
}


@pytest.mark.parametrize("case", list(SUPPORT_CASES))
def test_embed_support_refuses_with_one_line(model, case):
    images, labels, n_way, message = SUPPORT_CASES[case]
    with pytest.raises(ValueError, match=message) as error:
        model.embed_support(images, labels, n_way)
    assert "\n" not in str(error.value)


QUERY_CASES = {  # name: (queries, message)
    "no episode dimension": (Q[0], r"images: expected \[E, Q, 1, 28, 28\]; got \[3, 1, 28, 28\]: the episode "
                             r"dimension is missing"),
    "other episode count": (Q.expand(2, -1, -1, -1, -1), r"images: expected \[E, Q, 1, 28, 28\] with E = 1, the "
                            r"support set's episodes; got \[2, 3, 1, 28, 28\]"),
    "empty queries": (Q[:, :0], r"got \[1, 0, 1, 28, 28\], an empty tensor"),
    "a NaN query": (nan_at(Q, 2), r"images\[0, 2\] holds NaN or infinite values"),
    "32x32 queries": (torch.rand(1, 3, 1, 32, 32), r"this model takes 1x28x28 images"),
    "uint8 queries": ((Q * 255).to(torch.uint8), r"got torch\.uint8"),
    "a NumPy array": (Q.numpy(), r"got numpy\.ndarray"),
}


@pytest.mark.parametrize("case", list(QUERY_CASES))
def test_classify_refuses_with_one_line(model, case):
    queries, message = QUERY_CASES[case]
    support = model.embed_support(S, L, 5)
    with pytest.raises(ValueError, match=message):
        model.classify(support, queries)


def test_classify_wants_an_embedded_support_set(model):
    with pytest.raises(ValueError, match="support: expected the SupportSet that embed_support returns; got Tensor"):
        model.classify(S, Q)


def test_features_are_checked_too(model):
    d = model.encoder.out_dim
    with pytest.raises(ValueError, match=rf"features: expected \[E, S, {d}\]; got \[1, 5, 32\]"):
        model.embed_support(None, L, 5, features=torch.rand(1, 5, 32))
    support = model.embed_support(None, L, 5, features=torch.rand(1, 5, d))
    with pytest.raises(ValueError, match=r"features\[0, 1\] holds NaN"):
        model.classify(support, features=torch.tensor([[[0.0] * d, [float("inf")] * d]]))


def test_forward_checks_shapes(model):
    with pytest.raises(ValueError, match=r"query_images: expected \[E, Q, 1, 28, 28\]; got \[1, 3, 1, 32, 32\]"):
        model(S, L, torch.rand(1, 3, 1, 32, 32), 5)
    with pytest.raises(ValueError, match=r"support_labels: expected an integer tensor \[E, S\] = \[1, 5\]"):
        model(S, L[0], Q, 5)


def test_good_input_gives_what_it_gave_before(model):
    """The checks change no answer: rows sum to 1, forward equals the two steps, float64 input is cast."""
    with torch.no_grad():
        support = model.embed_support(S, L, 5)
        log_probs, attention = model.classify(support, Q)
        again, _ = model.classify(model.embed_support(S.double(), L, 5), Q.double())
        both, _ = model(S, L, Q, 5)
    np.testing.assert_allclose(log_probs.exp().sum(-1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(attention.sum(-1).numpy(), 1.0, atol=1e-5)
    torch.testing.assert_close(again, log_probs)
    # forward embeds support and queries in one pass: the same numbers in eval mode
    torch.testing.assert_close(both, log_probs, atol=1e-5, rtol=1e-5)
    # a class missing from one episode of several is allowed: eq. 1 gives it probability 0 there, exactly
    two = torch.cat([S, S]), torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 3, 3]])
    lp, _ = model.classify(model.embed_support(*two, 5), torch.cat([Q, Q]))
    assert torch.isneginf(lp[1, :, 4]).all() and torch.isfinite(lp[0]).all()
