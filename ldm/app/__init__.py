"""The web page (scripts/app.py): drive a portrait with speech in the browser.

``ldm.app.studio`` holds everything the page does without Gradio (model, upload checks, render,
score); ``ldm.app.ui`` lays out the Gradio Blocks. Importing this package switches Gradio's
analytics, update check and Hugging Face telemetry off, before Gradio itself is imported.
"""

from __future__ import annotations

import os

INSTALL_HINT = "pip install -r requirements-app.txt  (Gradio; Playwright for the browser test)"

OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",  # no telemetry, no version check at start
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_SHARE": "False",  # never open a public tunnel
}

os.environ.update(OFFLINE_ENV)
