"""cluster.yaml is a launcher config Ray can use: what `ray up` checks first, checked here offline."""

from pathlib import Path

import yaml

CONFIG = yaml.safe_load((Path(__file__).resolve().parent.parent / "cluster.yaml").read_text())


def test_every_node_type_has_integer_resources_and_a_node_config():
    types = CONFIG["available_node_types"]
    assert CONFIG["head_node_type"] in types
    for name, node in types.items():
        assert isinstance(node["node_config"], dict) and node["node_config"]["InstanceType"], name
        assert all(isinstance(v, int) for v in node["resources"].values()), name


def test_gpu_workers_autoscale_one_gpu_each():
    workers = {n: t for n, t in CONFIG["available_node_types"].items() if n != CONFIG["head_node_type"]}
    assert workers and all(t["resources"]["GPU"] == 1 and t["min_workers"] == 0 for t in workers.values())
    assert sum(t["max_workers"] for t in workers.values()) >= CONFIG["max_workers"] > 0
    assert CONFIG["available_node_types"][CONFIG["head_node_type"]]["resources"] == {"CPU": 0}


def test_setup_installs_this_project_with_a_torch_range():
    mount = next(iter(CONFIG["file_mounts"]))
    assert CONFIG["file_mounts"][mount] == "."
    setup = " ".join(CONFIG["setup_commands"])
    assert f"-e \"{mount}[pipeline]\"" in setup and "torch>=2.4,<3" in setup
    # The nodes' Ray is one the project supports: the image's version within pyproject's ray range.
    import re
    import tomllib

    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    ray = next(Requirement(r) for r in pyproject["project"]["optional-dependencies"]["pipeline"] if r.startswith("ray"))
    image_version = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-.*", CONFIG["docker"]["image"]).group(1)
    assert ray.specifier.contains(image_version), (image_version, str(ray.specifier))
