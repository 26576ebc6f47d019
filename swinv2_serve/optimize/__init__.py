"""``swinv2-serve optimize``: find the fastest path that keeps the model's answers on this machine, and deploy it.

``config`` (what is asked) < ``choice`` (pure: results, the choice, repository settings from measurements) <
``profile`` (stable batch-1 latency and a batch sweep, both ``timing.measure``) < ``search`` (per resolution:
export, build each candidate once with ``bench.candidates``, check it against fp32 eager on held-out images,
profile those that pass, choose) < ``package`` (the winner's Triton repository and the served-logits check) <
``report``/``plots`` < ``run`` (temporary folder renamed at the end).
"""

from .choice import CandidateResult, Fidelity, choose, preferred_batch_sizes
from .config import DEFAULT_CANDIDATES, OBJECTIVES, OptimizeConfig, parse_candidate
from .run import OptimizeReport, run_optimize

__all__ = ["DEFAULT_CANDIDATES", "OBJECTIVES", "CandidateResult", "Fidelity", "OptimizeConfig", "OptimizeReport",
           "choose", "parse_candidate", "preferred_batch_sizes", "run_optimize"]
