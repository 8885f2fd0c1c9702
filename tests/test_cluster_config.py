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
    assert f"-e \"{mount}[pipeline,quant]\"" in setup and "torch>=2.4,<3" in setup
    # The nodes' Ray is one the project supports: the image's version within pyproject's ray range.
    import re
    import tomllib

    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    ray = next(Requirement(r) for r in pyproject["project"]["optional-dependencies"]["pipeline"] if r.startswith("ray"))
    image_version = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-.*", CONFIG["docker"]["image"]).group(1)
    assert ray.specifier.contains(image_version), (image_version, str(ray.specifier))


# The GPU behind each AWS instance family the workers use, as `hired plan` names it.
INSTANCE_CARDS = {"g4dn": "t4", "g5": "a10g", "g6": "l4"}


def documented_jobs() -> list[list[str]]:
    """The job command lines the header documents: what follows `python jobs/caption.py`, continuation lines joined."""
    header = "\n".join(line.removeprefix("#").strip() for line in TEXT.splitlines() if line.startswith("#"))
    joined = header.replace("\\\n", " ")
    return [line.split("python jobs/caption.py", 1)[1].split() for line in joined.splitlines()
            if "python jobs/caption.py" in line]


TEXT = (Path(__file__).resolve().parent.parent / "cluster.yaml").read_text()


def test_each_gpu_worker_type_has_a_documented_job_that_fits_its_card():
    """Every documented submit command parses, names a worker type's GPU, and fits that card as
    `hired plan` plans it; every GPU worker type has one (a T4 runs 7B only in 8 bits)."""
    from pipeline.cli import build_parser
    from pipeline.memory.cards import CARDS, card_for_accelerator, plan_on_card
    from pipeline.memory.checkpoints import planning_config

    import hired

    workers = {n: t for n, t in CONFIG["available_node_types"].items() if t["resources"].get("GPU")}
    cards = {INSTANCE_CARDS[t["node_config"]["InstanceType"].split(".")[0]]: n for n, t in workers.items()}
    targeted = set()
    jobs = documented_jobs()
    assert len(jobs) >= len(workers)
    for argv in jobs:
        args = build_parser().parse_args(["caption", *argv])
        card = card_for_accelerator(args.accelerator_type)
        assert card is not None and card.name in cards, (argv, "names no worker type's GPU")
        targeted.add(card.name)
        config, _ = planning_config(args.model)
        budgets = [hired.HiREDConfig(budget=b) for b in args.budget]
        plan = plan_on_card(config, CARDS[card.name], budgets, args.quantization)
        assert plan.fits, (argv, [row.batch for row in plan.rows])
    assert targeted == set(cards)
