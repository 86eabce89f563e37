"""The load generator: client threads sending Predict, closed-loop or open-loop, timed per request.

- plan.py: what a run is asked to do (`LoadPlan`) and what it saw (`LoadResult`);
- arrivals.py: when each open-loop request is due;
- callers.py, http1.py: how a request goes out (gRPC Predict, TF Serving's REST predict);
- worker.py: one worker process, its threads and its reports;
- run.py: the worker processes started together, their reports gathered and judged.
"""

from optdse.load.plan import LoadError, LoadPlan, LoadResult
from optdse.load.run import SATURATED_CORE, run_load, stop_helpers

__all__ = ["SATURATED_CORE", "LoadError", "LoadPlan", "LoadResult", "run_load", "stop_helpers"]
