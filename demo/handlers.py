"""The page's event handlers and /classify. Each handler takes what the page sends and the visitor's
Session, and returns {component: new value}; page.py creates the components and wires the events.
Pads are inputs only (page.py says why); bad input changes nothing but the status line.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
import torch

from matchnet import inference as inf
from matchnet import inputs

from . import figures as fig
from .models import ROOT, Served, load
from .state import (DEFAULT_NAMES, MAX_QUERIES, MAX_SHOT, MAX_WAY, PAGE_LIMITS, ApiSession, Query, Session,
                    default_names, parse_names)

EXAMPLES = ROOT / "assets" / "examples" / "omniglot"
EMPTY_SLOT = 232  # grey level of an empty support slot's thumbnail
log = logging.getLogger("matchnet.app")


def guarded(fn: Callable) -> Callable:
    """For UI handlers: bad input becomes a warning and a status line and changes nothing else; no
    traceback ever reaches the page (unexpected errors are logged here and reported in one line). One
    session's handlers run one at a time, under its lock."""
    @functools.wraps(fn)
    def wrapper(self: "Handlers", *args, **kwargs):
        session = next((a for a in (*args, *kwargs.values()) if isinstance(a, Session)), None)
        try:
            with session.lock if session is not None else contextlib.nullcontext():
                return fn(self, *args, **kwargs)
        except inf.InputError as e:
            message = str(e)
        except Exception as e:  # noqa: BLE001 - the page gets one line, the log the traceback
            log.exception("handler %s failed", fn.__name__)
            message = f"internal error ({type(e).__name__}); the server log has the details"
        gr.Warning(fig.esc(message))  # toasts render HTML
        return {self.status: f"**Problem:** {fig.md(message)}"}
    return wrapper


def read_pad(value: dict | np.ndarray | None, size: int = inf.IMAGE_SIZE) -> np.ndarray | None:
    """The character drawn in a Sketchpad as a model input (size px square, the model's side), or None when the
    canvas is empty or blank."""
    image = value.get("composite") if isinstance(value, dict) else value
    if image is None:
        return None
    try:
        return inf.preprocess(image, size=size)
    except inf.InputError:
        return None


def canvas_digest(value: dict | np.ndarray | None) -> str | None:
    """A digest of a Sketchpad's raw canvas (what tells one stroke from another), None for no canvas."""
    image = value.get("composite") if isinstance(value, dict) else value
    if image is None:
        return None
    a = np.ascontiguousarray(image)
    return hashlib.sha1(str(a.shape).encode() + a.tobytes()).hexdigest()


def read_files(served: Served, files: list[str] | None, what: str) -> list[Query]:
    """All uploaded files or none: one bad file rejects the upload, naming the file (matchnet.inputs.read_all,
    the rule the predict API follows too)."""
    files = list(files or [])
    names = [Path(path).name for path in files]
    return [Query(x, name) for x, name in zip(inputs.read_all(files, served.prepare, what, names), names)]


# ------------------------------------------------------------------------------------------------ API

def api_labels(labels: Any) -> list[str]:
    if isinstance(labels, str):
        try:
            labels = json.loads(labels)
        except json.JSONDecodeError:
            labels = [x.strip() for x in labels.split(",")]
    if isinstance(labels, dict) and "labels" in labels:
        labels = labels["labels"]
    if not isinstance(labels, list) or not all(isinstance(x, (str, int, float)) for x in labels):
        raise inf.InputError("labels must be a list of class names, one per support image")
    return [str(x).strip() for x in labels]


def classify_files(served: Served | dict, support: list[str], labels: Any, queries: list[str], fce: bool,
                   state: ApiSession) -> dict:
    """The work of /classify; an InputError says what is wrong with the request."""
    served = served if isinstance(served, Served) else Served(served)
    labels = api_labels(labels) if support else []
    classes = inputs.check_request(len(support), labels, len(queries), PAGE_LIMITS)  # the rules predict follows
    key = "fce" if fce else "base"
    if key not in served.models:
        raise inf.InputError("this server has no FCE model (it serves one checkpoint): send fce=False")
    digest = hashlib.sha1("\x00".join(labels).encode())
    for path in support:
        digest.update(Path(path).read_bytes() if Path(path).is_file() else path.encode())
        digest.update(b"\x00")
    cached = digest.hexdigest() == state.key and state.images is not None
    # A new support set is decoded, but only kept once the queries are known to be good too.
    images = state.images if cached else np.stack([q.x for q in read_files(served, support, "support image")])
    xq = np.stack([q.x for q in read_files(served, queries, "query image")])
    entry = state.cache.get(key, served.models[key], images, labels, classes)  # embedding cached on the pixels
    state.key, state.images = digest.hexdigest(), images
    return {**entry.classify(xq).to_json(), "model": served.ids[key], "support_cached": cached}


