"""Triton python-backend model NAME_preprocess: encoded image bytes -> float32 [3, H, W].

Served as it is by the embedded server and written into generated repositories by ``swinv2_serve.repository``.
It uses the package's single preprocessing path (``swinv2_serve.preprocess``) with the model's own export
metadata, stored in this model's config ``parameters`` under ``swinv2_serve``.

A request whose bytes are not a usable image gets an error response of its own (the others proceed) with
the code INVALID_ARG: a client's mistake, answered HTTP 400 / gRPC INVALID_ARGUMENT, which monitoring does
not count as a server failure and retry policies do not retry. Python models can set an error code since
Triton 2.38 (NGC 23.09); on older releases the error carries no code (gRPC INTERNAL; their HTTP endpoint
answered every error with 400 until 2.42).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from swinv2_serve.contract import IMAGE_INPUT, METADATA_KEY, ExportMetadata
from swinv2_serve.errors import ImageDecodeError
from swinv2_serve.preprocess import Preprocess


def client_error(message):
    """An error that tells the client it sent something unusable: INVALID_ARG where the release supports codes.

    Looked up at call time: the stub fills in ``pb_utils.TritonError`` only after this file is imported.
    """
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)  # None before Triton 2.38
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameter = config.get("parameters", {}).get(METADATA_KEY)
        if not parameter:
            raise pb_utils.TritonModelException(f"config.pbtxt has no '{METADATA_KEY}' parameter: regenerate it")
        metadata = ExportMetadata.from_json(parameter["string_value"], args["model_name"])
        self.preprocess = Preprocess.from_metadata(metadata)
        self.output_name = config["output"][0]["name"]

    def _one(self, request):
        images = pb_utils.get_input_tensor_by_name(request, IMAGE_INPUT).as_numpy().reshape(-1)
        arrays = []
        for i, data in enumerate(images):
            raw = data if isinstance(data, bytes) else bytes(data)
            try:
                arrays.append(self.preprocess(raw))
            except ImageDecodeError as exc:
                raise ImageDecodeError(f"image {i} of {len(images)}: {exc}") from None
        batch = np.stack(arrays) if arrays else np.zeros((0, 3, *self.preprocess.img_size), np.float32)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, batch)])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except ImageDecodeError as exc:
                responses.append(pb_utils.InferenceResponse(error=client_error(str(exc))))
        return responses
