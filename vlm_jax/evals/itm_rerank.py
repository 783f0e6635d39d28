"""Retrieval re-ranked by the ITM head (ALBEF): each query's top `eval.rerank_k` candidates by
embedding similarity reordered by the fusion encoder's match score (the `itm_` recalls), by
that score plus the pair's similarity (BLIP's; the `itm_sim_` recalls), and plus the similarity
at the model's logit scale (`itm_itc_`: the two heads' log-beliefs added)."""
from __future__ import annotations

from vlm_jax.evals import retrieval


def match_score(logits):
    return logits[:, 1] - logits[:, 0]      # match minus no-match


class Evaluator:
    image_keys = ("img/normed", "img/tokens")
    needs = "itm_logits"

    def __init__(self, data, config):
        self.data, self.k = data, config.eval.rerank_k

    def run(self, params, dataset: str) -> dict[str, float]:
        emb = self.data.embedder
        keep, captions = retrieval.usable(self.data, params, dataset)
        img_tokens = self.data.images(params, dataset, key="img/tokens")[keep]
        itm = emb.head("itm_logits", match_score)
        cache = {}      # the texts go through the tower once; their tokens are kept for ITM

        def embed(texts):
            z, tok, mask = emb.texts(params, texts, tokens=True)
            cache["tok"], cache["mask"] = tok, mask
            return z

        def score(texts, img_idx, txt_idx):
            return emb.batched(itm, params, cache["tok"][txt_idx], cache["mask"][txt_idx],
                                img_tokens[img_idx], what="ITM re-ranking")

        scale = float(emb.head(lambda model: model.scale()["scale"])(params))
        out = retrieval.recall(self.data.images(params, dataset)[keep], captions, embed, itm=score,
                               rerank_k=self.k, mesh=emb.mesh, axes=emb.axes, scale=scale)
        return {k: v for k, v in out.items() if k.startswith("itm_")}
