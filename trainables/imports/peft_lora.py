"""Importing a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``) as an
``adapters`` LoRA, exactly: the converted adapter adds the same ΔW to every module.

Both libraries store ``lora_A`` as ``[r, in]`` and ``lora_B`` as ``[out, r]`` and add
``x·Aᵀ·Bᵀ·scaling``. PEFT scales each module by ``alpha_m / r_m`` (``alpha_m / sqrt(r_m)``
with ``use_rslora``), ``r_m`` and ``alpha_m`` per module under ``rank_pattern`` and
``alpha_pattern``; ``adapters`` has one ``r`` and one ``alpha``. The conversion takes
``r = max r_m``, pads each module's factors with zero rows/columns up to ``r``, and folds
``scaling_m / scaling`` into ``B``: the product, hence the adapter's effect, is unchanged.
Modules of the ``adapters`` layout that PEFT did not adapt (``layers_to_transform``) get
zero factors (ΔW = 0).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from spaces.errors import StoreError
from trainables.imports.files import check_folder, file_hashes, load_tensors, read_config, weights_file
from trainables.imports.store_form import ImportedAdapter, base_model_facts, check_base_model, from_model, layers_of
from trainables.model import load_encoder
from trainables.store import ADAPTER_NAME

_FACTOR = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight$")
_PROBE = "signmix-probe"
# adapters' LoRA locations: what a PEFT target must map onto
_LOCATIONS = {"selfattn_lora": "self-attention query/key/value", "intermediate_lora": "intermediate (MLP up)",
              "output_lora": "output (MLP down)"}
# PEFT fields whose non-default value changes what the saved weights mean, and why signmix refuses it
_VARIANTS = {
    "use_dora": (False, "DoRA (weight-decomposed LoRA: a magnitude vector rescales W + ΔW, not an additive ΔW)"),
    "lora_bias": (False, "a trainable bias on lora_B"),
    "use_qalora": (False, "QALoRA (quantisation-aware pooling of the input)"),
    "use_bdlora": (False, "block-diagonal LoRA"),
    "layer_replication": (None, "layer replication (the adapted model has more layers than the base)"),
    "megatron_config": (None, "Megatron parallel layers"),
    "trainable_token_indices": (None, "trainable token embeddings"),
    "alora_invocation_tokens": (None, "activated LoRA (aLoRA: the update depends on invocation tokens)"),
    "target_parameters": (None, "LoRA on raw parameters (target_parameters)"),
}
_BASE_CHANGING_INITS = {"pissa", "olora", "corda", "loftq", "eva", "lora_ga"}


def _empty(value) -> bool:
    return value in (None, False, [], {}, "")


def _check_variant(config: dict, label: str) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise StoreError(f"adapter {label!r}: peft_type is {peft_type!r}; signmix imports PEFT adapters with "
                         "peft_type 'LORA' only. Fix: train a LoRA, or leave this adapter out")
    for field, (default, what) in _VARIANTS.items():
        value = config.get(field, default)
        if not _empty(value):
            raise StoreError(f"adapter {label!r}: adapter_config.json sets {field} = {value!r}: {what}, which "
                             f"`adapters`' LoRA cannot represent exactly; signmix imports plain LoRA only "
                             f"({field} = {default!r}). Fix: retrain without it, or leave this adapter out")
    if config.get("bias", "none") != "none":
        raise StoreError(f"adapter {label!r}: adapter_config.json sets bias = {config['bias']!r}: the base "
                         "model's biases were trained too, which an `adapters` LoRA cannot carry; signmix imports "
                         "bias = 'none' only. Fix: retrain with bias='none'")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and any(init.lower().startswith(name) for name in _BASE_CHANGING_INITS):
        raise StoreError(f"adapter {label!r}: init_lora_weights = {init!r} changes the base model's weights at "
                         "initialisation, so this LoRA only works with that modified base. Fix: save it with PEFT's "
                         "`path_initial_model_for_weight_conversion` (a plain LoRA), or leave it out")


def _lora_layout(model) -> dict[str, dict]:
    """Returns ``{module path: facts}`` of every module ``adapters``' LoRA can adapt in ``model``."""
    from adapters import LoRAConfig
    from adapters.methods.lora import LoRALayer

    model.add_adapter(_PROBE, config=LoRAConfig(r=1, alpha=1, selfattn_lora=True, intermediate_lora=True,
                                                output_lora=True, attn_matrices=["q", "k", "v"]))
    layout = {}
    for path, module in model.named_modules():
        if isinstance(module, LoRALayer) and _PROBE in module.loras:
            layout[path] = {"location": module.location_key, "attn": getattr(module, "attn_key", None),
                            "fan_in_fan_out": bool(getattr(module, "fan_in_fan_out", False)),
                            "in": module.loras[_PROBE].lora_A.shape[1], "out": module.loras[_PROBE].lora_B.shape[0]}
    model.delete_adapter(_PROBE)
    return layout


