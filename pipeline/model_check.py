"""The model's checks before anything heavy starts: that it loads as a checkpoint hired has an
adapter for, and that ``--choices`` can be spelled by its tokenizer. Each reads as little as it can
(a local ``config.json`` as JSON, one quick question to the hub), so a wrong command exits 2 in a
second instead of after Ray and the actors start."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import InputError
from .settings import JobSettings

MODEL_TYPES = ("llava_next", "llava")  # what hired's adapters handle

# A hub id is "name" or "owner/name": letters, digits, '-', '_', '.', no '--' or '..' (the hub's own rules).
_HUB_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def check_model(model: str) -> None:
    """Refuse a model that cannot load, before Ray and its actors start: a local folder that is
    missing or holds no ``config.json``, a malformed hub id, a config that cannot be read (not
    on the hub, no network and not cached), or a model type hired has no adapter for."""
    path = Path(model).expanduser()
    looks_local = path.exists() or model.startswith(("/", "./", "../", "~")) or model.count("/") > 1
    if looks_local:
        if not path.exists():
            raise InputError(f"--model {model}: no such folder")
        if not path.is_dir():
            raise InputError(f"--model {model}: not a folder (give the checkpoint's folder, which holds config.json)")
        if not (path / "config.json").is_file():
            raise InputError(f"--model {model}: the folder holds no config.json, so it is not a Hugging Face checkpoint")
    elif not _HUB_ID.match(model):
        raise InputError(f"--model {model!r}: neither an existing local folder nor a hub id such as owner/name")
    try:
        model_type = _local_model_type(path / "config.json") if looks_local else _hub_model_type(model)
        if model_type is None:  # a config that leaves its type to transformers to work out
            from transformers import AutoConfig  # imports torch: seconds, so only when needed

            model_type = AutoConfig.from_pretrained(str(path) if looks_local else model).model_type
    except InputError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(f"--model {model}: cannot read its config: {type(e).__name__}: {first}") from None
    if model_type not in MODEL_TYPES:
        raise InputError(f"--model {model}: a {model_type!r} model; hired runs LLaVA-Next and LLaVA-1.5 "
                         f"({', '.join(MODEL_TYPES)})")


def check_choices(settings: JobSettings) -> None:
    """Refuse ``--choices`` the model's tokenizer cannot spell within ``--max-new-tokens``, before
    Ray starts (loads the tokenizer only)."""
    if not settings.choices:
        return
    from transformers import AutoTokenizer

    from hired.choices import ChoiceError, build_trie

    try:
        build_trie(AutoTokenizer.from_pretrained(settings.model), settings.choices, settings.max_new_tokens)
    except ChoiceError as error:
        raise InputError(f"--choices {','.join(settings.choices)}: {error}") from None


def _local_model_type(config_json: Path) -> str | None:
    """The ``model_type`` a checkpoint's ``config.json`` declares (what AutoConfig dispatches on),
    read as JSON: the driver checks a model without importing transformers and torch."""
    config = json.loads(Path(config_json).read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError("config.json does not hold a JSON object")
    return config.get("model_type")


def _hub_model_type(model_id: str) -> str | None:
    """A hub checkpoint's ``model_type``: from the local cache, else from the hub after one quick
    question whether it is there (the download client would retry an unreachable hub for minutes)."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    cached = huggingface_hub.try_to_load_from_cache(model_id, "config.json")
    if isinstance(cached, str):
        return _local_model_type(Path(cached))
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise InputError(f"--model {model_id}: not a local folder, and as a hub id not in the local cache "
                         "(HF_HUB_OFFLINE is set): download it first or give a local folder")
    try:
        huggingface_hub.HfApi().model_info(model_id, timeout=10)
    except RepositoryNotFoundError:
        raise InputError(f"--model {model_id}: no such model on the hub (a private one needs `hf auth login`)") from None
    except Exception as e:
        raise InputError(f"--model {model_id}: not a local folder, and as a hub id neither cached nor reachable "
                         f"({type(e).__name__}: {e}): download it first or give a local folder") from None
    return _local_model_type(Path(huggingface_hub.hf_hub_download(model_id, "config.json")))
