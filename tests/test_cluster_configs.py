"""Every YAML under cluster/ and serve_app/ loads and is checked against the schema that will read it.

KubeRay manifests against the ray.io/v1 fields (KubeRay's apis/ray/v1/*_types.go) and the Kubernetes pod
fields we use; Serve configs (serve_app/config.yaml, a RayService's serveConfigV2) against Ray Serve's own
pydantic schema, key by key, since Serve ignores unknown keys; `ray up` against Ray's autoscaler JSON schema
and EC2's RunInstances shape; training configs through jobs.train.load_config. Then what ties them together:
one Ray version everywhere, import paths and entrypoints that exist, a training config that fits its
cluster, placeholders instead of buckets, no secrets. A typo'd key anywhere fails with its path.
"""
import importlib
import itertools
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from pydantic import BaseModel
from ray import serve
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from jobs.train import TrainConfig, load_config
from serve_app.schemas import ServeArgs

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
YAML_FILES = sorted(p for root in (CLUSTER, REPO / "serve_app") for p in root.rglob("*.y*ml"))
RAY_PIN = re.search(r'"ray\[[^\]]*\]==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
IMAGE_TAG = f"{RAY_PIN}-py311-gpu"          # rayproject/ray's tag for Python 3.11 + CUDA
IMAGE = f"REGISTRY/pudnet:{IMAGE_TAG}"      # ours, built by cluster/Dockerfile on that tag
PLACEHOLDERS = ("REGISTRY", "BUCKET", "CHECKPOINT", "AMI_ID", "ACCOUNT_ID")


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


# --- a small schema language for the Kubernetes side: obj(required..., field=schema) ---------------------
ANY, STR, STR_MAP = "any", "str", "str->str"   # leaves; a frozenset leaf is an enum; [schema] is a list of it


def obj(*required, **fields) -> dict:
    return {"required": set(required), "fields": fields}


def check(value, schema, where: str) -> list[str]:
    """Problems of ``value`` against ``schema``, each naming its path (empty when it conforms)."""
    if schema == ANY:
        return []
    if schema == STR:
        return [] if isinstance(value, str) else [f"{where}: {value!r} must be a string"]
    if schema == STR_MAP:
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        return [] if ok else [f"{where}: every value must be a quoted string (a map[string]string), got {value!r}"]
    if isinstance(schema, frozenset):
        return [] if value in schema else [f"{where}: {value!r} is not one of {sorted(schema)}"]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, item in enumerate(value) for p in check(item, schema[0], f"{where}[{i}]")]
    if not isinstance(value, dict):
        return [f"{where}: expected a mapping"]
    problems = [f"{where}.{k}: unknown field (known: {sorted(schema['fields'])})" for k in value
                if k not in schema["fields"]]
    problems += [f"{where}.{k}: required field missing" for k in sorted(schema["required"] - set(value))]
    return problems + [p for k, v in value.items() if k in schema["fields"]
                       for p in check(v, schema["fields"][k], f"{where}.{k}")]


# Kubernetes core/v1: the pod fields these manifests may use. A real field not listed here fails too: add it
# after checking https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/.
CONTAINER = obj("name", "image", name=STR, image=STR, imagePullPolicy=frozenset({"Always", "IfNotPresent", "Never"}),
                command=[STR], args=[STR], env=[obj("name", name=STR, value=STR, valueFrom=ANY)],
                ports=[obj("containerPort", containerPort=ANY, name=STR, protocol=STR)],
                resources=obj(requests=ANY, limits=ANY), lifecycle=ANY, readinessProbe=ANY, livenessProbe=ANY,
                volumeMounts=[obj("name", "mountPath", name=STR, mountPath=STR, readOnly=ANY, subPath=STR)],
                securityContext=ANY)
VOLUME = obj("name", name=STR, emptyDir=obj(medium=STR, sizeLimit=ANY), configMap=ANY, secret=ANY, csi=ANY,
             persistentVolumeClaim=obj("claimName", claimName=STR, readOnly=ANY))
POD_TEMPLATE = obj("spec", metadata=obj(labels=STR_MAP, annotations=STR_MAP), spec=obj(
    "containers", containers=[CONTAINER], volumes=[VOLUME], nodeSelector=STR_MAP, serviceAccountName=STR,
    tolerations=[obj(key=STR, operator=frozenset({"Exists", "Equal"}), value=STR, effect=STR,
                     tolerationSeconds=ANY)],
    restartPolicy=STR, terminationGracePeriodSeconds=ANY, affinity=ANY, priorityClassName=STR))
