"""Full Context Embeddings against a per-step loop written straight from appendix A of the paper."""
import torch

from matchnet.model import MatchingNetwork


def sigmoid(x):
    return 1 / (1 + torch.exp(-x))


def lstm_step(x, h_state, c, W_x, b, W_h):
    """LSTM(x, h, c) of [23]: gates i, f, g, o from the input and the (possibly wider) recurrent state."""
    gates = W_x @ x + b + W_h @ h_state
    i, f, g, o = gates.chunk(4)
    c = sigmoid(f) * c + sigmoid(i) * torch.tanh(g)
    return sigmoid(o) * torch.tanh(c), c


def g_reference(model, g_prime):
    """A.2: g(x_i, S) = h→_i + h←_i + g'(x_i), one support set [S, d], one element at a time."""
    lstm = model.support_lstm.lstm
    S, d = g_prime.shape
    fwd_params = (lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0, lstm.weight_hh_l0)
    bwd_params = (lstm.weight_ih_l0_reverse, lstm.bias_ih_l0_reverse + lstm.bias_hh_l0_reverse,
                  lstm.weight_hh_l0_reverse)
    h, c, fwd = g_prime.new_zeros(d), g_prime.new_zeros(d), []
    for i in range(S):
        h, c = lstm_step(g_prime[i], h, c, *fwd_params)
        fwd.append(h)
    h, c, bwd = g_prime.new_zeros(d), g_prime.new_zeros(d), [None] * S
    for i in reversed(range(S)):  # the backward recursion starts from i = |S|
        h, c = lstm_step(g_prime[i], h, c, *bwd_params)
        bwd[i] = h
    return torch.stack([fwd[i] + bwd[i] + g_prime[i] for i in range(S)])


def f_reference(model, f_prime, g):
    """A.1, eqs. 3-6 for one query f'(x̂) [d] against g(S) [S, d]; returns h_K."""
    att = model.query_lstm
    d = f_prime.shape[0]
    h, c = f_prime.new_zeros(d), f_prime.new_zeros(d)
    for _ in range(att.steps):
        scores = torch.stack([h @ g[i] for i in range(g.shape[0])])  # h_{k-1}^T g(x_i)
        a = torch.exp(scores) / torch.exp(scores).sum()  # eq. 6
        r = sum(a[i] * g[i] for i in range(g.shape[0]))  # eq. 5
        h_hat, c = lstm_step(f_prime, torch.cat([h, r]), c, att.input_to_gates.weight,
                             att.input_to_gates.bias, att.state_to_gates.weight)  # eq. 3: state [h, r]
        h = h_hat + f_prime  # eq. 4
    return h


def test_fce_matches_loop_reference():
    torch.manual_seed(0)
    model = MatchingNetwork(fce=True, fce_steps=4, hidden=8, image_size=16).double().eval()
    for p in model.parameters():  # larger weights than the init, so every term matters
        p.data.normal_(0, 0.3)
    E, S, Q = 3, 7, 5
    d = model.encoder.out_dim
    g_prime = torch.randn(E, S, d, dtype=torch.double)
    f_prime = torch.randn(E, Q, d, dtype=torch.double)
    labels = torch.randint(0, 3, (E, S))
    support = model.embed_support(None, labels, 3, features=g_prime)
    log_probs, attention = model.classify(support, features=f_prime)
    for e in range(E):
        g_ref = g_reference(model, g_prime[e])
        torch.testing.assert_close(support.embeddings[e], g_ref)
        for q in range(Q):
            f_ref = f_reference(model, f_prime[e, q], g_ref)
            cos = torch.stack([f_ref @ g_ref[i] / (f_ref.norm() * g_ref[i].norm()) for i in range(S)])
            a_ref = torch.softmax(model.scale * cos, 0)
            torch.testing.assert_close(attention[e, q], a_ref)
            p_ref = torch.stack([a_ref[labels[e] == c].sum() for c in range(3)])  # eq. 1
            torch.testing.assert_close(log_probs[e, q].exp(), p_ref)


def test_fce_changes_the_embeddings_and_uses_the_support_order():
    """The FCE output is used: permuting the support set changes g and f (the LSTMs read it as a sequence)."""
    torch.manual_seed(1)
    model = MatchingNetwork(fce=True, hidden=8, image_size=16).double().eval()
    g_prime = torch.randn(1, 6, model.encoder.out_dim, dtype=torch.double)
    f_prime = torch.randn(1, 2, model.encoder.out_dim, dtype=torch.double)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]])
    s1 = model.embed_support(None, labels, 3, features=g_prime)
    assert not torch.allclose(s1.embeddings, g_prime)
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    s2 = model.embed_support(None, labels[:, perm], 3, features=g_prime[:, perm])
    assert not torch.allclose(s2.embeddings, s1.embeddings[:, perm])
    lp1, _ = model.classify(s1, features=f_prime)
    lp2, _ = model.classify(s2, features=f_prime)
    assert not torch.allclose(lp1, lp2)
