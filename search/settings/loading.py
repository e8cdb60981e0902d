"""Reading a config file: relative paths resolved against the file, and pydantic's errors turned
into one line per problem (field, bad value, what is allowed, did you mean)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Optional, get_args

from pydantic import BaseModel


def _is_uri(value: str) -> bool:
    return "://" in value


def _resolve(value: Optional[str], base: Path) -> Optional[str]:
    """A relative local path is taken relative to the config file; URIs and hub ids are kept."""
    if value is None or _is_uri(value) or os.path.isabs(value):
        return value
    return str((base / value).resolve())


def resolve_paths(raw: dict, base: Path) -> dict:
    """The raw config with its relative local paths resolved against the config file's folder ``base``."""
    raw = dict(raw)
    bm = raw.get("base_model")
    # A hub id ("roberta-base", "org/model") is kept; an existing or ./-relative folder is resolved.
    if isinstance(bm, str) and (bm.startswith((".", "/", "~")) or (base / bm).exists()):
        raw["base_model"] = _resolve(os.path.expanduser(bm), base)
    if isinstance(raw.get("store"), str):
        raw["store"] = _resolve(raw["store"], base)
    if isinstance(raw.get("ray"), dict) and isinstance(raw["ray"].get("storage_path"), str):
        raw["ray"] = {**raw["ray"], "storage_path": _resolve(raw["ray"]["storage_path"], base)}
    elif not isinstance(raw.get("ray"), dict) or "storage_path" not in raw.get("ray", {}):
        raw["ray"] = {**(raw.get("ray") or {}), "storage_path": str((base / "signmix_runs").resolve())}
    search = raw.get("search")
    if isinstance(search, dict) and isinstance(search.get("blackbox_attack"), dict) \
            and isinstance(search["blackbox_attack"].get("wordnet_folder"), str):
        attack = search["blackbox_attack"]
        raw["search"] = {**search, "blackbox_attack": {
            **attack, "wordnet_folder": _resolve(os.path.expanduser(attack["wordnet_folder"]), base)}}
    if isinstance(raw.get("domains"), dict):
        domains = {}
        for name, d in raw["domains"].items():
            if isinstance(d, dict) and isinstance(d.get("path"), str):
                d = {**d, "path": _resolve(os.path.expanduser(d["path"]), base)}
            if isinstance(d, dict) and isinstance(d.get("adapter"), dict):
                # adapter folders (path, peft) are relative to the config file; hub ids are kept
                d = {**d, "adapter": {k: (_resolve(os.path.expanduser(v), base)
                                          if k in ("path", "peft") and isinstance(v, str) else v)
                                      for k, v in d["adapter"].items()}}
            domains[name] = d
        raw["domains"] = domains
    return raw


def _allowed_keys(model: type[BaseModel], loc: tuple, domain_model: type[BaseModel]) -> list[str]:
    """The field names allowed at ``loc`` (a pydantic error location), for did-you-mean."""
    for part in loc[:-1]:
        if not isinstance(part, str) or part not in model.model_fields:
            if part == "domains" and "domains" in model.model_fields and model is not domain_model:
                model = domain_model
                continue
            if model is domain_model:
                continue
            return []
        ann = model.model_fields[part].annotation
        ann = next((a for a in (ann, *get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif part == "domains":
            model = domain_model
        else:
            return []
    return list(model.model_fields)


def describe_error(err: dict, root: type[BaseModel], domain_model: type[BaseModel]) -> str:
    """One line for one pydantic error of a config whose top model is ``root``: field, value, what is allowed."""
    loc = tuple(err["loc"])
    field = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, loc, domain_model)
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        return f"{field}: unknown key{hint}"
    if kind == "missing":
        return f"{field}: required, but missing"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and kind not in ("model_type", "dict_type") and loc:
        return f"{field}: got {err['input']!r}: {msg}"
    return f"{field}: {msg}"


def cross_field_problems(raw: dict) -> list[str]:
    """Checks that span sections. Pydantic runs them only once every field is valid; when
    other fields are invalid we run them here, so that every problem is listed at once."""
    domains, search = raw.get("domains"), raw.get("search")
    if not isinstance(domains, dict) or not isinstance(search, dict) or not isinstance(search.get("targets"), list):
        return []
    unknown = [t for t in search["targets"] if t not in domains]
    if unknown:
        return [f"search.targets: got {unknown!r}: not domains; the domains are {sorted(domains)}"]
    return []
