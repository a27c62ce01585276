"""What one browser tab or one API client has sent (lives in gr.State: per user, never shared), and the
limits that the page and /classify share."""
from __future__ import annotations

import random
import secrets
import string
import threading
from dataclasses import dataclass

import numpy as np

from matchnet import inference as inf
from matchnet import inputs

# One set of limits for the page and the API (docs/APP.md, "Limits"), defined beside the input rules that the
# demo shares with the library (matchnet.inputs); the library's predict API has none of these caps.
PAGE_LIMITS = inputs.PAGE_LIMITS
MAX_WAY = PAGE_LIMITS.way  # classes
MAX_SHOT = PAGE_LIMITS.shot  # examples per class
MAX_SUPPORT = PAGE_LIMITS.support  # support images per call
MAX_QUERIES = PAGE_LIMITS.queries  # queries per call (the page: the drawn one plus uploads)
MAX_FILE_MB = inf.MAX_BYTES // 2**20  # per file; gradio refuses bigger uploads before the app sees them
DEFAULT_NAMES = list(string.ascii_uppercase[:MAX_WAY])


@dataclass
class Query:
    x: np.ndarray  # model input: a drawing [H, W] (ink = 1; 28 px for the shipped models) or a photo [C, H, W]
    name: str  # how the results label it
    truth: int | None = None  # a random episode's query: its class (an index, so renaming keeps it right)
    canvas: str | None = None  # a drawn query: a digest of the pad's raw canvas (handlers.canvas_digest)


class Session:
    """Everything one browser tab has drawn or uploaded."""

    def __init__(self) -> None:
        self.n_way, self.k_shot = 5, 1
        self.names = DEFAULT_NAMES[:5]
        self.slots: dict[tuple[int, int], np.ndarray] = {}  # (class, example) -> input; kept when N, k shrink
        self.current = (0, 0)  # the slot the support pad draws (or the next upload goes) into
        self.building = True  # the visitor is filling slots (False: a complete random episode is shown)
        self.drawn: Query | None = None  # the query pad's character
        self.uploads: list[Query] = []  # uploaded queries, or a random episode's query
        self.compare = False
        self.scale: float | None = None  # the attention view's softmax scale (None: the model's own)
        self.shown = 0  # the query whose probabilities and attention are shown
        # The canvas (Query.canvas) of the drawn query that a random episode or a Clear discarded. The pad's change
        # event can reach the server seconds after the stroke (the pad uploads its image first), after the click
        # that discarded it: that late event must not bring the drawing back (handlers.on_query_drawn). Raw
        # pixels, not the model's input: two bars drawn apart look alike once cropped and shrunk, but no two
        # strokes by hand leave the same canvas.
        self.discarded: str | None = None
        self.chars: list[str] = []  # a random episode's characters, one per class
        self.cache = inf.SupportCache()
        self.rng = random.Random(secrets.randbits(64))
        # One tab's events run one at a time (demo.handlers.guarded takes it): the queue runs several events at
        # once, and a slider's change with a click sent right after must not interleave on this state.
        self.lock = threading.RLock()

    def __deepcopy__(self, memo: dict) -> "Session":  # gr.State deep-copies its default for every session
        return Session()

    def order(self) -> list[tuple[int, int]]:
        return [(c, j) for c in range(self.n_way) for j in range(self.k_shot)]

    def filled(self) -> list[tuple[int, int]]:
        return [slot for slot in self.order() if slot in self.slots]

    def complete(self) -> bool:
        return len(self.filled()) == len(self.order())

    def support(self) -> tuple[np.ndarray, list[str], list[str]]:
        """(images [S, ...], label per image, class names), or an InputError saying what is missing."""
        filled = self.filled()
        if not filled:
            raise inf.InputError("no support set yet: draw or upload at least one example of each class")
        labels = [self.names[c] for c, _ in filled]
        classes = inf.check_support(labels, self.names[:self.n_way])
        return np.stack([self.slots[s] for s in filled]), labels, classes

    def queries(self) -> list[Query]:
        return ([self.drawn] if self.drawn is not None else []) + self.uploads

    @property
    def truth(self) -> list[int]:
        """The classes of the queries that a random episode drew (a drawn or uploaded query has none)."""
        return [q.truth for q in self.queries() if q.truth is not None]

    def truth_names(self) -> list[str | None]:
        """Per query, in queries() order: its true class's current name, or None where it has none."""
        return [None if q.truth is None else self.names[q.truth] for q in self.queries()]

    def discard_drawn(self) -> None:
        """A random episode or a Clear empties the query pad: forget its drawing, and remember it as stale."""
        if self.drawn is not None:
            self.discarded = self.drawn.canvas
        self.drawn = None

    def source(self) -> str:
        """Where a random episode's characters come from, under the classes' current names."""
        if not self.chars:
            return ""
        return "Omniglot test characters: " + ", ".join(
            f"{name} = {c.replace('_', ' ').replace('/character', ' #')}" for name, c in zip(self.names, self.chars))

    def forget_episode(self) -> None:
        """The visitor changed the support set: it is no longer the random episode."""
        self.chars = []
        for q in self.uploads:
            q.truth = None


class ApiSession:
    """Per-client state of /classify: the last support set, decoded, and its embeddings."""

    def __init__(self) -> None:
        self.key = ""
        self.images: np.ndarray | None = None
        self.cache = inf.SupportCache()

    def __deepcopy__(self, memo: dict) -> "ApiSession":
        return ApiSession()


def parse_names(text: str, n_way: int) -> list[str]:
    names = [n.strip() for n in (text or "").split(",")] if (text or "").strip() else []
    if len(names) != n_way:
        raise inf.InputError(f"{n_way} classes need {n_way} names separated by commas; got {len(names)}")
    inf.check_support(names, names)  # empty or duplicate names
    return names


def default_names(names: list[str], n_way: int) -> list[str]:
    """Keep the names given, fill up with unused letters."""
    kept = names[:n_way]
    spare = [d for d in DEFAULT_NAMES + [f"C{i}" for i in range(MAX_WAY)] if d not in kept]
    return kept + spare[:n_way - len(kept)]
