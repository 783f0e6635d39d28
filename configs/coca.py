"""CoCa-style: contrastive (ITC) + captioning. The text tower is causal (its last real token is
the text embedding); a causal decoder cross-attending the image tokens predicts each next token.

  python -m launch.train --config configs/coca.py --workdir workdirs/coca
"""
from configs import quickstart


def get_config(arg: str | None = None):
    del arg
    c = quickstart.get_config("softmax")
    c.model.text.causal = True
    c.caption.weight = 2.0          # CoCa weighs captioning 2 : 1 against the contrastive loss
    c.model.caption_decoder.depth = 2
    return c
