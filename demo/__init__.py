"""The gradio demo of Matching Networks; `python app.py` serves it. Parts, by name:

- state.py    what a browser tab or an API client has sent (gr.State), and the limits page and API share
- models.py   which checkpoints are served and what input they take (drawings, or photos)
- figures.py  everything drawn from a result: prediction, probabilities, the attention view, heatmap, PCA
- handlers.py the page's event handlers and the /classify endpoint
- page.py     layout, event wiring, the page's JavaScript and CSS, launch; App = the handlers + their page
- screenshot.py  regenerates docs/demo.png (an explicit command; tests never write it)
"""
import os
import sys

# Before gradio (and huggingface_hub) are imported: nothing may phone home.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
if "huggingface_hub.constants" in sys.modules:  # imported before this module: the variable came too late
    sys.modules["huggingface_hub.constants"].HF_HUB_DISABLE_TELEMETRY = True

from .handlers import classify_files  # noqa: E402
from .page import App, build_demo, launch  # noqa: E402

__all__ = ["App", "build_demo", "classify_files", "launch"]
