"""Which domains look alike: the base encoder's mean-pooled sentence embeddings of each domain's
training texts, averaged per domain and compared by cosine (AdapterSoup's selection, arXiv 2302.07027).

No adapter is active: the embeddings are the base model's, so the similarity says how alike the
domains' texts are, not how alike their adapters are.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from trainables.data import encode_split, iter_batches, load_domain
from trainables.model import load_encoder, model_device
from trainables.settings import Experiment, train_draw


def domain_centroids(experiment: Experiment, domains: Sequence[str], *, max_texts: int,
                     batch_size: int = 32) -> dict:
    """Each domain's mean sentence embedding (``[hidden]`` float32) over at most ``max_texts`` of
    its training texts: the first rows of its seeded training draw (:func:`train_draw`), so a
    data-only domain contributes exactly its few labelled examples when they are fewer."""
    keys = {d: (experiment.base_model, experiment.domains[d].model_dump_json(), experiment.training.max_length,
                *train_draw(experiment.training, experiment.domains[d]), max_texts) for d in domains}
    todo = [d for d in domains if keys[d] not in _CENTROIDS]
    if todo:
        model, tokenizer = load_encoder(experiment.base_model, trust_remote_code=experiment.trust_remote_code)
        for domain in todo:
            _CENTROIDS[keys[domain]] = _centroid(experiment, domain, model, tokenizer, max_texts, batch_size)
    return {d: _CENTROIDS[keys[d]] for d in domains}


# Per process: a domain's centroid, by everything that shapes it (a driver that confirms many
# searches over one library embeds each library domain once).
_CENTROIDS: dict[tuple, object] = {}


def _centroid(experiment: Experiment, domain: str, model, tokenizer, max_texts: int, batch_size: int):
    import torch

    encoder = model.base_model  # the transformer without a head: last hidden states
    device = model_device(model)
    cap, seed = train_draw(experiment.training, experiment.domains[domain])
    data = load_domain(domain, experiment.domains[domain], splits=("train",),
                       max_train_examples=min(max_texts, cap or max_texts), seed=seed,
                       trust_remote_code=experiment.trust_remote_code)
    encoded = encode_split(tokenizer, data.splits["train"], experiment.training.max_length)
    total, count = None, 0
    with torch.inference_mode():
        for _, batch in iter_batches(encoded, batch_size):
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            hidden = encoder(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            sentences = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            total = sentences.sum(dim=0) if total is None else total + sentences.sum(dim=0)
            count += sentences.shape[0]
    return (total / count).cpu()


def most_similar(centroids: Mapping, target: str, candidates: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` candidates whose centroid is nearest ``target``'s by cosine, nearest first (ties: by name)."""
    import torch

    scores = [(d, float(torch.nn.functional.cosine_similarity(centroids[target], centroids[d], dim=0)))
              for d in candidates if d != target]
    scores.sort(key=lambda x: (-x[1], x[0]))
    return scores[:k]