# KubeRay ray.io/v1 (ray-operator/apis/ray/v1/{raycluster,rayjob,rayservice}_types.go, KubeRay v1.6-v1.7).
HEAD_GROUP = obj("template", rayStartParams=STR_MAP, template=POD_TEMPLATE, serviceType=STR, headService=ANY,
                 enableIngress=ANY, ingressOptions=ANY, resources=STR_MAP, labels=STR_MAP)
WORKER_GROUP = obj("groupName", "template", "minReplicas", "maxReplicas", groupName=STR, replicas=ANY,
                   minReplicas=ANY, maxReplicas=ANY, idleTimeoutSeconds=ANY, priority=ANY, resources=STR_MAP,
                   labels=STR_MAP, rayStartParams=STR_MAP, template=POD_TEMPLATE, scaleStrategy=ANY,
                   numOfHosts=ANY, suspend=ANY)
CLUSTER_SPEC = obj(
    "headGroupSpec", "rayVersion", rayVersion=STR, headGroupSpec=HEAD_GROUP, workerGroupSpecs=[WORKER_GROUP],
    enableInTreeAutoscaling=ANY, authOptions=obj(mode=frozenset({"token", "disabled"}), secretName=STR,
                                                 enableK8sTokenAuth=ANY),
    autoscalerOptions=obj(resources=ANY, image=STR, imagePullPolicy=STR, securityContext=ANY, env=ANY,
                          envFrom=ANY, volumeMounts=ANY, command=[STR], args=[STR], idleTimeoutSeconds=ANY,
                          upscalingMode=frozenset({"Default", "Aggressive", "Conservative"}),
                          version=frozenset({"v1", "v2"})),
    upgradeStrategy=ANY, suspend=ANY, managedBy=STR, headServiceAnnotations=STR_MAP,
    gcsFaultToleranceOptions=ANY, historyServerOptions=ANY, networkPolicy=ANY, tlsOptions=ANY)
SPECS = {
    "RayCluster": CLUSTER_SPEC,
    "RayJob": obj("entrypoint", entrypoint=STR, runtimeEnvYAML=STR, clusterSelector=STR_MAP,
                  rayClusterSpec=CLUSTER_SPEC, submitterPodTemplate=POD_TEMPLATE, submitterConfig=obj(
                      backoffLimit=ANY), submissionMode=frozenset({"K8sJobMode", "HTTPMode", "InteractiveMode",
                                                                   "SidecarMode"}),
                  activeDeadlineSeconds=ANY, backoffLimit=ANY, metadata=STR_MAP, managedBy=STR,
                  deletionStrategy=ANY, jobId=STR, entrypointResources=STR, entrypointNumCpus=ANY,
                  entrypointNumGpus=ANY, ttlSecondsAfterFinished=ANY, shutdownAfterJobFinishes=ANY, suspend=ANY),
    "RayService": obj("rayClusterConfig", "serveConfigV2", serveConfigV2=STR, rayClusterConfig=CLUSTER_SPEC,
                      upgradeStrategy=obj(type=frozenset({"NewCluster", "NewClusterWithIncrementalUpgrade",
                                                         "None"}), clusterUpgradeOptions=ANY),
                      serveService=ANY, rayClusterDeletionDelaySeconds=ANY, excludeHeadPodFromServeSvc=ANY,
                      serviceUnhealthySecondThreshold=ANY, deploymentUnhealthySecondThreshold=ANY),
}


def kuberay_problems(doc: dict) -> list[str]:
    kind = doc.get("kind")
    if doc.get("apiVersion") != "ray.io/v1" or kind not in SPECS:
        return [f"apiVersion/kind {doc.get('apiVersion')}/{kind}: expected ray.io/v1 and one of {sorted(SPECS)}"]
    top = obj("apiVersion", "kind", "metadata", "spec", apiVersion=STR, kind=STR, spec=SPECS[kind],
              metadata=obj("name", name=STR, namespace=STR, labels=STR_MAP, annotations=STR_MAP))
    return check(doc, top, kind)


# --- Serve: Ray's pydantic schema, walked key by key ----------------------------------------------------
def _models(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models(arg)]


