"""pyinotify 0.9.6, imported so that its deprecation warnings cannot stop watchd.

It imports ``asyncore`` (deprecated in 3.11, gone in 3.12, where the
``pyasyncore`` package stands in), and its notifier loop calls the deprecated
``Event.isSet()`` on every turn: under ``-W error`` the first would stop the
import and the second would kill the notifier thread on its first event. Both
warnings are ignored here, and only where pyinotify raises them.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="The asyncore module", category=DeprecationWarning)
    import pyinotify

warnings.filterwarnings(
    "ignore", message=r"isSet\(\) is deprecated", category=DeprecationWarning, module="pyinotify"
)

__all__ = ["pyinotify"]
