"""Gradio demo of Matching Networks (the Space's entry point): draw (or upload) a few examples of each class,
then a query, and see the prediction, the probability of every class and the attention over every support
example. The demo itself is the package demo/ (state, models, figures, handlers, page).

    python app.py [--checkpoint PATH_OR_HUB_ID] [--port 7860] [--host 127.0.0.1]

Runs offline on the shipped checkpoints (or the one given) and serves one named API endpoint, /classify
(docs/APP.md).
"""
from __future__ import annotations

import argparse
import logging
import os

import demo  # first: sets the offline switches before gradio is imported
from demo import App, build_demo, classify_files, launch  # noqa: F401  (the names scripts use)
from demo.figures import MODEL_NAMES  # noqa: F401
from demo.state import DEFAULT_NAMES, ApiSession, Session  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description="Matching Networks demo (gradio)")
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint folder, shipped name or Hub repo id (default: the two shipped Omniglot "
                             "checkpoints). Omniglot-style models (one channel, e.g. 1x28x28) get drawing pads; others (RGB) "
                             "upload slots")
    parser.add_argument("--resize", choices=["crop", "stretch"], default=None,
                        help="photos (RGB checkpoints): centre square or whole image squashed (default: as the "
                             "checkpoint's run was trained, from its train_config.json; else crop)")
    # A Hugging Face Space sets GRADIO_SERVER_NAME=0.0.0.0; an explicit server_name would override it.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="0.0.0.0 to serve other machines (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="default: 7860, or the next free port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own local start-up probes
    try:
        page = build_demo(checkpoint=args.checkpoint, resize=args.resize)
    except (OSError, ValueError) as e:  # a missing or bad checkpoint: one line, not a traceback
        parser.exit(2, f"app.py: cannot serve the checkpoint: {e}\n")
    launch(page, args.host, args.port)


if __name__ == "__main__":
    assert demo  # imported for its side effect
    main()
