"""The classifier of eq. 1: attention, class probabilities, the support-once API, shapes, and checkpoints."""
import torch

from matchnet import MatchingNetwork, load_model, save_model
from matchnet.model import Conv4, class_log_probs


def episode(e=2, n=4, k=2, q=3, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    support = torch.rand(e, n * k, 1, size, size, generator=g)
    labels = torch.arange(n).repeat_interleave(k).expand(e, -1)
    query = torch.rand(e, n * q, 1, size, size, generator=g)
    return support, labels, query


def test_conv4_output_sizes():
    assert Conv4(1, image_size=28)(torch.zeros(2, 1, 28, 28)).shape == (2, 64)
    net = Conv4(3, image_size=84)
    assert net.out_dim == 1600 and net(torch.zeros(2, 3, 84, 84)).shape == (2, 1600)


def test_attention_rows_sum_to_one_over_the_support_set():
    for fce in (False, True):
        model = MatchingNetwork(fce=fce).eval()
        support, labels, query = episode()
        log_probs, attention = model(support, labels, query, 4)
        assert attention.shape == (2, 12, 8) and log_probs.shape == (2, 12, 4)
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, 12))
        torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 12))


def test_class_probability_is_the_attention_summed_over_each_class():
    log_att = torch.log_softmax(torch.randn(1, 5, 6), -1)
    labels = torch.tensor([[2, 0, 1, 2, 0, 0]])
    probs = class_log_probs(log_att, labels, 3).exp()
    for c in range(3):
        torch.testing.assert_close(probs[0, :, c], log_att.exp()[0][:, labels[0] == c].sum(-1))


def test_without_fce_the_support_order_does_not_matter():
    model = MatchingNetwork().eval()
    support, labels, query = episode()
    perm = torch.randperm(8)
    lp1, att1 = model(support, labels, query, 4)
    lp2, att2 = model(support[:, perm], labels[:, perm], query, 4)
    torch.testing.assert_close(lp1, lp2)
    torch.testing.assert_close(att1[..., perm], att2)


def test_support_embedded_once_serves_many_query_batches():
    model = MatchingNetwork(fce=True).eval()
    support, labels, query = episode()
    with torch.no_grad():
        s = model.embed_support(support, labels, 4)
        lp_a, att_a = model.classify(s, query[:, :5])
        lp_b, att_b = model.classify(s, query[:, 5:])
        lp, att = model(support, labels, query, 4)
    torch.testing.assert_close(torch.cat([lp_a, lp_b], 1), lp)
    torch.testing.assert_close(torch.cat([att_a, att_b], 1), att)


def test_scale_sharpens_the_attention():
    support, labels, query = episode()
    flat = MatchingNetwork(scale=1.0).eval()
    sharp = MatchingNetwork(scale=30.0).eval()
    sharp.load_state_dict(flat.state_dict() | {"log_scale": sharp.log_scale})
    _, a1 = flat(support, labels, query, 4)
    _, a30 = sharp(support, labels, query, 4)
    assert a30.max(-1).values.mean() > a1.max(-1).values.mean()
    assert "log_scale" not in dict(sharp.named_parameters())  # fixed unless learn_scale
    assert "log_scale" in dict(MatchingNetwork(learn_scale=True).named_parameters())


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    for fce in (False, True):
        model = MatchingNetwork(fce=fce, scale=12.0, learn_scale=True)
        model.train()
        support, labels, query = episode()
        model(support, labels, query, 4)  # move the BatchNorm running statistics off their start
        model.eval()
        save_model(model, tmp_path / f"m{fce}")
        loaded = load_model(tmp_path / f"m{fce}")
        assert loaded.config == model.config and not loaded.training
        with torch.no_grad():
            a, b = model(support, labels, query, 4), loaded(support, labels, query, 4)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_shipped_checkpoint_classifies_its_own_support_examples():
    """A query identical to a support example should attend to it and be classified as its class."""
    model = load_model("assets/omniglot-vinyals")
    support, labels, _ = episode(e=1, n=5, k=1)
    support = (support > 0.9).float()  # sparse random 'ink'
    log_probs, attention = model(support, labels, support, 5)
    assert (log_probs.argmax(-1) == labels).all()
    assert (attention.argmax(-1) == torch.arange(5)).all()
