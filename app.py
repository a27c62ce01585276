"""Gradio demo of Matching Networks: draw (or upload) a few examples of each class, then a query, and see
the prediction, the probability of every class and the attention over every support example.

    python app.py [--port 7860] [--host 127.0.0.1]

Runs offline on the shipped checkpoints and serves one named API endpoint, /classify (docs/APP.md).
What a browser tab or an API client has sent lives in gr.State: the embedded support set is cached per
session and never shared. Preprocessing and the cached support set are in matchnet/inference.py.
"""
from __future__ import annotations

import os
import sys

# Before gradio (and huggingface_hub) are imported: nothing may phone home.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
if "huggingface_hub.constants" in sys.modules:  # imported before this module: the variable came too late
    sys.modules["huggingface_hub.constants"].HF_HUB_DISABLE_TELEMETRY = True

import argparse  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import secrets  # noqa: E402
import string  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import torch  # noqa: E402
from plotly.subplots import make_subplots  # noqa: E402

from matchnet import inference as inf  # noqa: E402

ROOT = Path(__file__).resolve().parent
CHECKPOINTS = {"base": ROOT / "assets" / "omniglot-vinyals", "fce": ROOT / "assets" / "omniglot-vinyals-fce"}
MODEL_NAMES = {"base": "Matching Net", "fce": "Matching Net + FCE"}
EXAMPLES = ROOT / "assets" / "examples" / "omniglot"
MAX_WAY, MAX_SHOT, MAX_QUERIES, MAX_SUPPORT = 20, 5, 16, 100
DEFAULT_NAMES = list(string.ascii_uppercase[:MAX_WAY])
EMPTY = np.full((84, 84), 232, np.uint8)  # thumbnail of an empty support slot
log = logging.getLogger("matchnet.app")


def load_models() -> dict[str, Any]:
    return {key: inf.load_checkpoint(path) for key, path in CHECKPOINTS.items()}


# ---------------------------------------------------------------------------------------------- state

class Query:
    def __init__(self, x: np.ndarray, name: str):
        self.x, self.name = x, name  # model input [28, 28] (ink = 1), and how the results label it


class Session:
    """Everything one browser tab has drawn or uploaded (lives in gr.State, so it is per user)."""

    def __init__(self) -> None:
        self.n_way, self.k_shot = 5, 1
        self.names = DEFAULT_NAMES[:5]
        self.slots: dict[tuple[int, int], np.ndarray] = {}  # (class, example) -> 28x28; kept when N, k shrink
        self.current = (0, 0)  # the slot the support pad draws into
        self.drawn: Query | None = None  # the query pad's character
        self.uploads: list[Query] = []  # uploaded queries, or a random episode's query
        self.compare = False
        self.shown = 0  # the query whose probabilities and attention thumbnails are shown
        self.truth: list[str] = []  # a random episode's query class, for the status line
        self.source = ""  # a random episode's characters, for the status line
        self.cache = inf.SupportCache()
        self.rng = random.Random(secrets.randbits(64))

    def __deepcopy__(self, memo: dict) -> "Session":  # gr.State deep-copies its default for every session
        return Session()

    def order(self) -> list[tuple[int, int]]:
        return [(c, j) for c in range(self.n_way) for j in range(self.k_shot)]

    def filled(self) -> list[tuple[int, int]]:
        return [slot for slot in self.order() if slot in self.slots]

    def support(self) -> tuple[np.ndarray, list[str], list[str]]:
        """(images [S, 28, 28], label per image, class names), or an InputError saying what is missing."""
        filled = self.filled()
        if not filled:
            raise inf.InputError("no support set yet: draw or upload at least one example of each class")
        labels = [self.names[c] for c, _ in filled]
        classes = inf.check_support(labels, self.names[:self.n_way])
        return np.stack([self.slots[s] for s in filled]), labels, classes

    def queries(self) -> list[Query]:
        return ([self.drawn] if self.drawn is not None else []) + self.uploads


class ApiSession:
    """Per-client state of /classify: the last support set, decoded, and its embeddings."""

    def __init__(self) -> None:
        self.key = ""
        self.images: np.ndarray | None = None
        self.cache = inf.SupportCache()

    def __deepcopy__(self, memo: dict) -> "ApiSession":
        return ApiSession()


# -------------------------------------------------------------------------------------------- helpers

