"""Matching Networks (Vinyals et al., 2016): Conv-4 embedding, cosine attention, Full Context Embeddings.

Shapes: every public method takes a batch of E episodes. An episode has S support examples with labels in
[0, N) and Q queries. Images are float tensors [E, S|Q, C, H, W] scaled to [0, 1] (Omniglot: ink = 1).
MatchingClassifier is the model over any encoder (sentences: matchnet.language); MatchingNetwork is the
image model, MatchingClassifier over Conv-4, and the class that checkpoints load. This module imports nothing of
matchnet: checkpoints (checkpoint.py) and the Hugging Face Hub (hub.py) sit above it and import it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Bumped whenever a change would make old checkpoints load into a different function.
FORMAT_VERSION = 1


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """The paper's embedding: 4 x [3x3 conv, BatchNorm, ReLU, 2x2 max-pool], flattened.

    1x28x28 -> 64x1x1 (64-d); 3x84x84 -> 64x5x5 (1600-d).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, layers: int = 4, image_size: int = 28):
        super().__init__()
        blocks = [conv_block(in_channels if i == 0 else hidden, hidden) for i in range(layers)]
        self.net = nn.Sequential(*blocks)
        self.image_size = image_size
        side = image_size
        for _ in range(layers):
            side //= 2  # MaxPool2d(2) floors
        self.out_dim = hidden * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class AttentionLSTM(nn.Module):
    """f(x̂, S) = attLSTM(f'(x̂), g(S), K), appendix A.1, eqs. 3-6.

    The recurrent state fed to the LSTM is the concatenation [h_{k-1}, r_{k-1}] (2d wide) while the cell and
    its output ĥ_k are d wide, so this is an LSTM cell with a 2d -> 4d recurrent matrix, written out here
    because torch's LSTMCell ties the recurrent width to the output width. h_0 = c_0 = 0 (the paper does
    not say; zeros are the standard LSTM start), so r_0 is the plain mean of g(S).
    """

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.dim, self.steps = dim, steps
        self.input_to_gates = nn.Linear(dim, 4 * dim)
        self.state_to_gates = nn.Linear(2 * dim, 4 * dim, bias=False)

    @staticmethod
    def read(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Eqs. 5-6: r = sum_i softmax_i(h^T g_i) g_i. h [E, Q, d], g [E, S, d] -> [E, Q, d]."""
        return torch.softmax(h @ g.transpose(1, 2), dim=-1) @ g

    def forward(self, f_prime: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        h = torch.zeros_like(f_prime)
        c = torch.zeros_like(f_prime)
        x_gates = self.input_to_gates(f_prime)  # the LSTM input is f'(x̂) at every step
        for _ in range(self.steps):
            r = self.read(h, g)  # r_{k-1} from h_{k-1}
            gates = x_gates + self.state_to_gates(torch.cat([h, r], dim=-1))
            i, f, cand, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cand)
            h = torch.sigmoid(o) * torch.tanh(c) + f_prime  # eq. 3 gives ĥ_k; eq. 4 adds the skip
        return h


class SupportLSTM(nn.Module):
    """g(x_i, S) = h→_i + h←_i + g'(x_i), appendix A.2: a bidirectional LSTM over the support sequence."""

    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)

    def forward(self, g_prime: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(g_prime)  # [E, S, 2d]: forward states, then backward states
        forward, backward = out.chunk(2, dim=-1)
        return forward + backward + g_prime


@dataclass
class SupportSet:
    """A support set embedded once, ready to classify any number of queries (see MatchingNetwork.embed_support)."""

    embeddings: torch.Tensor  # g(x_i, S), [E, S, d]
    normalized: torch.Tensor  # the same, unit length: the cosine's right-hand side
    labels: torch.Tensor  # [E, S] in [0, n_way)
    n_way: int


class MatchingClassifier(nn.Module):
    """ŷ = Σ_i a(x̂, x_i) y_i, a = softmax over scaled cosine similarity (eq. 1, section 2.1.1), any encoder.

    encoder: the shared embedding f' = g', a module mapping a batch of inputs [B, ...] to [B, d], with an
    `out_dim` attribute (d). MatchingNetwork below plugs in Conv-4 for images; matchnet.language plugs in a
    sentence encoder. Everything after the encoder (FCE, the attention, eq. 1) is this class, for every task.

    temperature: the cosine is multiplied by `scale` before the softmax. The paper writes no scale (scale 1),
    which leaves the softmax nearly flat (cosines lie in [-1, 1]); learn_scale makes it a trained parameter
    starting at `scale`. The default, a fixed 30, won the ablation on validation (docs/RESULTS.md).
    """

    def __init__(self, encoder: nn.Module, fce: bool = False, fce_steps: int = 5, scale: float = 30.0,
                 learn_scale: bool = False):
        super().__init__()
        self.encoder = encoder
        dim = encoder.out_dim
        self.fce = fce
        self.support_lstm = SupportLSTM(dim) if fce else None
        self.query_lstm = AttentionLSTM(dim, fce_steps) if fce else None
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """f' = g' (the shared encoder): [E, M, ...] -> [E, M, d]."""
        e, m = inputs.shape[:2]
        return self.encoder(inputs.flatten(0, 1)).view(e, m, -1).float()

    def embed_support(self, images: torch.Tensor | None, labels: torch.Tensor, n_way: int | None = None,
                      features: torch.Tensor | None = None, *, check: bool = True) -> SupportSet:
        """Embed a support set once. images [E, S, C, H, W] (or precomputed g' `features` [E, S, d]), labels
        [E, S] integers in 0..n_way-1 with every class in every episode (n_way default: labels.max() + 1).

        Images are float tensors in [0, 1] (any float dtype, cast to the model's); NumPy arrays and integer
        images (uint8) are refused, not guessed at: torch.from_numpy(x).float() / 255, or matchnet.predict for
        image files and arrays. Bad arguments raise one ValueError naming the argument and the expected shape,
        including non-finite values and labels that leave a class without an example (check_support_args;
        one host sync). check=False skips the checks (forward does its own shape checks).
        """
        if check:
            images, n_way = check_support_args(self, images, labels, n_way, features)
        g = self.encode(images) if features is None else features
        if self.fce:
            g = self.support_lstm(g)
        n_way = int(labels.max()) + 1 if n_way is None else n_way
        return SupportSet(g, F.normalize(g, dim=-1), labels, n_way)

    def classify(self, support: SupportSet, images: torch.Tensor | None = None,
                 features: torch.Tensor | None = None, *, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify queries [E, Q, C, H, W] (or g' `features` [E, Q, d]) against an embedded support set.

        Returns (log-probabilities [E, Q, N], attention a(x̂, x_i) [E, Q, S]; rows sum to 1). The queries are
        checked as embed_support checks its images (check_query_args), against the support's E episodes.
        """
        if check:
            images = check_query_args(self, support, images, features)
        f = self.encode(images) if features is None else features
        if self.fce:
            f = self.query_lstm(f, support.embeddings)
        cosine = F.normalize(f, dim=-1) @ support.normalized.transpose(1, 2)  # [E, Q, S]
        log_attention = torch.log_softmax(self.scale * cosine, dim=-1)
        log_probs = class_log_probs(log_attention, support.labels, support.n_way)
        return log_probs, log_attention.exp()

    def forward(self, support_images: torch.Tensor, support_labels: torch.Tensor, query_images: torch.Tensor,
                n_way: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Both steps at once for training: (log-probabilities [E, Q, N], attention [E, Q, S]).

        Shapes, dtypes and devices are checked (free: no host sync); label values and finiteness are not, as
        they would cost a sync per training step: embed_support and classify check those.
        """
        support_images = check_tensor(self, "support_images", support_images, "S")
        query_images = check_tensor(self, "query_images", query_images, "Q", episodes=support_images.shape[0])
        check_label_shape(support_labels, support_images, "support_labels")
        e, s = support_images.shape[:2]
        # One encoder pass over support and queries together: BatchNorm sees the whole episode batch.
        features = self.encode(torch.cat([support_images, query_images], dim=1))
        support = self.embed_support(None, support_labels, n_way, features=features[:, :s], check=False)
        return self.classify(support, features=features[:, s:], check=False)


class MatchingNetwork(MatchingClassifier):
    """The image model: MatchingClassifier over the paper's Conv-4. Images are [E, S|Q, C, H, W] in [0, 1].

    The constructor's arguments are exactly the keys of a checkpoint's config.json (checkpoint.model_kwargs).
    A plain nn.Module: the Hugging Face Hub methods (save_pretrained / from_pretrained / push_to_hub) are
    matchnet.hub.HubMatchingNetwork's, the class matchnet.load returns.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: int = 64,
        layers: int = 4,
        fce: bool = False,
        fce_steps: int = 5,
        scale: float = 30.0,
        learn_scale: bool = False,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ):
        super().__init__(Conv4(in_channels, hidden, layers, image_size), fce, fce_steps, scale, learn_scale)
        self.config = dict(
            in_channels=in_channels, image_size=image_size, hidden=hidden, layers=layers,
            fce=fce, fce_steps=fce_steps, scale=scale, learn_scale=learn_scale,
        )
        # Per-channel input normalisation (natural images: the training classes' statistics). It lives in
        # config.json, not in the weights, so checkpoints without it (Omniglot) load and run exactly as before.
        if mean is not None or std is not None:
            if mean is None or std is None or len(mean) != in_channels or len(std) != in_channels:
                raise ValueError(f"mean and std need one value per input channel ({in_channels}); got {mean}, {std}")
            if min(std) <= 0:
                raise ValueError(f"std must be positive, got {std}")
            self.config.update(mean=[float(v) for v in mean], std=[float(v) for v in std])
        as_buffer = (lambda v: None if v is None else torch.tensor(v, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("input_mean", as_buffer(mean), persistent=False)
        self.register_buffer("input_std", as_buffer(std), persistent=False)
        self.channels_last = False

    def use_channels_last(self) -> "MatchingNetwork":
        """NHWC convolutions (faster on tensor-core GPUs); inputs are converted in encode."""
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel for [..., C, H, W] in [0, 1]; the images themselves without mean/std."""
        if self.input_mean is None:
            return images
        return (images - self.input_mean) / self.input_std

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """f' = g' (shared Conv-4): [E, M, C, H, W] -> [E, M, d]."""
        e, m = images.shape[:2]
        x = self.normalize(images.flatten(0, 1))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.encoder(x).view(e, m, -1).float()


def class_log_probs(log_attention: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """log P(y = c | x̂, S) = log Σ_{i: y_i = c} a(x̂, x_i), computed in log space for stability."""
    # [E, N, S] membership mask; built by comparison because F.one_hot syncs with the host to check labels
    one_hot = labels.unsqueeze(1) == torch.arange(n_way, device=labels.device).view(1, n_way, 1)
    masked = log_attention.unsqueeze(2).masked_fill(~one_hot.unsqueeze(1), float("-inf"))  # [E, Q, N, S]
    return torch.logsumexp(masked, dim=-1)


# -- argument checks (embed_support, classify, forward): one ValueError naming the argument and the expected
# shape, instead of a torch error several layers down or, for out-of-range labels and NaN images, a silently
# wrong answer.

def _shape(x: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in x.shape) + "]"


def _image_shape(model: MatchingClassifier) -> tuple[int, int, int] | None:
    """(C, H, W) a Conv-4 model takes; None for other encoders (sentences: token ids of any length)."""
    encoder = model.encoder
    if not isinstance(encoder, Conv4):
        return None
    return encoder.net[0][0].in_channels, encoder.image_size, encoder.image_size


def check_tensor(model: MatchingClassifier, arg: str, x: object, count: str, episodes: int | None = None,
                 features: bool = False) -> torch.Tensor:
    """x as the model's encoder takes it, [E, count, C, H, W] (features: [E, count, d]); float images are cast
    to the model's dtype. No host sync: shapes, dtypes and devices only."""
    image = None if features else _image_shape(model)
    want = (f"[E, {count}, {model.encoder.out_dim}]" if features else
            f"[E, {count}, {', '.join(map(str, image))}]" if image else f"[E, {count}, ...]")
    floats = features or image is not None
    if not isinstance(x, torch.Tensor):
        kind = f"{type(x).__module__}.{type(x).__name__}".removeprefix("builtins.")
        hint = (" (torch.from_numpy(x).float(); matchnet.predict takes image files and arrays)"
                if kind.startswith("numpy") else "")
        raise ValueError(f"{arg}: expected a torch.Tensor {want}{' of floats' if floats else ''}; got {kind}{hint}")
    if floats and not x.is_floating_point():
        hint = f" ({arg}.float() / 255 for 8-bit images)" if x.dtype == torch.uint8 else f" ({arg}.float())"
        raise ValueError(f"{arg}: expected a float tensor {want}{' in [0, 1]' if image else ''}; got {x.dtype}{hint}")
    dims = 3 if features else 5 if image else None
    if (dims is not None and x.dim() != dims) or x.dim() < 2:
        inner = (model.encoder.out_dim,) if features else image
        missing = inner is not None and x.dim() == len(inner) + 1 and tuple(x.shape[1:]) == tuple(inner)
        note = f": the episode dimension is missing ({arg}.unsqueeze(0) for one episode)" if missing else ""
        raise ValueError(f"{arg}: expected {want}; got {_shape(x)}{note}")
    if image is not None and tuple(x.shape[2:]) != image:
        raise ValueError(f"{arg}: expected {want}; got {_shape(x)}: this model takes {'x'.join(map(str, image))} "
                         "images (resize them first; matchnet.predict does it as the model was trained)")
    if features and x.shape[2] != model.encoder.out_dim:
        raise ValueError(f"{arg}: expected {want}; got {_shape(x)}: this model's embeddings are "
                         f"{model.encoder.out_dim}-d")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{arg}: expected {want}; got {_shape(x)}, an empty tensor")
    if episodes is not None and x.shape[0] != episodes:
        raise ValueError(f"{arg}: expected {want} with E = {episodes}, the support set's episodes; got {_shape(x)}")
    param = next(model.parameters())
    if x.device != param.device:
        raise ValueError(f"{arg}: on {x.device} but the model is on {param.device} ({arg}.to('{param.device}'))")
    if image is not None and x.dtype != param.dtype:
        x = x.to(param.dtype)
    return x


def check_label_shape(labels: object, x: torch.Tensor, arg: str = "labels") -> None:
    e, s = x.shape[:2]
    want = f"an integer tensor [E, S] = [{e}, {s}], one label per support example"
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{arg}: expected {want}; got {type(labels).__module__}.{type(labels).__name__}"
                         .replace("builtins.", ""))
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{arg}: expected {want}; got {labels.dtype} ({arg}.long())")
    if tuple(labels.shape) != (e, s):
        missing = labels.dim() == 1 and labels.shape[0] == s
        note = f": the episode dimension is missing ({arg}.unsqueeze(0) for one episode)" if missing else ""
        raise ValueError(f"{arg}: expected {want}; got {_shape(labels)}{note}")
    if labels.device != x.device:
        raise ValueError(f"{arg}: on {labels.device} but the support examples are on {x.device}")


def _check_finite(arg: str, x: torch.Tensor, finite: bool | None = None) -> None:
    if not x.is_floating_point():
        return
    if finite is None:
        finite = bool(torch.isfinite(x).all())
    if not finite:  # the error path alone pays for finding which example it is
        e, i = (~torch.isfinite(x).flatten(2).all(2)).nonzero()[0].tolist()
        raise ValueError(f"{arg}[{e}, {i}] holds NaN or infinite values: one such example makes every output NaN")


def check_support_args(model: MatchingClassifier, images: object, labels: object, n_way: object,
                       features: object) -> tuple[torch.Tensor | None, int]:
    """embed_support's arguments: (images, cast as the model takes them, and n_way). One host sync."""
    arg = "images" if features is None else "features"
    x = check_tensor(model, arg, images if features is None else features, "S", features=features is not None)
    if features is None:
        images = x
    check_label_shape(labels, x)
    if n_way is not None:
        if isinstance(n_way, bool) or not hasattr(n_way, "__index__") or int(n_way) < 1:
            raise ValueError(f"n_way: expected a positive int (the number of classes); got {n_way!r}")
        n_way = int(n_way)
    # Every class needs an example somewhere: a class with none is a phantom (eq. 1 gives it probability 0 in
    # every episode). A class missing from one episode of several is allowed: eq. 1 is still exact there.
    ordered = labels.flatten().sort().values
    distinct = (ordered[1:] != ordered[:-1]).sum() + 1
    finite = torch.isfinite(x).all() if x.is_floating_point() else torch.ones((), dtype=torch.bool, device=x.device)
    lo, hi, count, ok = torch.stack([labels.min().long(), labels.max().long(), distinct.long(),
                                     finite.long()]).tolist()
    n = hi + 1 if n_way is None else n_way
    if lo < 0 or hi >= n:
        raise ValueError(f"labels: expected class indices 0..{n - 1} (n_way = {n}); got values from {lo} to {hi}")
    if count < n:
        raise ValueError(f"labels: every class 0..{n - 1} needs a support example (n_way = {n}); the labels hold "
                         f"only {count} distinct values"
                         + (": a larger n_way than the labels gives classes that cannot be predicted" if n_way else ""))
    _check_finite(arg, x, bool(ok))
    return images, n


def check_query_args(model: MatchingClassifier, support: object, images: object,
                     features: object) -> torch.Tensor | None:
    """classify's arguments against the support set; images cast as the model takes them. One host sync."""
    if not isinstance(support, SupportSet):
        raise ValueError(f"support: expected the SupportSet that embed_support returns; got {type(support).__name__}")
    arg = "images" if features is None else "features"
    x = check_tensor(model, arg, images if features is None else features, "Q", episodes=support.embeddings.shape[0],
                     features=features is not None)
    _check_finite(arg, x)
    return x if features is None else images
