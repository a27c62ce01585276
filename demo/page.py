"""The page: layout, the events that connect it to handlers.py, and the page's own JavaScript and CSS.

An Omniglot-style checkpoint gets two drawing pads (support and query); any other (e.g. RGB 3x84x84) gets
upload slots only. Both get the same results panels and the same /classify endpoint.
"""
from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from .handlers import Handlers
from .models import Served
from .state import MAX_FILE_MB, MAX_QUERIES, MAX_SHOT, MAX_WAY, ApiSession, Session

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

CSS = """
.mn-thumbs img { image-rendering: pixelated; }
.mn-thumbs .grid-wrap.fixed-height { min-height: 0; max-height: none; }  /* as tall as their rows */
#mn-prediction h2 { margin: 0.2em 0; }
.mn-att-head { font-size: 14px; margin: 0 0 8px; }
.mn-key-cos { background: #9ca3af; color: white; padding: 0 4px; border-radius: 3px; }
.mn-att-grid { display: flex; flex-wrap: wrap; gap: 10px; }
.mn-card { margin: 0; width: 138px; font-size: 13px; line-height: 1.25; }
.mn-card img { width: 84px; height: 84px; display: block; margin: 0 auto 4px; border-style: solid;
               border-radius: 4px; image-rendering: pixelated; box-sizing: content-box; background: white; }
.mn-card.mn-top .mn-name { color: #1d4ed8; }
.mn-name { font-weight: 700; text-align: center; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.mn-row { display: flex; align-items: center; gap: 3px; }
.mn-lab { width: 46px; color: #4b5563; font-size: 11px; white-space: nowrap; }
.mn-bar { flex: 1; height: 9px; background: #e5e7eb; border-radius: 2px; overflow: hidden; }
.mn-bar i { display: block; height: 100%; background: #1d4ed8; }
.mn-fce .mn-bar i { background: #c2410c; }
.mn-cos .mn-bar i { background: #9ca3af; }
.mn-row b { width: 34px; text-align: right; font-variant-numeric: tabular-nums; }
"""

INTRO_DRAWING = """# Matching Networks — one-shot learning, live
A network trained on other alphabets learns **your** classes from one drawing each
([Vinyals et al., 2016](https://arxiv.org/abs/1606.04080)). It starts with a random Omniglot support set:
**copy one of its characters into the query pad** and see the prediction, the probability of every class and
how much the query attends to every support example. Or press *Clear* and draw your own classes: each support
example in the left pad (then *Next*), and a query in the right one."""

INTRO_PHOTOS = """# Matching Networks — few-shot learning, live
This checkpoint takes {shape} images ([Vinyals et al., 2016](https://arxiv.org/abs/1606.04080)). Upload a
few photos of each of your classes into the support slots, then one or more query photos, and see the
prediction, the probability of every class and how much each query attends to every support example.
Photos are centre-cropped to a square and resized to {side} px."""

API_MD = f"""Script it with `gradio_client`: the named endpoint **`/classify`** takes support images, one label
per image and one or more query images, and returns the predicted labels, class probabilities, the attention
matrix and the cosine similarities as JSON (an example with its reply: the README's *Demo* section). Limits, the
same as this page's: at most {MAX_WAY} classes, {MAX_SHOT} images per class, {MAX_QUERIES} queries per call,
{MAX_FILE_MB} MB per file. Many requests: `Client(url, ssl_verify=ssl.create_default_context())` lets
gradio_client reuse one TLS context instead of building one per uploaded file."""


def clear_js(*pads: str) -> str:
    return f"(...args) => {{ window.mnClear && window.mnClear({list(pads)}); return args; }}"


class App(Handlers):
    """The demo: the handlers (handlers.py) and the page that calls them."""

    def build(self) -> gr.Blocks:
        """The page for these handlers (scripts such as bench/app_latency.py call this)."""
        return build(self)


