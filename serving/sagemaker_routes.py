"""SageMaker's endpoint-container contract on the KServe model server: `GET /ping` and `POST /invocations`.

SageMaker starts an endpoint container as `<image> serve` and talks to it only on port 8080:
- GET  /ping         200 {"status": "ready", "model_version": ...} once the model is loaded, else 503
- POST /invocations  the V1 body of /v1/models/<name>:predict ({"instances": [...]}), answered by the same
                     KServe handler: same response, same 400 {"error": ...} for a bad request

`python -m serving.server serve [flags]` (the serving image's ENTRYPOINT plus SageMaker's `serve` argument) runs
the predictor with `sagemaker_argv`'s defaults: the model from /opt/ml/model, 0.0.0.0:8080, no gRPC (SageMaker
routes nothing else to the container), these routes on. Everything KServe serves stays as it is.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at runtime.
import os

SAGEMAKER_COMMAND = "serve"
SAGEMAKER_MODEL_DIR = "/opt/ml/model"
SAGEMAKER_PORT = 8080


def sagemaker_argv(argv: list[str]) -> list[str]:
    """serving.server flags for SageMaker's `serve`; flags given after `serve` win (argparse keeps the last)."""
    # The SageMaker pipeline passes the registered model's name as $MODEL_NAME (the KServe paths use it).
    name = [f"--model-name={os.environ['MODEL_NAME']}"] if os.environ.get("MODEL_NAME") else []
    return ["--sagemaker-routes=true", f"--model-uri={SAGEMAKER_MODEL_DIR}", "--host=0.0.0.0",
            f"--http-port={SAGEMAKER_PORT}", "--enable-grpc=false", *name, *argv]


def add_sagemaker_routes(dataplane, model_name: str) -> None:
    """Add /ping and /invocations to KServe's FastAPI app (call after kserve is imported, before the server starts)."""
    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse
    from kserve.model_server import app
    from kserve.protocol.rest.v1_endpoints import V1Endpoints

    v1 = V1Endpoints(dataplane)
    router = APIRouter(tags=["SageMaker"])

    async def ping() -> JSONResponse:
        model = dataplane.model_registry.get_model(model_name)
        if model is None or not await dataplane.model_ready(model_name):
            return JSONResponse(status_code=503, content={"status": "loading", "model": model_name})
        return JSONResponse(content={"status": "ready", "model": model_name,
                                     "model_version": getattr(model, "version", None)})

    async def invocations(request: Request):
        return await v1.predict(model_name, request)

    router.add_api_route("/ping", ping, methods=["GET"], response_model=None)
    router.add_api_route("/invocations", invocations, methods=["POST"], response_model=None)
    app.include_router(router)