def unknown_keys(data: dict, model: type[BaseModel], where: str) -> list[str]:
    """Keys of ``data`` (and of nested models' dicts) that ``model`` does not define."""
    fields = {alias: f for name, f in model.model_fields.items() for alias in {name, f.alias} if alias}
    problems = []
    for key, value in data.items():
        if key not in fields:
            problems.append(f"{where}.{key}: not a {model.__name__} field (known: {sorted(fields)})")
            continue
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for sub in _models(fields[key].annotation):
            problems += [p for i, item in items if isinstance(item, dict)
                         for p in unknown_keys(item, sub, f"{where}.{key}" + ("" if i is None else f"[{i}]"))]
    return problems


def serve_problems(config: dict) -> list[str]:
    problems = unknown_keys(config, ServeDeploySchema, "serve")
    schema = ServeDeploySchema.model_validate(config)        # types and values
    for app in schema.applications:
        module, attr = app.import_path.split(":")
        builder = getattr(importlib.import_module(module), attr)
        assert callable(builder), app.import_path
        ServeArgs.model_validate(app.args)                    # extra="forbid": a typo'd arg raises
        defined = {d.name for d in vars(importlib.import_module(module)).values() if isinstance(d, serve.Deployment)}
        problems += [f"{app.name}.deployments: {d.name!r} is not a deployment of {module} ({sorted(defined)})"
                     for d in app.deployments if d.name not in defined]
        for d in app.deployments:
            if isinstance(d.autoscaling_config, dict):  # unset is a DEFAULT sentinel (truthy), e.g. num_replicas
                AutoscalingConfig.model_validate(d.autoscaling_config)   # e.g. min_replicas <= max_replicas
    return problems