def _match(peft_module: str, layout: dict[str, dict], label: str) -> str:
    hits = [p for p in layout if p == peft_module or p.endswith("." + peft_module) or peft_module.endswith("." + p)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise StoreError(f"adapter {label!r}: PEFT adapted module {peft_module!r}, which `adapters`' LoRA cannot "
                         f"adapt (it adapts only the {', '.join(_LOCATIONS.values())} projections). Fix: retrain "
                         "with target_modules limited to those (for BERT: query, key, value, dense of "
                         "intermediate/output), or leave this adapter out")
    raise StoreError(f"adapter {label!r}: PEFT module {peft_module!r} matches several modules {hits}; "
                     "signmix cannot tell which one it adapted")


def _pattern_value(patterns: dict, key: str, default):
    """PEFT's ``get_pattern_key``: the first pattern that matches the end of ``key`` (after a dot) wins."""
    for pattern in patterns:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return patterns[pattern]
    return default


def read_peft_lora(folder: str | Path, *, label: str, base_model: str, allow_pickle: bool = False,
                   drop_modules_to_save: bool = False, check_name: bool = True,
                   trust_remote_code: bool = False) -> ImportedAdapter:
    """Returns a PEFT LoRA converted into an ``adapters`` LoRA named ``ADAPTER_NAME`` (no head).

    Checked before anything is built: plain LoRA only (DoRA, LoRA bias, QALoRA, aLoRA,
    trained biases, base-changing initialisations, layer replication... refused by name),
    weights that map onto ``adapters``' LoRA modules with matching shapes and
    ``fan_in_fan_out``, the recorded base model, and pickles only when ``allow_pickle``.
    ``modules_to_save`` weights (a PEFT-trained classifier) are refused unless
    ``drop_modules_to_save``: signmix then imports the LoRA without them.
    """
    import torch
    from adapters import LoRAConfig


    folder = check_folder(folder, label)
    config = read_config(folder / "adapter_config.json", label)
    _check_variant(config, label)
    state = load_tensors(weights_file(folder, label, safetensors_name="adapter_model.safetensors",
                                      pickle_name="adapter_model.bin", allow_pickle=allow_pickle), label)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    extra = []
    for key, tensor in state.items():
        match = _FACTOR.match(key)
        if match:
            factors.setdefault(match["module"], {})[match["factor"]] = tensor
        else:
            extra.append(key)
    if extra and config.get("modules_to_save") and not drop_modules_to_save:
        raise StoreError(f"adapter {label!r}: modules_to_save = {config['modules_to_save']!r} saved fully trained "
                         f"modules ({extra[:3]}) that an `adapters` LoRA cannot hold. Fix: set "
                         "`drop_modules_to_save: true` for this adapter to import the LoRA alone (signmix trains a "
                         "new head on the domain's data)")
    if extra and not config.get("modules_to_save"):
        raise StoreError(f"adapter {label!r}: adapter_model weights {extra[:3]} are not LoRA factors (lora_A/lora_B) "
                         "of a plain LoRA; signmix cannot map them. Fix: import a plain LoRA, or leave it out")
    if not factors:
        raise StoreError(f"adapter {label!r}: {folder} holds no LoRA factors (lora_A/lora_B weights)")
    for module, pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise StoreError(f"adapter {label!r}: module {module!r} has lora_{''.join(pair)} but not both lora_A and "
                             "lora_B; the weights file is incomplete: copy the adapter again from its source")

    base = base_model_facts(base_model, trust_remote_code=trust_remote_code)
    check_base_model(label, base, layers=layers_of(factors), model_name=config.get("base_model_name_or_path"),
                     check_name=check_name)
    model, _ = load_encoder(base_model, trust_remote_code=trust_remote_code)
    layout = _lora_layout(model)

    r_default, alpha_default = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    mapped: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for module, pair in sorted(factors.items()):
        target = _match(module, layout, label)
        facts = layout[target]
        a, b = pair["A"], pair["B"]
        if tuple(a.shape[1:]) != (facts["in"],) or tuple(b.shape[:1]) != (facts["out"],):
            raise StoreError(f"adapter {label!r} was trained for another base model: module {module!r} has lora_A "
                             f"{tuple(a.shape)} and lora_B {tuple(b.shape)}, base_model {base_model!r} has in/out "
                             f"features {facts['in']}/{facts['out']}; set base_model to the adapter's base model")
        if bool(config.get("fan_in_fan_out", False)) != facts["fan_in_fan_out"]:
            raise StoreError(f"adapter {label!r}: fan_in_fan_out is {config.get('fan_in_fan_out')!r} in PEFT but "
                             f"{facts['fan_in_fan_out']!r} for {target!r} in `adapters`; the factors would be "
                             "transposed. Fix: retrain the LoRA with the base model's layer orientation")
        r_m = int(_pattern_value(rank_pattern, module, r_default))
        if a.shape[0] != r_m or b.shape[1] != r_m:
            raise StoreError(f"adapter {label!r}: module {module!r} has rank {a.shape[0]} in its weights but r = "
                             f"{r_m} in adapter_config.json (r / rank_pattern); the folder is inconsistent")
        alpha_m = float(_pattern_value(alpha_pattern, module, alpha_default))
        mapped[target] = (a, b, alpha_m / (math.sqrt(r_m) if rslora else r_m))

    rank = max(a.shape[0] for a, _, _ in mapped.values())
    scalings = {s for _, _, s in mapped.values()}
    scaling = scalings.pop() if len(scalings) == 1 else 1.0
    kinds = {(layout[t]["location"], layout[t]["attn"]) for t in mapped}
    attn = sorted({k for loc, k in kinds if loc == "selfattn_lora" and k}, key="qkv".index)
    lora_config = LoRAConfig(r=rank, alpha=scaling * rank, dropout=float(config.get("lora_dropout", 0.0)),
                             selfattn_lora=bool(attn), attn_matrices=attn or ["q", "v"],
                             intermediate_lora=any(loc == "intermediate_lora" for loc, _ in kinds),
                             output_lora=any(loc == "output_lora" for loc, _ in kinds))
    model.add_adapter(ADAPTER_NAME, config=lora_config, set_active=True)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for path, facts in layout.items():
            key_a = f"{path}.loras.{ADAPTER_NAME}.lora_A"
            if key_a not in params:
                continue
            params[key_a].zero_()
            params[f"{path}.loras.{ADAPTER_NAME}.lora_B"].zero_()
            if path in mapped:
                a, b, s = mapped[path]
                params[key_a][: a.shape[0]] = a.to(params[key_a].dtype)
                params[f"{path}.loras.{ADAPTER_NAME}.lora_B"][:, : b.shape[1]] = (b.double() * (s / scaling)).to(
                    params[key_a].dtype)
    zero_filled = sorted(p for p in layout if f"{p}.loras.{ADAPTER_NAME}.lora_A" in params and p not in mapped)
    source = {"kind": "peft", "location": str(folder), "base_model_name_or_path": config.get("base_model_name_or_path"),
              "peft": {k: config.get(k) for k in ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern",
                                                   "use_rslora", "layers_to_transform", "modules_to_save")},
              "dropped": sorted(extra), "zero_filled_modules": zero_filled,
              "files": file_hashes(folder, ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"])}
    return from_model(model, label=label, source=source)