# --------------------------------------------------------------------------------------------- the page

class Handlers:
    """The page's handlers. Models are shared read-only; everything a visitor does is in their Session.
    page.build(handlers) sets the component attributes (self.status, self.gallery, ...) that handlers update;
    page.App is this class with its page (App.build), so this module never imports page.py."""

    def __init__(self, models: dict[str, Any] | Served | None = None, examples: Path = EXAMPLES,
                 seed: int | None = None, checkpoint: str | None = None, resize: str | None = None):
        # One intra-op thread: batches are tiny and requests already run in parallel; on a busy 2-core
        # machine two threads made single queries hundreds of times slower (bench/app_latency.py).
        torch.set_num_threads(1)
        if isinstance(models, Served):
            self.served = models
        else:
            self.served = Served(models) if models else load(checkpoint, resize)
        self.models = self.served.models
        self.drawing = self.served.drawing
        self.side = self.served.shape[1]  # drawings are preprocessed to the model's own side
        self.examples = inf.list_examples(examples) if self.drawing else {}
        self.seed = seed  # fixes every page's random episodes (tests, screenshots); None: each page its own

    # views ------------------------------------------------------------------------------------------

    def thumb(self, x: np.ndarray | None) -> np.ndarray:
        if x is None:
            c, h, w = self.served.shape
            return np.full((84, 84) if self.drawing else (h, w, 3), EMPTY_SLOT, np.uint8)
        return inf.to_display(x)

    def support_view(self, s: Session) -> dict:
        items = [(self.thumb(s.slots.get((c, j))), f"{'▶ ' if (c, j) == s.current else ''}{s.names[c]}·{j + 1}")
                 for c, j in s.order()]
        return {self.gallery: gr.update(value=items, columns=min(10, max(5, 2 * s.k_shot))),
                self.slot_title: fig.slot_title(s, self.drawing), self.current: s.order().index(s.current),
                self.names: ", ".join(s.names[:s.n_way])}

    def result_view(self, s: Session, explicit: bool) -> dict:
        """Classify every query against the cached support embedding(s).

        explicit (the Classify button): problems are errors. Live updates while drawing only put them in the
        status line: a half-drawn support set is normal then.
        """
        queries = s.queries()
        try:
            images, labels, classes = s.support()
            if not queries:
                raise inf.InputError(self.no_query_message())
        except inf.InputError as e:
            if explicit:
                raise
            return {self.status: f"Waiting: {fig.md(e)}"}
        keys = ["base", "fce"] if s.compare and "fce" in self.models else ["base"]
        xq = np.stack([q.x for q in queries])
        results = {k: s.cache.get(k, self.models[k], images, labels, classes).classify(xq) for k in keys}
        names = [q.name for q in queries]
        s.shown = min(s.shown, len(queries) - 1)
        filled = s.filled()
        captions = [f"{s.names[c]}·{j + 1}" for c, j in filled]
        model_names = self.served.names
        heatmap = fig.heatmap_figure(results, captions, names, s, s.scale, model_names)
        return {
            self.status: fig.status_line(s, results["base"], names),
            self.prediction: fig.prediction_md(results, names, model_names),
            self.probs: fig.probs_figure(results, names[s.shown], s.shown, model_names),
            self.attention: fig.attention_html(results, images, captions, s.shown, names[s.shown], s.scale,
                                               model_names),
            self.heatmap: gr.update(value=heatmap, visible=heatmap is not None),
            self.embedding: fig.embedding_figure(results["base"], captions, [c for c, _ in filled],
                                                 s.names[:s.n_way], names, model_names["base"]),
            self.shown: gr.update(choices=[(n, i) for i, n in enumerate(names)], value=s.shown,
                                  visible=len(names) > 1),
            self.query_gallery: gr.update(value=[(self.thumb(q.x), f"{q.name}: {p}")
                                                 for q, p in zip(queries, results["base"].predicted)],
                                          visible=len(queries) > 1 or bool(s.uploads)),
            self.results_side: gr.update(visible=True),
            self.results_below: gr.update(visible=True),
        }

    def cleared_results(self) -> dict:
        return {self.prediction: "", self.probs: None, self.attention: "", self.heatmap: None,
                self.embedding: None, self.shown: gr.update(choices=[], value=None, visible=False),
                self.query_gallery: gr.update(value=[], visible=False),
                self.results_side: gr.update(visible=False), self.results_below: gr.update(visible=False)}

    def no_query_message(self) -> str:
        if self.drawing:
            return "the query canvas is blank: draw a character (or upload query images)"
        return "no query yet: upload one or more query images"

    def welcome(self, s: Session) -> str:
        if self.drawing:
            return "Cleared: draw one example per class on the left, then a query on the right."
        return (f"Upload {s.k_shot} image{'s' * (s.k_shot > 1)} per class into the slots (*Upload into slots*), "
                "then one or more query images.")

    # handlers (pads are inputs only: see page.py) -----------------------------------------------------

    @guarded
    def on_support_drawn(self, value: dict | None, current: float | None, s: Session) -> dict:
        x = read_pad(value, self.side)
        if x is None:  # a cleared pad (Next, a new slot, the pad's own bin) leaves the slot as it is
            return {self.status: gr.skip()}  # nothing to update
        order = s.order()
        index = int(current) if current is not None and 0 <= int(current) < len(order) else order.index(s.current)
        s.slots[order[index]] = x  # the slot the pad showed when the stroke ended, even if Next came since
        s.building = True
        s.forget_episode()
        return {**self.support_view(s), **self.result_view(s, explicit=False)}

    @guarded
    def on_query_drawn(self, value: dict | None, s: Session) -> dict:
        x = read_pad(value, self.side)
        if x is None and s.drawn is None:  # a blank pad cleared again: keep the status line as it is
            return {self.status: gr.skip()}
        canvas = canvas_digest(value)
        if x is not None and canvas == s.discarded:
            return {self.status: gr.skip()}  # the late change event of a drawing a random episode or Clear removed
        s.drawn = None if x is None else Query(x, "drawn query", canvas=canvas)
        if x is None and not s.uploads:  # the query pad was cleared: so are its results
            return {self.status: "Query cleared: draw a character.", **self.cleared_results()}
        return self.result_view(s, explicit=False)

    @guarded
    def on_classify(self, value: dict | None, s: Session) -> dict:
        s.support()  # first what is missing in the support set: after Clear, that is the useful message
        x = read_pad(value, self.side)  # the pad as it is now, even if its change event is still queued
        if x is None and not s.uploads:
            raise inf.InputError(self.no_query_message())
        if x is not None:  # the canvas too, even if the input is unchanged: a late change event will carry it
            s.drawn = Query(x, "drawn query", canvas=canvas_digest(value))
        return self.result_view(s, explicit=True)

    def select(self, s: Session, index: int) -> dict:
        s.current = s.order()[index % len(s.order())]
        s.building = True
        return self.support_view(s)

    @guarded
    def on_select_slot(self, s: Session, evt: gr.SelectData) -> dict:
        return self.select(s, int(evt.index or 0))

    @guarded
    def on_next(self, s: Session) -> dict:
        return self.select(s, s.order().index(s.current) + 1)

    @guarded
    def on_prev(self, s: Session) -> dict:
        return self.select(s, s.order().index(s.current) - 1)

    @guarded
    def on_upload_support(self, files: list[str] | None, s: Session) -> dict:
        images = read_files(self.served, files, "support image")
        order = s.order()
        if not images:
            raise inf.InputError("no file received")
        if len(images) > len(order):
            raise inf.InputError(f"{len(images)} images for {len(order)} support slots: raise N or k first")
        start = order.index(s.current)
        for i, q in enumerate(images):  # fill from the selected slot on
            s.slots[order[(start + i) % len(order)]] = q.x
        s.current = order[(start + len(images)) % len(order)]
        s.building = False  # the slot pointer moved by itself: say "complete" once every slot is filled
        s.forget_episode()
        return {**self.support_view(s), **self.result_view(s, explicit=False)}

    @guarded
    def on_upload_queries(self, files: list[str] | None, s: Session) -> dict:
        queries = read_files(self.served, files, "query image")
        if not queries:
            raise inf.InputError("no file received")
        room = MAX_QUERIES - (1 if self.drawing else 0) - len(s.uploads)  # a drawn query may come too
        if len(queries) > room:
            raise inf.InputError(f"at most {MAX_QUERIES} queries at once"
                                 + (" (the drawn one plus uploads)" if self.drawing else "")
                                 + f"; room for {max(room, 0)} more: *Clear queries* first")
        s.uploads += queries
        return self.result_view(s, explicit=True)

    @guarded
    def on_clear_queries(self, s: Session) -> dict:
        s.discard_drawn()
        s.uploads, s.shown = [], 0
        return {self.status: "Queries cleared.", **self.cleared_results()}

    @guarded
    def on_shape(self, n_way: float, k_shot: float, s: Session) -> dict:
        n, k = int(n_way), int(k_shot)
        if not (2 <= n <= MAX_WAY and 1 <= k <= MAX_SHOT):
            raise inf.InputError(f"N must be 2..{MAX_WAY} and k 1..{MAX_SHOT}")
        if (n, k) == (s.n_way, s.k_shot):  # e.g. the echo of a random episode setting the sliders
            return {self.status: gr.skip()}  # nothing to update
        s.n_way, s.k_shot = n, k
        s.forget_episode()
        s.names = default_names(s.names, n)
        s.current = (min(s.current[0], n - 1), min(s.current[1], k - 1))
        return {**self.support_view(s), **self.result_view(s, explicit=False)}

    @guarded
    def on_names(self, text: str, s: Session) -> dict:
        names = parse_names(text, s.n_way)
        if names == s.names[:s.n_way]:
            return {self.status: gr.skip()}  # nothing to update
        s.names = names + s.names[s.n_way:]  # a random episode's truth is kept by class index
        return {**self.support_view(s), self.status: "Class names updated.", **self.result_view(s, False)}

    @guarded
    def on_compare(self, compare: bool, s: Session) -> dict:
        s.compare = bool(compare)
        return self.result_view(s, explicit=False)

    @guarded
    def on_show(self, index: int | None, s: Session) -> dict:
        s.shown = int(index or 0)
        return self.result_view(s, explicit=False)

    @guarded
    def on_scale(self, scale: float | None, s: Session) -> dict:
        """The attention view's softmax scale: what the attention would be at another temperature."""
        s.scale = None if scale is None else float(scale)
        return self.result_view(s, explicit=False)

    @guarded
    def on_random(self, n_way: float, k_shot: float, s: Session, with_query: bool = True) -> dict:
        if not self.examples:
            raise inf.InputError("no example images for this model: upload a support set")
        n, k = int(n_way), int(k_shot)
        chars, support, queries = inf.random_episode(self.examples, n, k, 1 if with_query else 0, s.rng)
        s.n_way, s.k_shot, s.current, s.shown, s.building = n, k, (0, 0), 0, False
        s.names = DEFAULT_NAMES[:n]  # short names keep the captions readable; the status line names the source
        s.chars = chars
        s.slots = {(c, j): self.served.prepare(p) for c, paths in enumerate(support) for j, p in enumerate(paths)}
        s.discard_drawn()  # the page's js clears the pad with this click
        s.uploads = [Query(self.served.prepare(p), "random", truth=c) for c, p in queries]
        view = {**self.support_view(s), self.n_way: n, self.k_shot: k}
        if not queries:
            return {**view, **self.cleared_results(),
                    self.status: f"Copy one of these characters into the query pad. {fig.md(s.source())}."}
        return {**view, **self.result_view(s, explicit=True)}

    @guarded
    def on_clear(self, s: Session) -> dict:
        s.discard_drawn()
        kept = {k: s.__dict__[k] for k in ("rng", "discarded", "lock")}  # the lock is held: this very event's
        s.__dict__.update({**Session().__dict__, **kept})
        return {**self.support_view(s), **self.cleared_results(), self.n_way: s.n_way, self.k_shot: s.k_shot,
                self.compare: False, self.scale: self.model_scale(), self.status: self.welcome(s)}

    def model_scale(self) -> float:
        return round(float(self.served.base.scale), 1)

    def on_load(self, s: Session) -> dict:
        if self.seed is not None:
            s.rng = random.Random(self.seed)
        if self.examples:
            return self.on_random(5, 1, s, with_query=False)
        return {**self.support_view(s), **self.cleared_results(), self.status: self.welcome(s)}

    def api_classify(self, support: list[str] | None, labels: Any, queries: list[str] | None,
                     fce: bool | None, state: ApiSession) -> dict:
        """Classify query images against a labelled support set.

        support: support images (files); labels: one class name per support image, in the same order (a list,
        a JSON list or a comma-separated string); queries: one or more query images; fce: use the checkpoint
        with Full Context Embeddings. Limits: at most 20 classes, 5 images per class, 32 queries, 32 MB per
        file. Returns JSON: labels (the predicted class of each query), classes (in order of first
        appearance in labels), probabilities [query][class], support_labels, attention [query][support
        image] (rows sum to 1), similarity [query][support image] (cosine, before the softmax), model,
        support_cached. Bad input raises an error whose message says what is wrong.
        """
        try:
            return classify_files(self.served, support or [], labels, queries or [], bool(fce), state)
        except inf.InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # noqa: BLE001 - clients get one line, the log gets the traceback
            log.exception("/classify failed")
            raise gr.Error(f"internal error ({type(e).__name__})", print_exception=False) from None
