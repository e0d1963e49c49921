"""Shared page helper: make a deep link on a fresh server go through app.py."""
from __future__ import annotations

import streamlit as st


def ensure_navigation_mode() -> None:
    """Run through app.py even when a fresh server's first visit is a deep link to this page.

    Streamlit decides on its first script run whether ``pages/`` holds old-style auto-discovered pages;
    until ``st.navigation`` has been called once, a deep link (``/rgbd``) runs this file on its own, without
    app.py's page config and navigation. Switch the process to navigation mode and rerun: the same URL
    then resolves to this page through app.py.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # internal API moved: worst case is the old-style sidebar until "/" is visited
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
