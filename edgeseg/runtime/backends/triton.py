"""A model served by Triton Inference Server, as a Predictor backend: ``triton://HOST:PORT/NAME``
(gRPC) or ``triton+http://HOST:PORT/NAME`` (HTTP/REST; KServe v2 protocol either way).

The client reads the model's config from the server (inputs, batch size, and the edgeseg metadata
``edgeseg triton repo`` records in its parameters), preprocesses locally, sends the smallest tensor
the served model takes (uint8 pixels, N x H x W x 3, where its input is UINT8: a quarter of the
float tensor) and renders locally. A server that is down or slow is retried within a bounded time
(``retry_seconds``), every retry counted in the report; then one line naming the server.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from dataclasses import dataclass

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.redact import redact
from edgeseg.runtime.backends.base import BackendInfo
from edgeseg.runtime.meta import ModelMeta

URL = re.compile(r"^triton(\+http|\+grpc)?://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:(?P<port>\d{1,5}))?"
                 r"/(?P<name>[A-Za-z0-9_.-]+)/?$")
INSTALL = "pip install 'edgeseg[triton]' (tritonclient)"
TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNKNOWN", "timed out", "onnection",
             "503", "Broken pipe")


def meta_from_parameters(parameters: dict) -> ModelMeta:
    """The ModelMeta a Triton model config's parameters carry (``edgeseg_meta``, JSON)."""
    value = parameters.get("edgeseg_meta", {})
    text = value.get("string_value") if isinstance(value, dict) else None
    if not text:
        raise ValueError("its config has no edgeseg_meta parameter")
    return ModelMeta.from_dict(json.loads(text))


def is_triton_url(model: object) -> bool:
    return isinstance(model, str) and model.startswith(("triton://", "triton+http://", "triton+grpc://"))


@dataclass(frozen=True)
class TritonURL:
    protocol: str  # grpc or http
    host: str
    port: int
    name: str

    @classmethod
    def parse(cls, url: str) -> TritonURL:
        m = URL.match(url)
        if not m or (m["port"] and not 0 < int(m["port"]) < 65536):
            raise EdgesegError(f"{redact(url)!r} is not a Triton model address; write triton://HOST:PORT/NAME "
                               "(gRPC, port 8001 by default) or triton+http://HOST:PORT/NAME (port 8000)")
        protocol = "http" if m.group(1) == "+http" else "grpc"
        port = int(m["port"]) if m["port"] else (8000 if protocol == "http" else 8001)
        return cls(protocol, m["host"], port, m["name"])

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"triton{'+http' if self.protocol == 'http' else ''}://{self.server}/{self.name}"