def build(app: Handlers) -> gr.Blocks:
    """Create the components (as attributes of app, which its handlers update) and wire the events."""
    drawing = app.drawing
    c, h, w = app.served.shape
    brush = gr.Brush(default_size=6, colors=["#000000"], color_mode="fixed")
    pad = dict(image_mode="L", type="numpy", canvas_size=(256, 256), fixed_canvas=True, brush=brush,
               layers=False, transforms=(), height=330, elem_classes=["mn-pad"])
    thumbs = dict(height="auto", allow_preview=False, object_fit="contain", format="png", fit_columns=False,
                  elem_classes=["mn-thumbs"] if drawing else [])
    what = f"{h}×{w}"
    with gr.Blocks(title="Matching Networks demo") as demo:
        session = gr.State(Session())
        gr.Markdown(INTRO_DRAWING if drawing else INTRO_PHOTOS.format(shape=f"{c}×{h}×{w}", side=h))
        with gr.Row(equal_height=True):
            app.n_way = gr.Slider(2, MAX_WAY, value=5, step=1, label="N: classes", scale=2, elem_id="mn-n")
            app.k_shot = gr.Slider(1, MAX_SHOT, value=1, step=1, label="k: examples per class", scale=2,
                                   elem_id="mn-k")
            app.compare = gr.Checkbox(label="Compare with Full Context Embeddings (FCE)", scale=2,
                                      elem_id="mn-compare", visible="fce" in app.models)
            random_btn = gr.Button("Random Omniglot episode", scale=1, elem_id="mn-random",
                                   visible=bool(app.examples))
            clear_btn = gr.Button("Clear", scale=1, variant="stop", elem_id="mn-clear")
        with gr.Row():
            with gr.Column(scale=3):
                app.names = gr.Textbox(label="Class names (comma-separated)", value="A, B, C, D, E",
                                       elem_id="mn-names")
                app.gallery = gr.Gallery(label=f"Support set as the network sees it ({what})", columns=5,
                                         elem_id="mn-support", **thumbs)
                app.slot_title = gr.Markdown(elem_id="mn-slot")
                app.current = gr.Number(value=0, visible=False, precision=0)
                app.support_pad = (gr.Sketchpad(label="Support example", elem_id="mn-support-pad", **pad)
                                   if drawing else None)
                with gr.Row():
                    prev_btn = gr.Button("◀ Previous", size="sm")
                    next_btn = gr.Button("Next ▶", size="sm", variant="primary", elem_id="mn-next")
                    up_support = gr.UploadButton("Upload into slots", file_count="multiple", size="sm",
                                                 file_types=["image"], elem_id="mn-upload-support")
            with gr.Column(scale=2):
                app.query_pad = gr.Sketchpad(label="Query", elem_id="mn-query-pad", **pad) if drawing else None
                with gr.Row():
                    classify_btn = gr.Button("Classify", variant="primary", elem_id="mn-classify")
                    up_query = gr.UploadButton("Upload queries", file_count="multiple", size="sm",
                                               file_types=["image"], elem_id="mn-upload-query")
                    clear_q = gr.Button("Clear queries", size="sm")
                app.status = gr.Markdown(elem_id="mn-status")
                with gr.Column(visible=False) as app.results_side:  # shown once there is a result
                    app.prediction = gr.Markdown(elem_id="mn-prediction")
                    app.query_gallery = gr.Gallery(label="Queries → prediction", columns=5, visible=False,
                                                   elem_id="mn-queries", **thumbs)
                    app.shown = gr.Dropdown(label="Show query", choices=[], visible=False, elem_id="mn-shown")
                    app.probs = gr.Plot(label="Class probabilities", elem_id="mn-probs")
        with gr.Column(visible=False) as app.results_below:
            gr.Markdown("### Attention of the query over each support example")
            app.attention = gr.HTML(elem_id="mn-attention")
            app.scale = gr.Slider(1, 60, value=app.model_scale(), step=1, elem_id="mn-scale",
                                  label="Softmax scale of the attention view (what-if; the prediction uses "
                                        f"the model's {app.model_scale():g}): lower flattens the attention")
            with gr.Row():
                app.heatmap = gr.Plot(label="Attention map", elem_id="mn-heatmap", visible=False)
                app.embedding = gr.Plot(label="Embeddings (PCA)", elem_id="mn-embedding")
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
        api_btn.click(app.api_classify, api_in, api_out, api_name="classify",
                      api_description=app.api_classify.__doc__, concurrency_limit=4)

        results = [app.status, app.prediction, app.probs, app.attention, app.heatmap, app.embedding, app.shown,
                   app.query_gallery, app.results_side, app.results_below]
        support = [app.gallery, app.slot_title, app.current, app.names, app.status]
        everything = support + results + [app.n_way, app.k_shot, app.compare, app.scale]
        private = dict(api_visibility="private")  # UI plumbing: /classify is the one public endpoint
        live = dict(trigger_mode="always_last", show_progress="hidden", **private)
        pads = ["mn-support-pad", "mn-query-pad"] if drawing else []
        new_slot = dict(js=clear_js(*pads[:1]), **private) if drawing else private
        if drawing:
            app.support_pad.change(app.on_support_drawn, [app.support_pad, app.current, session],
                                   support + results, **live)
            app.query_pad.change(app.on_query_drawn, [app.query_pad, session], results, **live)
            classify_btn.click(app.on_classify, [app.query_pad, session], results, **private)
        else:
            classify_btn.click(functools.partial(app.on_classify, None), [session], results, **private)
        app.gallery.select(app.on_select_slot, [session], support, **new_slot)
        prev_btn.click(app.on_prev, [session], support, **new_slot)
        next_btn.click(app.on_next, [session], support, **new_slot)
        up_support.upload(app.on_upload_support, [up_support, session], support + results, **new_slot)
        up_query.upload(app.on_upload_queries, [up_query, session], results, **private)
        clear_query = dict(js=clear_js(*pads[1:]), **private) if drawing else private
        clear_q.click(app.on_clear_queries, [session], results, **clear_query)
        for slider in (app.n_way, app.k_shot):  # change, not release: the number boxes count too
            slider.change(app.on_shape, [app.n_way, app.k_shot, session], support + results,
                          trigger_mode="always_last", **new_slot)
        for event in (app.names.submit, app.names.blur):  # no progress overlay: the click that blurs the box
            event(app.on_names, [app.names, session], support + results, show_progress="hidden", **private)
        app.compare.input(app.on_compare, [app.compare, session], results, **private)
        app.shown.input(app.on_show, [app.shown, session], results, **private)
        app.scale.input(app.on_scale, [app.scale, session], results, **live)
        both = dict(js=clear_js(*pads), **private) if drawing else private
        random_btn.click(app.on_random, [app.n_way, app.k_shot, session], everything, **both)
        clear_btn.click(app.on_clear, [session], everything, **both)
        demo.load(app.on_load, [session], everything, **private)
    return demo


def build_demo(models: dict[str, Any] | Served | None = None, seed: int | None = None,
               checkpoint: str | None = None, resize: str | None = None) -> gr.Blocks:
    """The app, not launched: the shipped checkpoints, or `checkpoint` (a folder or Hub id), or `models`.
    resize: how photos are made square for an RGB checkpoint (models.load)."""
    return build(App(models, seed=seed, checkpoint=checkpoint, resize=resize))


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, **kwargs: Any):
    """Launch with the page settings (gradio 6 takes css and js here); the tests launch through this too."""
    demo.queue(default_concurrency_limit=4)
    return demo.launch(server_name=host, server_port=port, css=CSS, js=JS, max_file_size=f"{MAX_FILE_MB}mb",
                       footer_links=["api", "gradio", "settings"], show_error=False, **kwargs)