# --- what the manifests mean ----------------------------------------------------------------------------
def quantity(value) -> float:
    """A Kubernetes CPU/GPU quantity ("44", 4, "500m") as a number."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def groups(spec: dict) -> dict[str, dict]:
    """{group name: max pods, and CPUs and GPUs per pod}, the head included."""
    def per_pod(template):
        (container,) = template["spec"]["containers"]
        limits = container["resources"]["limits"]
        return {"cpus": quantity(limits["cpu"]), "gpus": quantity(limits.get("nvidia.com/gpu", 0)),
                "image": container["image"], "requests": container["resources"]["requests"], "limits": limits}
    out = {"head": {"max": 1, **per_pod(spec["headGroupSpec"]["template"])}}
    for g in spec.get("workerGroupSpecs", []):
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], g["groupName"]
        out[g["groupName"]] = {"max": g["maxReplicas"], **per_pod(g["template"])}
    return out


def cluster_problems(spec: dict, where: str) -> list[str]:
    found, problems = groups(spec), []
    if spec["rayVersion"] != RAY_PIN:
        problems.append(f"{where}: rayVersion {spec['rayVersion']} != pyproject's ray pin {RAY_PIN}")
    if spec.get("authOptions", {}).get("mode") != "token":
        problems.append(f"{where}: token authentication is off")
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append(f"{where}: the Ray autoscaler is off")
    if spec["headGroupSpec"]["rayStartParams"].get("num-cpus") != "0":
        problems.append(f"{where}.head: runs tasks (set rayStartParams num-cpus: '0')")
    for name, group in found.items():
        if group["image"] != IMAGE:
            problems.append(f"{where}.{name}: image {group['image']} != {IMAGE}")
        if group["requests"] != group["limits"]:
            problems.append(f"{where}.{name}: requests != limits (Ray sizes a pod by its limits)")
    for g in spec.get("workerGroupSpecs", []):
        tolerations = g["template"]["spec"].get("tolerations", [])
        if found[g["groupName"]]["gpus"] and not any(t.get("key") == "nvidia.com/gpu" for t in tolerations):
            problems.append(f"{where}.{g['groupName']}: GPU pods must tolerate the nvidia.com/gpu taint")
    return problems


def fit_problems(cfg: TrainConfig, gpu_pods: int, gpus: float, cpus: float, other_cpus: float) -> list[str]:
    """Does the training config fit ``gpu_pods`` pods of ``gpus`` GPUs and ``cpus`` CPUs, plus ``other_cpus``?"""
    problems = [] if cfg.use_gpu else ["the config trains on CPUs"]
    if cfg.num_workers > gpu_pods * gpus:
        problems.append(f"{cfg.num_workers} GPU workers > {gpu_pods} pods x {gpus} GPUs")
    if min(cfg.num_workers, gpus) * cfg.cpus_per_worker > cpus:
        problems.append(f"{min(cfg.num_workers, gpus)} workers x {cfg.cpus_per_worker} CPUs > {cpus} CPUs a pod")
    spare = gpu_pods * cpus - cfg.num_workers * cfg.cpus_per_worker + other_cpus
    if cfg.stream_actors * cfg.stream_cpus > spare:
        problems.append(f"the stream needs {cfg.stream_actors * cfg.stream_cpus} CPUs, {spare} are left")
    return problems


def train_command(entrypoint: str) -> TrainConfig:
    """The TrainConfig a `python jobs/train.py [--config F] [--smoke-test] [k=v ...]` entrypoint runs with."""
    python, script, *args = shlex.split(entrypoint)
    assert (python, script) == ("python", "jobs/train.py") and (REPO / script).is_file(), entrypoint
    config, smoke, overrides = None, False, []
    while args:
        arg = args.pop(0)
        if arg == "--config":
            config = args.pop(0)
        elif arg == "--smoke-test":
            smoke = True
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
        else:
            raise AssertionError(f"{entrypoint}: jobs/train.py takes no argument {arg!r}")
    return load_config(str(REPO / config) if config else None, smoke, overrides)


def header(path: Path) -> str:
    """The comment block a file starts with."""
    return "\n".join(itertools.takewhile(lambda line: line.startswith("#"), path.read_text().splitlines()))


def dockerfile_workdir() -> str:
    return re.search(r"^WORKDIR (\S+)$", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)


def check_ray_cluster(doc: dict, path: Path) -> list[str]:
    return cluster_problems(doc["spec"], doc["metadata"]["name"])


def check_ray_job(doc: dict, path: Path) -> list[str]:
    spec, cluster = doc["spec"], load("ray-cluster.pudnet.yaml")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    problems = [f"runtimeEnvYAML.{k}: not a runtime_env field" for k in set(runtime_env) - RuntimeEnv.known_fields]
    problems += [f"runtimeEnvYAML.env_vars.{k}: {v!r} must be a string" for k, v in
                 runtime_env.get("env_vars", {}).items() if not isinstance(v, str)]
    if spec.get("clusterSelector") != {"ray.io/cluster": cluster["metadata"]["name"]}:
        problems.append(f"clusterSelector {spec.get('clusterSelector')} does not select the RayCluster")
    if runtime_env.get("working_dir") != dockerfile_workdir():
        problems.append(f"working_dir {runtime_env.get('working_dir')} is not the image's checkout")
    found = groups(cluster["spec"])
    gpu = found["gpu"]
    return problems + fit_problems(train_command(spec["entrypoint"]), gpu["max"], gpu["gpus"], gpu["cpus"],
                                   found["cpu"]["max"] * found["cpu"]["cpus"])


def check_ray_service(doc: dict, path: Path) -> list[str]:
    spec = doc["spec"]
    problems = cluster_problems(spec["rayClusterConfig"], f"{doc['metadata']['name']}.rayClusterConfig")
    serve_config = yaml.safe_load(spec["serveConfigV2"])
    problems += serve_problems(serve_config)
    (app,) = serve_config["applications"]
    args, (deployment,) = ServeArgs.model_validate(app["args"]), app["deployments"]
    gpu = groups(spec["rayClusterConfig"])["gpu"]
    if args.num_gpus > gpu["gpus"] or args.num_cpus > gpu["cpus"]:
        problems.append(f"a replica ({args.num_gpus} GPUs, {args.num_cpus} CPUs) does not fit a GPU pod")
    if deployment["autoscaling_config"]["max_replicas"] * args.num_gpus > gpu["max"] * gpu["gpus"]:
        problems.append(f"max_replicas do not fit the {gpu['max']} GPU pods")
    trained = train_command(load("ray-job.imagenet-resnet18.yaml")["spec"]["entrypoint"])
    run = {trained.model.arch: f"{trained.storage_path}/{trained.name}/CHECKPOINT"}
    if args.checkpoints != run:
        problems.append(f"checkpoints {args.checkpoints} are not the RayJob's run {run}")
    return problems


def check_launcher(doc: dict, path: Path) -> list[str]:
    validate_config(prepare_config(doc))       # what `ray up` runs: Ray's JSON schema, no unknown keys
    types, docker, problems = doc["available_node_types"], doc["docker"], []
    if docker["image"] != IMAGE:
        problems.append(f"docker.image {docker['image']} != {IMAGE}")
    if "--env RAY_AUTH_MODE=token" not in docker["run_options"]:
        problems.append("nodes must run with RAY_AUTH_MODE=token")
    if doc["file_mounts"].get("~/.ray/auth_token") != "~/.ray/auth_token":
        problems.append("the token file ~/.ray/auth_token is not mounted on the nodes")
    if types[doc["head_node_type"]]["resources"].get("CPU") != 0:
        problems.append("the head runs tasks (resources: {CPU: 0})")
    gpu, cpu = types["gpu"], types["cpu"]
    cfg = train_command(load("ray-job.imagenet-resnet18.yaml")["spec"]["entrypoint"])
    return problems + fit_problems(cfg, gpu["max_workers"], gpu["resources"]["GPU"], gpu["resources"]["CPU"],
                                   cpu["max_workers"] * cpu["resources"]["CPU"])


def check_train_config(doc: dict, path: Path) -> list[str]:
    load_config(str(path))                     # unknown keys and bad values raise, naming them
    return [f"{path.name}: the header must state {w}" for w in ("Hardware:", "Time:") if w not in header(path)]


def check_serve_config(doc: dict, path: Path) -> list[str]:
    return serve_problems(doc)


def validator(doc: dict, path: Path):
    if doc.get("apiVersion", "").startswith("ray.io/"):
        return {"RayCluster": check_ray_cluster, "RayJob": check_ray_job, "RayService": check_ray_service}.get(
            doc.get("kind"))
    if path.parent == CLUSTER / "configs":
        return check_train_config
    if "applications" in doc:
        return check_serve_config
    if "provider" in doc and "available_node_types" in doc:
        return check_launcher
    return None


def problems_of(path: Path) -> list[str]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    problems = []
    for doc in docs:
        check_doc = validator(doc, path)
        assert check_doc is not None, f"{path}: no validator knows this document; add one to {__file__}"
        shape = kuberay_problems(doc) if doc.get("apiVersion", "").startswith("ray.io/") else []
        problems += shape or check_doc(doc, path)     # the meaning is checked on a well-formed document only
    return problems


@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(REPO)) for p in YAML_FILES])
def test_yaml_file_is_valid(path):
    assert problems_of(path) == []


def test_every_kind_of_file_is_present():
    names = {p.name for p in CLUSTER.iterdir()}
    assert {"ray-cluster.pudnet.yaml", "ray-job.imagenet-resnet18.yaml", "ray-service.pudnet.yaml",
            "ray-up.aws-gpu.yaml", "Dockerfile", "README.md"} <= names
    assert {"embedded_default.yaml", "embedded_resnet18.yaml", "single_gpu.yaml", "imagenet_resnet18.yaml"} <= {
        p.name for p in (CLUSTER / "configs").iterdir()}


def test_manifests_are_named_headed_and_documented():
    readme = (CLUSTER / "README.md").read_text()
    for path in sorted(CLUSTER.glob("ray-*.yaml")):
        doc = yaml.safe_load(path.read_text())
        kind = doc["kind"].removeprefix("Ray").lower() if "kind" in doc else "up"
        assert re.fullmatch(rf"ray-{kind}\.[a-z0-9-]+\.yaml", path.name), (path.name, kind)
        command = f"ray up cluster/{path.name}" if kind == "up" else f"kubectl apply -f cluster/{path.name}"
        for needed in (command, "Docs: https://docs.ray.io/", "Needs:"):
            assert needed in header(path), f"{path.name}: the header comment must give {needed!r}"
        assert path.name in readme, f"cluster/README.md never mentions {path.name}"


def test_one_ray_version_everywhere():
    assert ray.__version__ == RAY_PIN, "the installed ray is not pyproject.toml's pin"
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == [f"rayproject/ray:{IMAGE_TAG}"]
    for path in CLUSTER.glob("ray-*.yaml"):
        for image in re.findall(r"image: (\S+)", path.read_text()):
            assert image == IMAGE, (path.name, image)
        assert set(re.findall(r"rayVersion: \"?([\d.]+)", path.read_text())) <= {RAY_PIN}, path.name


def test_dockerfile_installs_this_package_from_files_that_exist():
    text = (CLUSTER / "Dockerfile").read_text()
    assert "docker build -f cluster/Dockerfile" in header(CLUSTER / "Dockerfile")
    for sources in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for source in sources.split():
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
    copied = {s for sources in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M) for s in sources.split()}
    assert {"pyproject.toml", "pudnet", "jobs", "serve_app", "cluster"} <= copied
    assert re.search(r"^RUN pip install --no-cache-dir \. ", text, re.M), "the image must pip install this package"
    assert dockerfile_workdir() == "/home/ray/pudnet"


def test_launcher_node_configs_are_ec2_launch_parameters():
    """`ray up` passes node_config to EC2's RunInstances as it is: a typo there would fail only at launch."""
    boto = pytest.importorskip("botocore.session", reason="botocore (with boto3, which `ray up` on AWS needs)")
    from botocore.validate import ParamValidator
    shape = boto.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, node_type in load("ray-up.aws-gpu.yaml")["available_node_types"].items():
        report = ParamValidator().validate({**node_type["node_config"], "MinCount": 1, "MaxCount": 1}, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"
    typo = ParamValidator().validate({"InstanceTyp": "g6e.12xlarge", "MinCount": 1, "MaxCount": 1}, shape)
    assert "InstanceTyp" in typo.generate_report()


def literal_secrets(node) -> list[str]:
    """Names of env-style entries ({name: ...TOKEN..., value: ...}) that carry a literal value."""
    if isinstance(node, list):
        return [s for item in node for s in literal_secrets(item)]
    if not isinstance(node, dict):
        return []
    own = [node["name"]] if "value" in node and re.search(r"TOKEN|SECRET|PASSWORD|KEY", str(node.get("name"))) else []
    return own + [s for value in node.values() for s in literal_secrets(value)]


def test_buckets_are_placeholders_and_no_secrets_are_committed():
    for path in sorted(p for p in CLUSTER.rglob("*") if p.is_file()):
        text = path.read_text()
        assert set(re.findall(r"s3://([$\w.-]+)", text)) <= {"BUCKET", "$BUCKET"}, f"{path}: a real bucket name"
        credential = re.search(r"AKIA[0-9A-Z]{16}|kind: Secret|auth_token: *[\"']?[\w+/=-]{16}", text)
        assert credential is None, f"{path}: a credential ({credential.group(0)[:12]}...)"
        if path.suffix == ".yaml":
            assert literal_secrets(list(yaml.safe_load_all(text))) == [], f"{path}: use valueFrom for secrets"
    readme = (CLUSTER / "README.md").read_text()
    used = {p for path in CLUSTER.glob("ray-*.yaml") for p in PLACEHOLDERS if p in path.read_text()}
    assert used == set(PLACEHOLDERS) and all(p in readme for p in used)


@pytest.mark.parametrize("file, path, typo", [
    ("ray-cluster.pudnet.yaml", ["spec", "workerGroupSpecs", 0, "minReplicas"], "minReplica"),
    ("ray-cluster.pudnet.yaml", ["spec", "headGroupSpec", "template", "spec", "containers", 0, "imagePullPolicy"],
     "imagePullpolicy"),
    ("ray-job.imagenet-resnet18.yaml", ["spec", "entrypoint"], "entryPoint"),
    ("ray-up.aws-gpu.yaml", ["available_node_types", "gpu", "max_workers"], "max_worker"),
])
def test_a_typo_in_a_manifest_fails_naming_the_key(file, path, typo, tmp_path):
    doc = load(file)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[typo] = parent.pop(path[-1])
    copy = tmp_path / file
    copy.write_text(yaml.safe_dump(doc))
    with pytest.raises(Exception, match=typo):   # a problem list (AssertionError) or Ray's jsonschema error
        assert problems_of(copy) == []


def test_a_typo_in_a_serve_or_train_config_fails_naming_the_key(tmp_path):
    service = load("ray-service.pudnet.yaml")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    autoscaling = serve_config["applications"][0]["deployments"][0]["autoscaling_config"]
    autoscaling["target_num_ongoing_requests_per_replica"] = autoscaling.pop("target_ongoing_requests")
    assert any("target_num_ongoing_requests_per_replica" in p for p in serve_problems(serve_config))
    serve_config["applications"][0]["args"]["num_gpu"] = 1
    with pytest.raises(ValueError, match="num_gpu"):
        serve_problems(serve_config)
    config = (CLUSTER / "configs/imagenet_resnet18.yaml").read_text().replace("\nsteps:", "\nstep:")
    (tmp_path / "typo.yaml").write_text(config)
    with pytest.raises(ValueError, match="'step'"):
        load_config(str(tmp_path / "typo.yaml"))
