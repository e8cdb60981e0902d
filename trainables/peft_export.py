"""A LoRA in ``adapters``' form written as a PEFT LoRA folder (``adapter_config.json`` +
``adapter_model.safetensors``) that ``PeftModel.from_pretrained(AutoModel..., folder)`` loads.

``adapters`` keys ``<prefix>.<module>.loras.<name>.lora_A`` (``[r, in]``) and ``lora_B``
(``[out, r]``) become PEFT's ``base_model.model.<module>.lora_A.weight``; ``<prefix>`` is the
base model's ``base_model_prefix`` (``bert.`` in an ``AutoAdapterModel``), dropped because
PEFT is loaded onto the bare encoder (``AutoModel``). Both libraries add
``x Aᵀ Bᵀ · alpha / r``, so ``r`` and ``lora_alpha`` carry over unchanged, and
``target_modules`` is a regular expression of exactly the adapted modules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from spaces.errors import UsageError
from trainables.lora import lora_factors

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


def write_peft_lora(adapter_folder: str | Path, out: str | Path, *, base_model: str) -> Path:
    """Write the ``adapters`` LoRA saved in ``adapter_folder`` as a PEFT LoRA into ``out``; returns ``out``.

    Raises:
        UsageError: the adapter is not a plain additive LoRA (PEFT has no form for it).
    """
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig


    adapter_folder, out = Path(adapter_folder), Path(out)
    config = json.loads((adapter_folder / "adapter_config.json").read_text(encoding="utf-8"))["config"]
    if config.get("architecture") != "lora":
        raise UsageError(f"--format peft writes LoRA mixtures only; this mixture's adapter is "
                         f"{config.get('architecture') or 'bottleneck'}: export it with --format adapters")
    odd = {k: config.get(k) for k in ("composition_mode", "use_gating", "use_dora") if config.get(k) not in
           (None, False, "add")}
    if odd:
        raise UsageError(f"--format peft: the LoRA has {odd}, which PEFT's plain LoRA cannot represent; "
                         "export it with --format adapters")
    prefix = AutoConfig.from_pretrained(base_model).model_type  # BERT-like: "bert." in AutoAdapterModel
    factors = lora_factors(load_file(str(adapter_folder / "adapter.safetensors")))
    tensors, modules = {}, []
    for module, (a, b) in factors.items():
        bare = module[len(prefix) + 1:] if module.startswith(prefix + ".") else module
        modules.append(bare)
        tensors[f"base_model.model.{bare}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{bare}.lora_B.weight"] = b.contiguous()
    peft_config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model,
        "r": int(config["r"]), "lora_alpha": float(config["alpha"]), "lora_dropout": 0.0, "bias": "none",
        "target_modules": "^(?:" + "|".join(re.escape(m) for m in sorted(modules)) + ")$",
        "use_rslora": False, "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2), encoding="utf-8")
    save_file(tensors, str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
    return out
