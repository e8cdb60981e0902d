"""Accuracy under attack: white-box FGSM on the input embeddings (Nguyen & Le, ACL 2024).

The paper perturbs the word embeddings of each input by one signed-gradient step of size
0.01 and measures the accuracy that is left. :func:`fgsm_predict` does that with the same
batches as :func:`trainables.evaluate.predict`, so clean and robust accuracy are computed on
the same rows, in the same order, and a step of 0 gives exactly the clean predictions.
"""

from __future__ import annotations

from typing import Sequence

from trainables.data import EncodedSplit, iter_batches
from trainables.model import model_device


def fgsm_predict(model, encoded: EncodedSplit, batch_size: int, step: float,
                 indices: Sequence[int] | None = None) -> dict[int, int]:
    """Returns the predicted class of each row (by original row index) under an FGSM attack.

    Per batch: the word embeddings ``x`` of the input ids, the cross-entropy of the model's
    logits on ``x`` against the true labels, and ``x_adv = x + step * sign(d loss / d x)``;
    the prediction is the argmax on ``x_adv``. Position and token-type embeddings are
    added by the model as usual. Only the gradient with respect to ``x`` is computed
    (``torch.autograd.grad``): the model stays in its mode (eval for evaluation) and no
    ``.grad`` of its parameters is touched.

    Args:
        model: a Hugging Face / ``adapters`` classifier whose forward accepts ``inputs_embeds``.
        encoded: the tokenised split, with its labels.
        batch_size: rows per batch (batches sorted by length, as in ``predict``).
        step: the perturbation size in embedding units, >= 0.
        indices: the rows to attack; all rows when omitted.

    Each batch goes to the device of ``model``'s parameters (CPU or the trial's GPU).
    """
    import torch
    import torch.nn.functional as F

    step = float(step)
    if not step >= 0.0:  # also rejects NaN
        raise ValueError(f"step must be >= 0, got {step}")
    embed = model.get_input_embeddings()
    device = model_device(model)
    preds: dict[int, int] = {}
    for rows, batch in iter_batches(encoded, batch_size, indices=indices):
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        input_ids = batch.pop("input_ids")
        with torch.enable_grad():
            # A leaf copy: the gradient stops here, never reaching the embedding matrix.
            x = embed(input_ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=x, **batch).logits
            loss = F.cross_entropy(logits.float(), labels)
            (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x_adv = x.detach() + step * grad.sign().to(x.dtype)
            adv_logits = model(inputs_embeds=x_adv, **batch).logits
        for row, p in zip(rows, adv_logits.argmax(dim=-1).tolist()):
            preds[row] = p
    return preds
