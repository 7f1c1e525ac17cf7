"""Deploy serve_app/config.yaml on a private local cluster, HTTP on loopback: what tests and bench share.

It takes the path ``serve run serve_app/config.yaml`` takes (the controller builds the application from the
import path and applies each ``deployments:`` entry), so a key Serve ignores fails the tests, not production.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

import ray
import yaml
from ray import serve
from ray.serve.context import _get_global_client  # the client `serve run CONFIG` uses; ray is pinned (2.60)
from ray.serve.schema import ApplicationStatus, ServeDeploySchema

CONFIG = Path(__file__).with_name("config.yaml")


def read_config(path: Path = CONFIG, **args) -> dict:
    """The config file as a dict, with ``args`` overriding the first application's ``args``."""
    config = yaml.safe_load(Path(path).read_text())
    config["applications"][0]["args"].update(args)
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(num_cpus: int = 2, object_store_bytes: int = 300 << 20) -> str:
    """A fresh private cluster (``address="local"`` never joins another one) and Serve on 127.0.0.1."""
    ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_bytes,
             include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def deploy(config: dict, wait_s: float = 120, wait: bool = True) -> None:
    """Apply ``config`` and (if ``wait``) wait until every application runs; raise with Serve's message if
    one fails."""
    schema = ServeDeploySchema.model_validate(config)
    _get_global_client().deploy_apps(schema)
    if not wait:
        return
    names = [app.name for app in schema.applications]
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        apps = serve.status().applications
        states = {name: apps[name].status if name in apps else None for name in names}
        failed = [f"{n}: {apps[n].message} " + "; ".join(f"{d}: {status.message}" for d, status in
                                                         apps[n].deployments.items() if status.message)
                  for n, s in states.items() if s == ApplicationStatus.DEPLOY_FAILED]
        if failed:
            raise RuntimeError(f"deploy failed: {failed}")
        if all(s == ApplicationStatus.RUNNING for s in states.values()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"applications {names} not running after {wait_s} s: {serve.status().applications}")


def deployment_config(app: str, deployment: str) -> dict:
    """The deployment config the controller applied (what Serve actually uses, defaults filled in)."""
    return _get_global_client().get_serve_details()["applications"][app]["deployments"][deployment][
        "deployment_config"]


def running_replicas(app: str, deployment: str) -> int:
    states = serve.status().applications[app].deployments[deployment].replica_states
    return states.get("RUNNING", 0)


def stop() -> None:
    serve.shutdown()
    ray.shutdown()
