"""Downloads for a machine with internet: HDTF videos (yt-dlp) and weight files (HTTP)."""

from __future__ import annotations

import logging


def setup_logging(verbose: bool) -> None:
    """The scripts' log format: 'LEVEL name: message' at INFO, or DEBUG when verbose."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
