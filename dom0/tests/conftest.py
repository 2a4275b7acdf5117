"""Puts the package and the core-admin stand-in (qubes_standin/) on sys.path."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DOM0 = os.path.dirname(HERE)
STANDIN = os.path.join(HERE, "qubes_standin")

for path in (STANDIN, DOM0):
    if path not in sys.path:
        sys.path.insert(0, path)
