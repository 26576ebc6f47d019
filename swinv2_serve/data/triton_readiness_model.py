"""Triton python-backend model that only exists to be unloaded: the embedded server's drain switch.

Triton runs with ``--strict-readiness``, so ``/v2/health/ready`` says yes only while every model is loaded.
On SIGTERM the embedded server unloads this model first: readiness turns false (load balancers and our
client stop sending) while NAME and NAME_image keep answering what was already sent; then Triton stops.
It is never called for inference.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("ready", np.ones(1, np.bool_))])
                for _ in requests]
