"""The reference backend as a Triton python-backend model (decoupled, streaming).

Same input and output names as TensorRT-LLM's inflight_batcher_llm ensemble (`text_input`,
`max_tokens`, `temperature`, `top_k`, `top_p`, `random_seed`, `end_id`, `stop_words`, `stream`,
`return_log_probs` -> `text_output`, `output_log_probs`), so clients do not change between CPU
and GPU. Each request is handled on its own thread and submitted to one ReferenceRuntime, whose
scheduler batches concurrent requests. The version directory's model.py imports this class.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

try:  # only importable inside the Triton python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - imported for typing/tests outside Triton
    pb_utils = None


def _scalar(request: Any, name: str, default: Any) -> Any:
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return default
    v = t.as_numpy().reshape(-1)
    if v.size == 0:
        return default
    x = v[0]
    return x.decode() if isinstance(x, bytes) else x.item() if hasattr(x, "item") else x


def _strings(request: Any, name: str) -> tuple[str, ...]:
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return ()
    return tuple(x.decode() if isinstance(x, bytes) else str(x) for x in t.as_numpy().reshape(-1) if x)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        from pipeline.backends.reference.pacing import pacing_from_env
        from pipeline.backends.reference.serve import load_runtime

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        bundle_dir = version_dir / params.get("bundle_dir", "bundle")
        threads = int(params.get("threads", "0") or 0)
        if threads:
            import torch

            torch.set_num_threads(threads)
        pacing = pacing_from_env()
        if pacing.active:  # test-only hooks: never silent, a slowed model must be visible in the log
            pb_utils.Logger.log_warn(f"{args['model_name']} v{args['model_version']}: test hooks active: "
                                     f"{pacing.describe()}")
        # a serving profile's limits (pipeline/tune/profiles.py renders them as parameters)
        limits = {k: int(params[k]) for k in ("max_batch_size", "max_num_tokens") if params.get(k)}
        self.runtime = load_runtime(bundle_dir, verify=params.get("verify", "false") == "true", pacing=pacing,
                                    overrides=limits)
        self.version = args["model_version"]
        self._inflight: set[threading.Thread] = set()

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            t = threading.Thread(target=self._serve, args=(request,), daemon=True)
            self._inflight.add(t)
            t.start()

    def _serve(self, request: Any) -> None:
        from pipeline.backends.reference.runtime import SamplingParams

        sender = request.get_response_sender()
        try:
            text = _scalar(request, "text_input", "")
            stream = bool(_scalar(request, "stream", False))
            want_lp = bool(_scalar(request, "return_log_probs", False))
            end_id = _scalar(request, "end_id", None)
            seed = _scalar(request, "random_seed", None)
            params = SamplingParams(
                max_tokens=int(_scalar(request, "max_tokens", 16)),
                temperature=float(_scalar(request, "temperature", 0.0)),
                top_k=int(_scalar(request, "top_k", 0)),
                top_p=float(_scalar(request, "top_p", 1.0)) or 1.0,
                seed=None if seed is None else int(seed),
                stop_token_ids=() if end_id is None or int(end_id) < 0 else (int(end_id),),
                stop=_strings(request, "stop_words"),
                ignore_eos=bool(_scalar(request, "ignore_eos", False)),
                logprobs=want_lp,
            )

            def on_token(tok: int, delta: str, lp: float | None) -> None:
                if stream:
                    sender.send(self._response(delta, [lp] if want_lp and lp is not None else None, tok))

            gen = self.runtime.generate(text, params, on_token=on_token)
            if not stream:
                sender.send(self._response(gen.text, gen.logprobs, None, count=len(gen.token_ids)))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:  # the error goes back to the client, the model keeps serving
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e))),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            self._inflight.discard(threading.current_thread())

    def _response(self, text: str, logprobs: list[float] | None, token: int | None, count: int = 1) -> Any:
        outs = [
            pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_)),
            # token count from the server, so load generators never re-tokenize text
            pb_utils.Tensor("output_token_count", np.array([count], dtype=np.int32)),
        ]
        if logprobs is not None:
            outs.append(pb_utils.Tensor("output_log_probs", np.array(logprobs, dtype=np.float32)))
        return pb_utils.InferenceResponse(output_tensors=outs)

    def finalize(self) -> None:
        self.runtime.stop()