class TritonBackend:
    """A connection to one served model. The HTTP client (gevent) works only in the thread that made it,
    so each thread gets its own; bench --concurrency makes one backend per client thread."""

    def __init__(self, url: str, timeout: float = 10.0, retry_seconds: float = 5.0) -> None:
        self.url = TritonURL.parse(url)
        self.timeout, self.retry_seconds = timeout, retry_seconds
        self.stats = {"requests": 0, "retries": 0, "failures": 0}
        self._local = threading.local()
        self._module = self._import()
        config = self._call(lambda: self._client.get_model_config(self.url.name, **self._config_kw()), "read the "
                            "model's config")
        config = config.get("config", config)
        self.meta, self.input_name, self.pixels, self.output_name, classes = self._read(config)
        self.max_batch = int(config.get("max_batch_size", 0)) or 1
        self.info = BackendInfo(
            name="triton", provider=f"{self.url.protocol}://{self.url.server}", precision="served", compute="served",
            threads=0, output="classes" if classes else "logits", static_batch=None,
            extra={"server": str(self.url), "wire": "uint8 pixels" if self.pixels else "float32 tensor",
                   "remote": self.stats})

    def _import(self):
        try:
            if self.url.protocol == "http":
                import tritonclient.http as module
            else:
                import tritonclient.grpc as module
        except ImportError:
            raise EdgesegError(f"triton:// models need the Triton client: {INSTALL}") from None
        return module

    @property
    def _client(self):
        """This thread's client."""
        client = getattr(self._local, "client", None)
        if client is None:
            if self.url.protocol == "http":
                client = self._module.InferenceServerClient(self.url.server, connection_timeout=self.timeout,
                                                            network_timeout=self.timeout)
            else:
                client = self._module.InferenceServerClient(self.url.server)
            self._local.client = client
        return client

    def _config_kw(self) -> dict:
        return {"as_json": True, "client_timeout": self.timeout} if self.url.protocol == "grpc" else {}

    def _read(self, config: dict) -> tuple[ModelMeta, str, bool, str, bool]:
        """The served model's meta, input name, whether it takes uint8 pixels, output name and kind."""
        where = f"{self.url}: "
        try:
            meta = meta_from_parameters(config.get("parameters", {}))
            (inp,), (out,) = config["input"], config["output"]
        except (ValueError, TypeError, KeyError) as e:
            raise EdgesegError(f"{where}not an edgeseg model ({e}); serve one written by edgeseg triton repo or "
                               "edgeseg triton serve") from None
        h, w = meta.input_size
        dims = [int(d) for d in inp.get("dims", [])]
        dtype = str(inp.get("data_type", "")).removeprefix("TYPE_")
        if (dtype, dims) == ("UINT8", [h, w, 3]):
            pixels = True
        elif (dtype, dims) == ("FP32", [3, h, w]):
            pixels = False
        else:
            raise EdgesegError(f"{where}input {inp.get('name')!r} is {dtype} {dims}; expected UINT8 [{h}, {w}, 3] or "
                               f"FP32 [3, {h}, {w}] (edgeseg triton repo writes those)")
        classes = len(out.get("dims", [])) == 2
        return meta, inp["name"], pixels, out["name"], classes

    def _call(self, fn, what: str):
        """``fn()`` with retries for a server that is down, restarting or slow, for ``retry_seconds``."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            try:
                return fn()
            except Exception as e:  # tritonclient raises its own and the transport's exception types
                text = str(e)
                transient = any(t in text for t in TRANSIENT) or isinstance(e, (OSError, TimeoutError))
                if not transient or time.monotonic() + delay > deadline:
                    self.stats["failures"] += 1
                    first = (text.strip().splitlines() or [type(e).__name__])[0][:200]
                    raise EdgesegError(f"Triton server {self.url.server} (model {self.url.name}) could not "
                                       f"{what}: {first}; is it running? (edgeseg triton serve)") from None
                self.stats["retries"] += 1
                time.sleep(delay)
                delay = min(2 * delay, 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """A batch (uint8 pixels or the float tensor, as :attr:`pixels` says) -> the served model's output."""
        parts = [x[i:i + self.max_batch] for i in range(0, len(x), self.max_batch)]
        return np.concatenate([self._infer(p) for p in parts])

    def _infer(self, x: np.ndarray) -> np.ndarray:
        m = self._module
        x = np.ascontiguousarray(x)
        inp = m.InferInput(self.input_name, list(x.shape), "UINT8" if self.pixels else "FP32")
        inp.set_data_from_numpy(x)
        outputs = [m.InferRequestedOutput(self.output_name)]
        kw = {"client_timeout": self.timeout} if self.url.protocol == "grpc" else {}
        self.stats["requests"] += 1
        result = self._call(lambda: self._client.infer(self.url.name, [inp], outputs=outputs, **kw), "run the model")
        out = result.as_numpy(self.output_name)
        h, w = self.meta.input_size
        want = (len(x), h, w) if self.info.output == "classes" else (len(x), len(self.meta.class_names), h, w)
        if out is None or out.shape != want:
            raise EdgesegError(f"Triton server {self.url.server} answered {None if out is None else out.shape} for "
                               f"model {self.url.name}, expected {want}")
        return out

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):  # closing a connection to a server that is gone
                client.close()
