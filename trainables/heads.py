"""A linear classification head refit on a mixed adapter's features (``search.head: refit``).

The target's trained head was fitted together with the target's own adapter; a mixed adapter
moves the features under it. Refitting a linear head on the mixed adapter's [CLS] features of
the target's training split recovers most of that loss (DESIGN.md). Three steps:
:func:`cls_features` (what an ``adapters`` ClassificationHead sees), :func:`fit_linear_head`
(deterministic L2 multinomial logistic regression) and :func:`install_linear_head` (a plain
one-layer ``adapters`` classification head, saved and loaded with ``save_head``/``load_head``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Sequence

from spaces.errors import SpecError
from trainables.data import EncodedSplit, iter_batches
from trainables.model import model_device

if TYPE_CHECKING:
    from torch import Tensor

DEFAULT_L2 = 1e-3
DEFAULT_MAX_ITER = 200


def fit_linear_head(features: Tensor, labels: Tensor, num_labels: int, *, l2: float = DEFAULT_L2,
                    max_iter: int = DEFAULT_MAX_ITER) -> tuple[Tensor, Tensor]:
    """Returns ``(weight [num_labels, d], bias [num_labels])`` of an L2 multinomial logistic regression.

    Minimises ``mean cross-entropy + l2/2 * ||W_s||^2`` where ``W_s`` are the weights on the
    standardised features (each column centred and divided by its standard deviation, so one
    ``l2`` suits features of any scale; the bias is not penalised). Full-batch L-BFGS with a
    strong-Wolfe line search, in float64 on the CPU on one thread, from zeros, for at most
    ``max_iter`` iterations: the same inputs give bit-identical weights. The returned weights
    apply to the *raw* features: ``logits = features @ weight.T + bias``. (The first fit in
    a process also pays torch.optim's one-off import of ``torch._dynamo``, 1-3 s.)

    Args:
        features: ``[n, d]`` float features (any device).
        labels: ``[n]`` integer classes in ``range(num_labels)``.
        num_labels: the number of classes, at least 2 (classes absent from ``labels`` get
            a low bias, not an error).
        l2: the penalty, >= 0.
        max_iter: L-BFGS iterations, >= 1.

    Returns:
        float32 CPU tensors.
    """
    import torch

    if features.dim() != 2 or features.shape[0] == 0:
        raise SpecError(f"features must be a non-empty [n, d] matrix, got shape {tuple(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise SpecError(f"labels must be a vector of {features.shape[0]} classes, got shape {tuple(labels.shape)}")
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
        raise SpecError(f"num_labels must be an integer >= 2, got {num_labels!r}")
    if isinstance(l2, bool) or not (math.isfinite(float(l2)) and float(l2) >= 0):
        raise SpecError(f"l2 must be a finite number >= 0, got {l2!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise SpecError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    y = labels.detach().to("cpu", torch.long)
    if int(y.min()) < 0 or int(y.max()) >= num_labels:
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise SpecError(f"labels must be in range({num_labels}), got {bad}")
    x = features.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise SpecError("features contain NaN or infinite values; the adapter's forward pass is broken")

    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant column stays at 0 after centring
    z = (x - mean) / std

    weight = torch.zeros(num_labels, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_labels, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight.T + bias, y) + 0.5 * float(l2) * (weight * weight).sum()
        loss.backward()
        return loss

    # One thread: the problem is tiny (thread start-up costs more than it saves on a busy
    # machine), and float64 sums then come out the same whatever the caller's thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        raw_weight = weight / std  # W_s (x - m)/s + b  ==  (W_s/s) x + (b - (W_s/s) m)
        raw_bias = bias - raw_weight @ mean
    return raw_weight.to(torch.float32), raw_bias.to(torch.float32)


def cls_features(model, encoded: EncodedSplit, batch_size: int,
                 indices: Sequence[int] | None = None) -> Tensor:
    """Returns the ``[rows, hidden]`` [CLS] features a ClassificationHead of ``model`` sees, in row order.

    That is the last layer's hidden state at position 0 with the model's active adapter(s)
    (``adapters``' ``ClassificationHead`` with ``use_pooler=False``, its default, takes
    ``outputs[0][:, 0]``). Computed under ``torch.inference_mode`` in the batches
    :func:`trainables.data.iter_batches` makes (sorted by length, as :func:`~trainables.evaluate.predict`),
    on the device of the model's parameters; returned as float32 on the CPU, row ``i`` of the
    result for ``indices[i]`` (all rows of ``encoded`` when ``indices`` is None).
    """
    import torch

    rows = list(range(len(encoded))) if indices is None else [int(i) for i in indices]
    position = {row: i for i, row in enumerate(rows)}
    device = model_device(model)
    out: Tensor | None = None
    with torch.inference_mode():
        for chunk, batch in iter_batches(encoded, batch_size, indices=rows):
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            hidden = model(**batch, output_hidden_states=True, return_dict=True).hidden_states[-1][:, 0]
            if out is None:
                out = torch.empty(len(rows), hidden.shape[-1], dtype=torch.float32)
            out[[position[r] for r in chunk]] = hidden.float().cpu()
    if out is None:
        raise SpecError("cannot compute features of an empty split")
    return out


def install_linear_head(model, head_name: str, weight: Tensor, bias: Tensor, *,
                        id2label: Mapping[int, str] | None = None, activate: bool = True) -> None:
    """Adds (or replaces) ``head_name`` on ``model`` as a one-layer classification head with these weights.

    The head is ``adapters``' own ClassificationHead with ``layers=1`` and ``use_pooler=False``
    (dropout, then one Linear of ``weight``/``bias``), so ``model.save_head`` and
    ``model.load_head`` round-trip it with no signmix code, and in eval mode its logits are
    ``cls_features(...) @ weight.T + bias``. The weights are copied to the head's device
    and dtype. With ``activate`` the head becomes the model's active head.
    """
    import torch

    num_labels, hidden = weight.shape
    if tuple(bias.shape) != (num_labels,):
        raise SpecError(f"bias must have shape ({num_labels},) for a weight of shape {tuple(weight.shape)}, "
                        f"got {tuple(bias.shape)}")
    if hidden != model.config.hidden_size:
        raise SpecError(f"the head's weight has {hidden} input features but the model's hidden size is "
                        f"{model.config.hidden_size}")
    model.add_classification_head(head_name, num_labels=num_labels, layers=1, overwrite_ok=True,
                                  id2label=dict(id2label) if id2label is not None else None, use_pooler=False)
    linears = [m for m in model.heads[head_name].modules() if isinstance(m, torch.nn.Linear)]
    linear = linears[0]  # layers=1: one Dropout and one Linear
    with torch.no_grad():
        linear.weight.copy_(weight.to(linear.weight.device, linear.weight.dtype))
        linear.bias.copy_(bias.to(linear.bias.device, linear.bias.dtype))
    model.heads[head_name].to(model_device(model))
    model.heads[head_name].train(model.training)
    if activate:
        model.active_head = head_name
