"""Bounded form (CI, the default) or long form (``DIFFPOL_LONG=1``) of the suite.

The long form sends more requests and loads longer, and enforces the load goal; under Pants
its targets carry the tag ``integration-long`` (see BUILD) and ``DIFFPOL_LONG`` is passed
through by ``[test].extra_env_vars``.
"""

from __future__ import annotations

import os

LONG = os.environ.get("DIFFPOL_LONG") == "1"
