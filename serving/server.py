"""`ncfctl serve`: the KServe model server for one NCF model (REST V1/V2 + gRPC), one worker, on 127.0.0.1.

    ncfctl serve --model-uri runs/models/<run-id>                     # a package directory
    ncfctl serve --model-uri models:/ncf@champion --tracking-uri sqlite:///runs/mlflow.db
    python -m serving.server --host 0.0.0.0                           # in the serving image: /mnt/models
    python -m serving.server serve                                    # SageMaker: /opt/ml/model, :8080, /ping

Endpoints (KServe's): /v1/models/ncf:predict, /v2/models/ncf/infer, /v2/models/ncf (metadata),
/v2/health/live, /v2/health/ready, /v2/repository/models/ncf/load (hot swap: re-reads the source, e.g. the
model the `champion` alias points at now), /metrics (Prometheus); with --sagemaker-routes also SageMaker's
/ping and /invocations (serving/sagemaker_routes.py). One worker: scale with replicas.
In front of KServe (`RequestGuard`): a body is read as JSON whatever its Content-Type says (`curl -d` sends
application/x-www-form-urlencoded), and bodies over --max-body-bytes get 413 before they are read.
/v2/health/ready is true only while every registered model is loaded (KServe's own answer stays true after the
last model is unloaded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ncf.config import add_arguments, from_namespace, param
from ncf.errors import PORT_IN_USE, Fault, UserError, exit_on_user_error
from serving.sagemaker_routes import SAGEMAKER_COMMAND, add_sagemaker_routes, sagemaker_argv


@dataclasses.dataclass
class ServeConfig:
    model_uri: str = param("", "package directory, s3:// package or models:/<name>@<alias> (default: /mnt/models "
                               "when it holds a package, else $STORAGE_URI)")
    tracking_uri: str = param("", "MLflow tracking URI for models:/ sources (default: $MLFLOW_TRACKING_URI)")
    model_name: str = param("ncf", "name on the endpoint paths (/v1/models/<name>:predict)")
    host: str = param("127.0.0.1", "interface to bind (0.0.0.0 inside a pod)")
    http_port: int = param(8080, "REST port")
    grpc_port: int = param(8081, "gRPC port")
    enable_grpc: bool = param(True, "serve the V2 gRPC protocol too")
    max_k: int = param(100, "largest k a request may ask for")
    max_instances: int = param(64, "most users per request")
    max_id_length: int = param(256, "longest user / item id a request may carry (400 beyond)")
    max_body_bytes: int = param(1 << 20, "largest request body in bytes (413 beyond; gRPC messages too)")
    torch_threads: int = param(1, "intra-op threads for scoring (1 is fastest for one small forward per request)")
    access_log: bool = param(False, "log every request (costs throughput)")
    sagemaker_routes: bool = param(False, "also serve SageMaker's GET /ping and POST /invocations (V1 body)")
    retrieval: str = param("", "whole-catalogue ranking: auto (two-stage from --retrieval-threshold items), exact, "
                               "ann (two-stage); default: the package's config.json, else $NCF_RETRIEVAL, else auto")
    retrieval_threshold: int = param(0, "auto: serve two-stage from this many items (0: the package's / 100000)")
    retrieval_candidates: int = param(0, "two-stage: items retrieved per user and re-ranked (0: the package's / 500)")
    retrieval_nprobe: int = param(0, "two-stage: IVF lists searched per user (0: the package's / 64)")
    retrieval_nlist: int = param(0, "two-stage: IVF lists of the index (0: the package's / 2 sqrt(items)); a "
                                    "saved index with another count is rebuilt at load")


def resolve_source(model_uri: str) -> str:
    if model_uri:
        return model_uri
    if (Path("/mnt/models") / "config.json").exists():
        return "/mnt/models"
    if os.environ.get("STORAGE_URI"):
        return os.environ["STORAGE_URI"]
    raise UserError("model_uri: not given, /mnt/models holds no package and STORAGE_URI is not set")


@contextlib.contextmanager
def _kserve_argv() -> Iterator[None]:
    """kserve.model_server parses sys.argv when imported; keep our flags away from its parser."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def build_server(config: ServeConfig):
    """The loaded model and a ModelServer bound to `config.host` (both ready to `start`)."""
    import torch

    with _kserve_argv():
        from kserve import ModelServer
        from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
        from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
        from kserve.protocol.grpc.server import GRPCServer
        from kserve.protocol.grpc.servicer import InferenceServicer
        from kserve.protocol.rest.server import RESTServer

    from serving.predictor import NCFModel, NCFRepository

    if min(config.max_k, config.max_instances, config.max_id_length, config.max_body_bytes) < 1:
        raise UserError("max_k, max_instances, max_id_length and max_body_bytes must be >= 1")
    torch.set_num_threads(config.torch_threads)
    source = resolve_source(config.model_uri)
    tracking_uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")

    def new_model(name: str) -> NCFModel:
        if name != config.model_name:
            raise UserError(f"unknown model {name!r}; this server serves {config.model_name!r}")
        return NCFModel(name, source, tracking_uri=tracking_uri, max_k=config.max_k,
                        max_instances=config.max_instances, max_id_length=config.max_id_length,
                        retrieval={"mode": config.retrieval, "threshold": config.retrieval_threshold,
                                   "candidates": config.retrieval_candidates, "nprobe": config.retrieval_nprobe,
                                   "nlist": config.retrieval_nlist})

    model = new_model(config.model_name)
    model.load()
    _faiss_threads(config.torch_threads)

    class HostGRPCServer(GRPCServer):
        """KServe's gRPC server, bound to `config.host` instead of every interface."""

        async def start(self, max_workers):
            from concurrent import futures

            from grpc import aio

            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
                options=[("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                         ("grpc.max_receive_message_length", config.max_body_bytes)])
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
            self._server.add_insecure_port(f"{config.host}:{self._port}")
            await self._server.start()
            await self._server.wait_for_termination()

    class HostModelServer(ModelServer):
        """ModelServer.start for one worker, with REST and gRPC bound to `config.host`."""

        def start(self, models) -> None:
            from kserve.model_server import args as kserve_args

            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = RESTServer(
                FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
                workers=1, grace_period=self.grace_period, event_loop=self.event_loop,
                timeout_keep_alive=self.timeout_keep_alive)
            self._rest_server.config.host = config.host
            self.servers.append(self._serve_rest())
            if self.enable_grpc:
                self._grpc_server = HostGRPCServer(self.grpc_port, self.dataplane, self.model_repository_extension,
                                                   kwargs=vars(kserve_args), grace_period=self.grace_period)
                self.servers.append(self._grpc_server.start(self.max_threads))
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

        async def _serve_rest(self) -> None:
            """uvicorn handles SIGTERM itself; once it has drained, stop gRPC too so the process exits."""
            await self._rest_server.start()
            if self._grpc_server is not None:
                await self._grpc_server.stop()

    _bad_requests_are_400()
    _guard_requests(config.max_body_bytes)
    repository = NCFRepository(new_model)
    server = HostModelServer(http_port=config.http_port, grpc_port=config.grpc_port, workers=1,
                             enable_grpc=config.enable_grpc, registered_models=repository,
                             enable_latency_logging=False, grace_period=5)
    server.dataplane.ready = repository.all_ready  # REST /v2/health/ready and gRPC ServerReady
    server.dataplane.model_metadata = repository.metadata_with_version(server.dataplane.model_metadata)
    if config.sagemaker_routes:
        add_sagemaker_routes(server.dataplane, config.model_name)
    quiet = logging.WARNING
    logging.getLogger("kserve.trace").setLevel(quiet)  # a timing line per request otherwise
    if not config.access_log:
        logging.getLogger("uvicorn.access").setLevel(quiet)
    return model, server


def _faiss_threads(threads: int) -> None:
    """Retrieval searches one request's users on the scoring thread: as many OpenMP threads as torch's (the index
    was built at load with all cores)."""
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(threads)


def _bad_requests_are_400() -> None:
    """A V2 body that fails KServe's schema is a bad request like any other: 400 with the reason, not 422."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.model_server import app

    async def handler(_request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse(status_code=400, content={"error": f"invalid request body: {problems}"})

    app.add_exception_handler(RequestValidationError, handler)


_JSON_TYPES = (b"application/json", b"application/cloudevents+json")
# A body that is not JSON on purpose: V2's binary tensor extension, CloudEvents' binary mode.
_NON_JSON_MARKERS = (b"inference-header-content-length", b"ce-specversion")


class RequestGuard:
    """ASGI middleware in front of KServe's handlers, for POST / PUT / PATCH requests.

    - JSON whatever the Content-Type: KServe passes a non-JSON type's body through as raw bytes (V1: the model gets
      bytes; V2: it is taken for the binary extension), so a pasted `curl -d '{...}'` got 400. The type is set to
      application/json unless the request marks its body as binary on purpose.
    - 413 for a body over `max_bytes`, decided before the handler reads it: a declared Content-Length over the cap
      is refused at once; a chunked body is read up to the cap and replayed to the handler (the predict handlers
      read the whole body anyway).
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type not in _JSON_TYPES and not any(m in headers for m in _NON_JSON_MARKERS):
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                     + [(b"content-type", b"application/json")]}
        length = headers.get(b"content-length")
        if length is not None:  # the HTTP server delivers exactly that many bytes
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self._refuse(send, length.decode(errors="replace"))
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(send, f"more than {size}")
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, send, size: str) -> None:
        import json

        body = json.dumps({"error": f"request body: {size} bytes, at most {self.max_bytes} "
                                    "(ncfctl serve --max-body-bytes)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _guard_requests(max_bytes: int) -> None:
    """Install `RequestGuard` on KServe's app once per process (later servers in the process change its cap)."""
    from kserve.model_server import app

    existing = next((m for m in app.user_middleware if m.cls is RequestGuard), None)
    if existing is None:
        app.add_middleware(RequestGuard, max_bytes=max_bytes)
    else:
        existing.kwargs["max_bytes"] = max_bytes


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Fail with a port-in-use fault naming the port before anything loads (the server would bind them later).

    `ports`: label -> port. Binds as uvicorn and gRPC do (SO_REUSEADDR), so only a live listener counts as busy.
    """
    import errno
    import socket

    for label, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise Fault(PORT_IN_USE, f"{host}:{port} ({label}) is already in use") from exc


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [SAGEMAKER_COMMAND]:  # SageMaker starts endpoint containers as `<image> serve`
        argv = sagemaker_argv(argv[1:])
    parser = argparse.ArgumentParser(prog="ncfctl serve", description=__doc__.split("\n")[0])
    add_arguments(parser, ServeConfig)
    config = from_namespace(ServeConfig, parser.parse_args(argv))
    check_ports_free(config.host, {"HTTP": config.http_port, **({"gRPC": config.grpc_port} if config.enable_grpc
                                                               else {})})
    model, server = build_server(config)
    grpc = f", gRPC {config.host}:{config.grpc_port}" if config.enable_grpc else ""
    print(f"serving {config.model_name} (version {model.version}, from {model.source}; "
          f"{model.recommender.path}) on http://{config.host}:{config.http_port}{grpc}", flush=True)
    server.start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