def guarded(fn: Callable) -> Callable:
    """For UI handlers: bad input becomes a warning and a status line and changes nothing else; no
    traceback ever reaches the page (unexpected errors are logged here and reported in one line)."""
    @functools.wraps(fn)
    def wrapper(self: "App", *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except inf.InputError as e:
            message = str(e)
        except Exception as e:  # noqa: BLE001 - the page gets one line, the log the traceback
            log.exception("handler %s failed", fn.__name__)
            message = f"internal error ({type(e).__name__}); the server log has the details"
        gr.Warning(message)
        return {self.status: f"**Problem:** {message}"}
    return wrapper


def read_pad(value: dict | np.ndarray | None) -> np.ndarray | None:
    """The character drawn in a Sketchpad as a model input, or None when the canvas is empty or blank."""
    image = value.get("composite") if isinstance(value, dict) else value
    if image is None:
        return None
    try:
        return inf.preprocess(image)
    except inf.InputError:
        return None


def read_files(files: list[str] | None, what: str) -> list[Query]:
    """All uploaded files or none: one bad file rejects the upload, naming the file."""
    out = []
    for i, path in enumerate(files or []):
        name = Path(path).name
        try:
            out.append(Query(inf.preprocess(path), name))
        except inf.InputError as e:
            raise inf.InputError(f"{what} {i + 1} ({name}): {str(e).removeprefix(f'{name}: ')}") from None
    return out


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


# -------------------------------------------------------------------------------------------- figures

def status_line(s: Session, result: inf.Result, names: list[str]) -> str:
    line = (f"{len(names)} quer{'y' if len(names) == 1 else 'ies'} against {len(result.support_labels)} "
            f"support examples of {len(result.classes)} classes")
    if s.truth and len(s.truth) == len(names):
        right = sum(p == t for p, t in zip(result.predicted, s.truth))
        line += f" · random episode: {right}/{len(names)} correct (the query is {', '.join(s.truth)})"
    return line + (f". {s.source}." if s.source else "")


def prediction_md(results: dict[str, inf.Result], names: list[str]) -> str:
    cells = [[f"**{r.classes[i]}** ({100 * r.probs[q, i]:.0f}%)" for r in results.values()
              for i in [int(r.probs[q].argmax())]] for q in range(len(names))]
    top = f"## Prediction: {cells[0][0]}"
    if len(names) == 1 and len(results) == 1:
        return top
    header = "| query | " + " | ".join(MODEL_NAMES[k] for k in results) + " |\n" + "|---" * (1 + len(results))
    return f"{top}\n\n{header}|\n" + "\n".join(f"| {n} | " + " | ".join(c) + " |" for n, c in zip(names, cells))


def probs_figure(results: dict[str, inf.Result], name: str, q: int) -> go.Figure:
    fig = go.Figure()
    for key, r in results.items():
        fig.add_bar(x=r.classes, y=r.probs[q], name=MODEL_NAMES[key], text=[f"{p:.0%}" for p in r.probs[q]],
                    textposition="outside", hovertemplate="%{x}: %{y:.3f}<extra>" + MODEL_NAMES[key] + "</extra>")
    fig.update_layout(title=f"P(class | {name})", yaxis=dict(range=[0, 1.15], tickformat=".0%"), height=300,
                      margin=dict(l=40, r=10, t=40, b=40), barmode="group", showlegend=len(results) > 1,
                      legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(type="category")
    return fig


def attention_items(results: dict[str, inf.Result], thumbs: list[np.ndarray], captions: list[str],
                    q: int) -> list[tuple[np.ndarray, str]]:
    base = results["base"].attention[q]
    if "fce" in results:  # how FCE moves the attention
        return [(t, f"{c} {a:.2f}→{b:.2f}") for t, c, a, b in zip(thumbs, captions, base,
                                                                   results["fce"].attention[q])]
    return [(t, f"{c}: {a:.2f}") for t, c, a in zip(thumbs, captions, base)]


def heatmap_figure(results: dict[str, inf.Result], captions: list[str], names: list[str]) -> go.Figure:
    fig = make_subplots(rows=len(results), cols=1, shared_xaxes=True, vertical_spacing=0.15,
                        subplot_titles=[f"attention, {MODEL_NAMES[k]}" for k in results])
    for row, (key, r) in enumerate(results.items(), start=1):
        fig.add_trace(go.Heatmap(
            z=r.attention, x=captions, y=names, zmin=0, zmax=1, colorscale="Blues", showscale=row == 1,
            hovertemplate="query %{y}<br>support %{x}<br>attention %{z:.3f}<extra>" + MODEL_NAMES[key] +
                          "</extra>"), row=row, col=1)
        fig.update_yaxes(autorange="reversed", type="category", row=row, col=1)
    fig.update_xaxes(type="category")
    fig.update_layout(height=110 + len(results) * (40 + 30 * len(names)), margin=dict(l=10, r=10, t=30, b=10))
    return fig


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


def classify_files(models: dict[str, Any], support: list[str], labels: Any, queries: list[str], fce: bool,
                   state: ApiSession) -> dict:
    """The work of /classify; an InputError says what is wrong with the request."""
    if not support:
        raise inf.InputError("no support set: send support images and one label per image")
    if not queries:
        raise inf.InputError("no query image: send one or more query images")
    if len(support) > MAX_SUPPORT or len(queries) > 2 * MAX_QUERIES:
        raise inf.InputError(f"at most {MAX_SUPPORT} support and {2 * MAX_QUERIES} query images per call")
    labels = api_labels(labels)
    if len(labels) != len(support):
        raise inf.InputError(f"{len(support)} support images but {len(labels)} labels: give one label per image")
    classes = inf.check_support(labels)
    if len(classes) > MAX_WAY:
        raise inf.InputError(f"at most {MAX_WAY} classes, got {len(classes)}")
    digest = hashlib.sha1("\x00".join(labels).encode())
    for path in support:
        digest.update(Path(path).read_bytes() if Path(path).is_file() else path.encode())
        digest.update(b"\x00")
    cached = digest.hexdigest() == state.key and state.images is not None
    # A new support set is decoded, but only kept once the queries are known to be good too.
    images = state.images if cached else np.stack([q.x for q in read_files(support, "support image")])
    xq = np.stack([q.x for q in read_files(queries, "query image")])
    key = "fce" if fce else "base"
    entry = state.cache.get(key, models[key], images, labels, classes)  # embedding cached on the pixels
    state.key, state.images = digest.hexdigest(), images
    return {**entry.classify(xq).to_json(), "model": CHECKPOINTS[key].name, "support_cached": cached}


# --------------------------------------------------------------------------------------------- page

JS = """
() => {
  // gradio's Sketchpad starts with no tool selected: pick the brush in every pad whenever it shows the
  // "select the draw tool" placeholder, so that the first stroke draws.
  const pick = () => document.querySelectorAll('.mn-pad').forEach((pad) => {
    if (!pad.querySelector('.empty.wrap')) return;
    const brush = pad.querySelector('button[aria-label="Brush"]') || pad.querySelector('button.quite-round');
    if (brush) brush.click();
  });
  let queued = false;
  new MutationObserver(() => {
    if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; pick(); }); }
  }).observe(document.body, {childList: true, subtree: true});
  pick();
  // Pads are cleared here, never by the server: gradio 6's Sketchpad hangs for good when an event sets
  // its value after something was drawn. Its own "clear canvas" button is the last in its top toolbar.
  window.mnClear = (ids) => ids.forEach((id) => {
    const pad = document.getElementById(id);
    if (!pad) return;
    const buttons = Array.from(pad.querySelectorAll('button.icon-button'));
    const clear = pad.querySelector('button[aria-label="Clear canvas"]') || buttons[buttons.length - 1];
    if (clear && !clear.disabled) clear.click();
  });
}
"""


def clear_js(*pads: str) -> str:
    return f"(...args) => {{ window.mnClear && window.mnClear({list(pads)}); return args; }}"


CSS = """
.mn-thumbs img { image-rendering: pixelated; }
.mn-thumbs .grid-wrap.fixed-height { min-height: 0; max-height: none; }  /* as tall as their rows */
#mn-prediction h2 { margin: 0.2em 0; }
"""
INTRO = """# Matching Networks — one-shot learning, live
A network trained on other alphabets learns **your** classes from one drawing each
([Vinyals et al., 2016](https://arxiv.org/abs/1606.04080)). It starts with a random Omniglot support set:
**copy one of its characters into the query pad** and see the prediction, the probability of every class and
the attention over every support example. Or press *Clear* and draw your own classes: each support example
in the left pad (then *Next*), and a query in the right one."""
API_MD = """Script it with `gradio_client`: the named endpoint **`/classify`** takes support images, one label
per image and one or more query images, and returns the predicted labels, class probabilities and the
attention matrix as JSON (example in `docs/APP.md`)."""


class App:
    """The page and its handlers. Models are shared read-only; everything a user does is in their Session."""

    def __init__(self, models: dict[str, Any] | None = None, examples: Path = EXAMPLES, seed: int | None = None):
        # One intra-op thread: batches are tiny and requests already run in parallel; on a busy 2-core
        # machine two threads made single queries hundreds of times slower (bench/app_latency.py).
        torch.set_num_threads(1)
        self.models = models or load_models()
        self.examples = inf.list_examples(examples)
        self.seed = seed  # fixes every page's random episodes (tests, screenshots); None: each page its own

    # views ------------------------------------------------------------------------------------------

    def support_view(self, s: Session) -> dict:
        items = [(inf.to_display(s.slots[(c, j)]) if (c, j) in s.slots else EMPTY,
                  f"{'▶ ' if (c, j) == s.current else ''}{s.names[c]}·{j + 1}") for c, j in s.order()]
        c, j = s.current
        title = (f"**Now drawing: class {s.names[c]}, example {j + 1} of {s.k_shot}.** Draw below, then "
                 "*Next*. Click a thumbnail to redo it.")
        return {self.gallery: gr.update(value=items, columns=min(10, max(5, 2 * s.k_shot))),
                self.slot_title: title, self.current: s.order().index(s.current),
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
                raise inf.InputError("the query canvas is blank: draw a character (or upload query images)")
        except inf.InputError as e:
            if explicit:
                raise
            return {self.status: f"Waiting: {e}"}
        keys = ["base", "fce"] if s.compare else ["base"]
        xq = np.stack([q.x for q in queries])
        results = {k: s.cache.get(k, self.models[k], images, labels, classes).classify(xq) for k in keys}
        names = [q.name for q in queries]
        s.shown = min(s.shown, len(queries) - 1)
        captions = [f"{s.names[c]}·{j + 1}" for c, j in s.filled()]
        predicted = results["base"].predicted
        return {
            self.status: status_line(s, results["base"], names),
            self.prediction: prediction_md(results, names),
            self.probs: probs_figure(results, names[s.shown], s.shown),
            self.attention: gr.update(value=attention_items(results, [inf.to_display(x) for x in images],
                                                            captions, s.shown),
                                      columns=min(8 if s.compare else 10, max(5, len(captions)))),
            self.heatmap: heatmap_figure(results, captions, names),
            self.shown: gr.update(choices=[(n, i) for i, n in enumerate(names)], value=s.shown,
                                  visible=len(names) > 1),
            self.query_gallery: gr.update(value=[(inf.to_display(q.x), f"{q.name}: {p}")
                                                 for q, p in zip(queries, predicted)], visible=True),
        }

    def cleared_results(self) -> dict:
        return {self.prediction: "", self.probs: None, self.attention: [], self.heatmap: None,
                self.shown: gr.update(choices=[], value=None, visible=False),
                self.query_gallery: gr.update(value=[], visible=False)}

    # handlers (pads are inputs only: see JS) ---------------------------------------------------------

    @guarded
    def on_support_drawn(self, value: dict | None, current: float | None, s: Session) -> dict:
        x = read_pad(value)
        if x is None:  # a cleared pad (Next, a new slot, the pad's own bin) leaves the slot as it is
            return {self.status: gr.skip()}  # nothing to update
        order = s.order()
        index = int(current) if current is not None and 0 <= int(current) < len(order) else order.index(s.current)
        s.slots[order[index]] = x  # the slot the pad showed when the stroke ended, even if Next came since
        s.truth, s.source = [], ""
        return {**self.support_view(s), **self.result_view(s, explicit=False)}

    @guarded
    def on_query_drawn(self, value: dict | None, s: Session) -> dict:
        x = read_pad(value)
        if x is None and s.drawn is None:  # a blank pad cleared again: keep the status line as it is
            return {self.status: gr.skip()}
        s.drawn = None if x is None else Query(x, "drawn query")
        if x is not None:
            s.truth = []
        elif not s.uploads:  # the query pad was cleared: so are its results
            return {self.status: "Query cleared: draw a character.", **self.cleared_results()}
        return self.result_view(s, explicit=False)

    @guarded
    def on_classify(self, value: dict | None, s: Session) -> dict:
        x = read_pad(value)  # the pad as it is now, even if its change event is still queued
        if x is None and not s.uploads:
            raise inf.InputError("the query canvas is blank: draw a character (or upload query images)")
        if x is not None and (s.drawn is None or not np.array_equal(x, s.drawn.x)):
            s.drawn, s.truth = Query(x, "drawn query"), []
        return self.result_view(s, explicit=True)

    def select(self, s: Session, index: int) -> dict:
        s.current = s.order()[index % len(s.order())]
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
        images = read_files(files, "support image")
        order = s.order()
        if not images:
            raise inf.InputError("no file received")
        if len(images) > len(order):
            raise inf.InputError(f"{len(images)} images for {len(order)} support slots: raise N or k first")
        start = order.index(s.current)
        for i, q in enumerate(images):  # fill from the selected slot on
            s.slots[order[(start + i) % len(order)]] = q.x
        s.current = order[(start + len(images)) % len(order)]
        s.truth, s.source = [], ""
        return {**self.support_view(s), **self.result_view(s, explicit=False)}

    @guarded
    def on_upload_queries(self, files: list[str] | None, s: Session) -> dict:
        queries = read_files(files, "query image")
        if not queries:
            raise inf.InputError("no file received")
        if len(queries) + len(s.uploads) + 1 > MAX_QUERIES:
            raise inf.InputError(f"at most {MAX_QUERIES} queries at once (one drawn plus uploads)")
        s.uploads += queries
        s.truth = []
        return self.result_view(s, explicit=True)

    @guarded
    def on_clear_queries(self, s: Session) -> dict:
        s.drawn, s.uploads, s.truth, s.shown = None, [], [], 0
        return {self.status: "Queries cleared.", **self.cleared_results()}

    @guarded
    def on_shape(self, n_way: float, k_shot: float, s: Session) -> dict:
        n, k = int(n_way), int(k_shot)
        if not (2 <= n <= MAX_WAY and 1 <= k <= MAX_SHOT):
            raise inf.InputError(f"N must be 2..{MAX_WAY} and k 1..{MAX_SHOT}")
        if (n, k) == (s.n_way, s.k_shot):  # e.g. the echo of a random episode setting the sliders
            return {self.status: gr.skip()}  # nothing to update
        s.n_way, s.k_shot, s.source = n, k, ""
        s.names = default_names(s.names, n)
        s.current = (min(s.current[0], n - 1), min(s.current[1], k - 1))
        return {**self.support_view(s), **self.result_view(s, explicit=False)}

    @guarded
    def on_names(self, text: str, s: Session) -> dict:
        names = parse_names(text, s.n_way)
        if names == s.names[:s.n_way]:
            return {self.status: gr.skip()}  # nothing to update
        s.names, s.source = names + s.names[s.n_way:], ""
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
    def on_random(self, n_way: float, k_shot: float, s: Session, with_query: bool = True) -> dict:
        n, k = int(n_way), int(k_shot)
        chars, support, queries = inf.random_episode(self.examples, n, k, 1 if with_query else 0, s.rng)
        s.n_way, s.k_shot, s.current, s.shown = n, k, (0, 0), 0
        s.names = DEFAULT_NAMES[:n]  # short names keep the captions readable; the status line names the source
        s.source = "Omniglot test characters: " + ", ".join(
            f"{name} = {c.replace('_', ' ').replace('/character', ' #')}" for name, c in zip(s.names, chars))
        s.slots = {(c, j): inf.preprocess(p) for c, paths in enumerate(support) for j, p in enumerate(paths)}
        s.drawn = None
        s.uploads = [Query(inf.preprocess(p), "random") for _, p in queries]
        s.truth = [s.names[c] for c, _ in queries]
        view = {**self.support_view(s), self.n_way: n, self.k_shot: k}
        if not queries:
            return {**view, **self.cleared_results(),
                    self.status: f"Copy one of these characters into the query pad. {s.source}."}
        return {**view, **self.result_view(s, explicit=True)}

    @guarded
    def on_clear(self, s: Session) -> dict:
        rng = s.rng
        s.__dict__.update(Session().__dict__)
        s.rng = rng
        return {**self.support_view(s), **self.cleared_results(), self.n_way: s.n_way, self.k_shot: s.k_shot,
                self.compare: False,
                self.status: "Cleared: draw one example per class on the left, then a query on the right."}

    def on_load(self, s: Session) -> dict:
        if self.seed is not None:
            s.rng = random.Random(self.seed)
        return self.on_random(5, 1, s, with_query=False)

    def api_classify(self, support: list[str] | None, labels: Any, queries: list[str] | None,
                     fce: bool | None, state: ApiSession) -> dict:
        """Classify query images against a labelled support set.

        support: support images (files); labels: one class name per support image, in the same order (a list,
        a JSON list or a comma-separated string); queries: one or more query images; fce: use the checkpoint
        with Full Context Embeddings. Returns JSON: labels (the predicted class of each query), classes (in
        order of first appearance in labels), probabilities [query][class], support_labels, attention
        [query][support image] (rows sum to 1), model, support_cached. Bad input raises an error whose
        message says what is wrong.
        """
        try:
            return classify_files(self.models, support or [], labels, queries or [], bool(fce), state)
        except inf.InputError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # noqa: BLE001 - clients get one line, the log gets the traceback
            log.exception("/classify failed")
            raise gr.Error(f"internal error ({type(e).__name__})", print_exception=False) from None

    # layout -----------------------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        brush = gr.Brush(default_size=6, colors=["#000000"], color_mode="fixed")
        pad = dict(image_mode="L", type="numpy", canvas_size=(256, 256), fixed_canvas=True, brush=brush,
                   layers=False, transforms=(), height=330, elem_classes=["mn-pad"])
        thumbs = dict(height="auto", allow_preview=False, object_fit="contain", format="png", fit_columns=False,
                      elem_classes=["mn-thumbs"])
        with gr.Blocks(title="Matching Networks demo") as demo:
            session = gr.State(Session())
            gr.Markdown(INTRO)
            with gr.Row(equal_height=True):
                self.n_way = gr.Slider(2, MAX_WAY, value=5, step=1, label="N: classes", scale=2, elem_id="mn-n")
                self.k_shot = gr.Slider(1, MAX_SHOT, value=1, step=1, label="k: examples per class", scale=2,
                                        elem_id="mn-k")
                self.compare = gr.Checkbox(label="Compare with Full Context Embeddings (FCE)", scale=2,
                                           elem_id="mn-compare")
                random_btn = gr.Button("Random Omniglot episode", scale=1, elem_id="mn-random")
                clear_btn = gr.Button("Clear", scale=1, variant="stop", elem_id="mn-clear")
            with gr.Row():
                with gr.Column(scale=3):
                    self.names = gr.Textbox(label="Class names (comma-separated)", value="A, B, C, D, E",
                                            elem_id="mn-names")
                    self.gallery = gr.Gallery(label="Support set as the network sees it (28×28)", columns=5,
                                              elem_id="mn-support", **thumbs)
                    self.slot_title = gr.Markdown(elem_id="mn-slot")
                    self.current = gr.Number(value=0, visible=False, precision=0)
                    self.support_pad = gr.Sketchpad(label="Support example", elem_id="mn-support-pad", **pad)
                    with gr.Row():
                        prev_btn = gr.Button("◀ Previous", size="sm")
                        next_btn = gr.Button("Next ▶", size="sm", variant="primary", elem_id="mn-next")
                        up_support = gr.UploadButton("Upload into slots", file_count="multiple", size="sm",
                                                     file_types=["image"], elem_id="mn-upload-support")
                with gr.Column(scale=2):
                    self.query_pad = gr.Sketchpad(label="Query", elem_id="mn-query-pad", **pad)
                    with gr.Row():
                        classify_btn = gr.Button("Classify", variant="primary", elem_id="mn-classify")
                        up_query = gr.UploadButton("Upload queries", file_count="multiple", size="sm",
                                                   file_types=["image"], elem_id="mn-upload-query")
                        clear_q = gr.Button("Clear queries", size="sm")
                    self.status = gr.Markdown(elem_id="mn-status")
                    self.prediction = gr.Markdown(elem_id="mn-prediction")
                    self.query_gallery = gr.Gallery(label="Queries → prediction", columns=5, visible=False,
                                                    elem_id="mn-queries", **thumbs)
                    self.shown = gr.Dropdown(label="Show query", choices=[], visible=False)
                    self.probs = gr.Plot(label="Class probabilities", elem_id="mn-probs")
            self.attention = gr.Gallery(label="Attention of the query over each support example", columns=10,
                                        elem_id="mn-attention", **thumbs)
            self.heatmap = gr.Plot(label="Attention: queries × support examples", elem_id="mn-heatmap")
            with gr.Accordion("API", open=False):
                gr.Markdown(API_MD)
            with gr.Column(visible=False):  # the inputs of /classify: not part of the page
                api_in = [gr.File(file_count="multiple", type="filepath", label="support"),
                          gr.JSON(label="labels"),
                          gr.File(file_count="multiple", type="filepath", label="queries"),
                          gr.Checkbox(value=False, label="fce"),
                          gr.State(ApiSession(), time_to_live=600)]  # a cache: API clients never say goodbye
                api_out = gr.JSON(label="result")
                api_btn = gr.Button()
            api_btn.click(self.api_classify, api_in, api_out, api_name="classify",
                          api_description=self.api_classify.__doc__, concurrency_limit=4)

            results = [self.status, self.prediction, self.probs, self.attention, self.heatmap, self.shown,
                       self.query_gallery]
            support = [self.gallery, self.slot_title, self.current, self.names, self.status]
            everything = support + results + [self.n_way, self.k_shot, self.compare]
            private = dict(api_visibility="private")  # UI plumbing: /classify is the one public endpoint
            live = dict(trigger_mode="always_last", show_progress="hidden", **private)
            new_slot = dict(js=clear_js("mn-support-pad"), **private)
            self.support_pad.change(self.on_support_drawn, [self.support_pad, self.current, session],
                                    support + results, **live)
            self.query_pad.change(self.on_query_drawn, [self.query_pad, session], results, **live)
            classify_btn.click(self.on_classify, [self.query_pad, session], results, **private)
            self.gallery.select(self.on_select_slot, [session], support, **new_slot)
            prev_btn.click(self.on_prev, [session], support, **new_slot)
            next_btn.click(self.on_next, [session], support, **new_slot)
            up_support.upload(self.on_upload_support, [up_support, session], support + results, **new_slot)
            up_query.upload(self.on_upload_queries, [up_query, session], results, **private)
            clear_q.click(self.on_clear_queries, [session], results, js=clear_js("mn-query-pad"), **private)
            for slider in (self.n_way, self.k_shot):  # change, not release: the number boxes count too
                slider.change(self.on_shape, [self.n_way, self.k_shot, session], support + results,
                              trigger_mode="always_last", **new_slot)
            for event in (self.names.submit, self.names.blur):
                event(self.on_names, [self.names, session], support + results, **private)
            self.compare.input(self.on_compare, [self.compare, session], results, **private)
            self.shown.input(self.on_show, [self.shown, session], results, **private)
            both = clear_js("mn-support-pad", "mn-query-pad")
            random_btn.click(self.on_random, [self.n_way, self.k_shot, session], everything, js=both, **private)
            clear_btn.click(self.on_clear, [session], everything, js=both, **private)
            demo.load(self.on_load, [session], everything, **private)
        return demo


def build_demo(models: dict[str, Any] | None = None, seed: int | None = None) -> gr.Blocks:
    """The app, not launched. Loads the shipped checkpoints unless models ({"base", "fce"}) are given."""
    return App(models, seed=seed).build()


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, **kwargs: Any):
    """Launch with the page settings (gradio 6 takes css and js here); the tests launch through this too."""
    demo.queue(default_concurrency_limit=4)
    return demo.launch(server_name=host, server_port=port, css=CSS, js=JS, max_file_size="32mb",
                       footer_links=["api", "gradio", "settings"], show_error=False, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description="Matching Networks demo (gradio)")
    # A Hugging Face Space sets GRADIO_SERVER_NAME=0.0.0.0; an explicit server_name would override it.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="0.0.0.0 to serve other machines (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="default: 7860, or the next free port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own local start-up probes
    launch(build_demo(), args.host, args.port)


if __name__ == "__main__":
    main()
