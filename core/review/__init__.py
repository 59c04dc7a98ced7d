"""The review wing: ``raresynth review``, a blinded real-vs-synthetic reader study in the browser.

``study`` draws and re-encodes the images and keeps the study (key, readers, answers) in
SQLite; ``app`` serves it (Starlette + uvicorn, server-rendered pages, local assets);
``results`` turns the answers into accuracy, AUC and agreement. It uses ``data``,
``evaluation`` and ``training`` (to sample a run); only the command line knows it.
"""

from .app import build_app, serve
from .results import compute_results, write_results
from .study import add_reader, create_study

__all__ = ["add_reader", "build_app", "compute_results", "create_study", "serve", "write_results"]
