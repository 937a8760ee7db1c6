"""The cluster: several machines under one gateway, on Ray (head, node agents, placement, power).

Ray, when its driver runs under `uv run`, would ship the project to every worker and start them
with `uv run` too (its uv runtime-env hook): slow, and offline it hangs. Corral's workers use the
installed interpreter, so the hook is off before Ray is imported.
"""

import os

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
