"""Every mention of a notebook points at one that exists and, where the text names its topic, the right one.

Mentions looked at, in the notebooks, README.md, QUICK_REFERENCE.md, INSTRUCTORS.md, DESIGN.md and minigpt/**/*.py:

- "notebook 05", "notebooks 01–05" (a range: both ends must exist), "notebooks 03 and 06", "notebooks 01, 02";
- a file stem: "NN_name.ipynb" must exist, and a notebook's name under another number ("06_char_gpt_shakespeare"
  after the renumbering) is flagged; other NN_words (output folders such as "08_gpt2_finetuned") are not judged.

The topic is judged only where the text states one next to the number: "notebook 03 (positional encoding)",
"notebooks 03 (the GPT model) and 06 (training, ...)", "(the 2017 paper, notebook 05)". Each comma-separated part
of that text that contains a keyword of :data:`TOPICS` must contain a keyword of a notebook it names; a part with
no keyword at all is not judged, so the test never guesses.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {p.stem[:2]: p.stem for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}

# Words that name each notebook's topic (lower case, matched as substrings). A word may belong to several
# notebooks (the KV cache is sized in 02, written in 06, timed in 07, measured in 11); a mention is flagged only
# when its topic matches none of the notebooks it names.
TOPICS = {
    "01": ["attention mechanism", "scaled dot-product", "dot-product attention", "softmax", "causal mask",
           "cross-attention", "queries", "attention"],
    "02": ["multi-head", "heads", "grouped-query", "gqa", "kv cache", "kv-cache"],
    "03": ["positional", "position", "sinusoid", "rope", "rotary"],
    "04": ["transformer block", "the block", "blocks", "layernorm", "layer norm", "residual", "feed-forward",
           "ffn", "mlp", "pre-ln", "post-ln", "rmsnorm", "swiglu"],
    "05": ["encoder-decoder", "encoder–decoder", "mini transformer", "seq2seq", "sequence-to-sequence", "reversal",
           "teacher forcing", "2017 paper", "toy task", "cross-attention"],
    "06": ["from scratch", "gpt model", "the gpt", "decoder-only", "weight tying", "parameter count", "kv cache",
           "generate", "sampling", "temperature", "top-k", "gpt-2 weights", "gpt-2's weights", "get_batch",
           "estimate_loss"],
    "07": ["shakespeare", "character", "char gpt", "trainer", "training", "checkpoint", "perplexity", "sampling",
           "temperature", "top-k", "top-p", "beam", "decoding", "kv cache"],
    "08": ["fine-tun", "finetun", "hugging face", "gpt-2", "gpt2", "lora", "trainer"],
    "09": ["attention analysis", "analysing attention", "analyzing attention", "heatmap", "induction", "rollout",
           "attention pattern", "interpretab", "attention weights"],
    "10": ["tokeniz", "bpe", "byte-pair", "byte pair", "utf-8", "bytes", "merges", "pre-tokeniz", "bits per byte",
           "special token", "vocabulary size"],
    "11": ["llama", "gpt-2 to llama", "modern architecture", "rmsnorm", "swiglu", "rope", "rotary", "rotate-half",
           "rotate_half", "grouped-query", "gqa", "qk-norm", "qwen", "smollm", "ablation", "untied", "chat template"],
    "12": ["at scale", "mixed precision", "bf16", "fp16", "gradient accumulation", "clipping",
           "learning-rate schedule", "lr schedule", "training techniques", "scaling law", "ddp", "distributed", "muon",
           "compile", "gradient checkpointing"],
    "13": ["efficient inference", "inference", "kv cache", "quantiz", "pruning", "lora", "fused attention",
           "decoding strateg", "adaptation", "top-p"],
    "14": ["post-training", "posttrain", "sft", "supervised fine-tun", "instruction tun", "chat format",
           "special token", "dpo", "preference", "grpo", "verifiable reward", "reward", "rlhf", "evaluation harness",
           "harness", "exact match", "multiple-choice", "bits per byte", "response-only", "loss mask", "lora"],
    "15": ["serving", "server", "serve", "fastapi", "http", "batching", "streaming", "load test", "backpressure"],
}

_NUM = r"\d\d"
_SEP = r"\s*(?:-|–|—|to|and|or|,)\s*"
MENTION = re.compile(rf"\bnotebooks?\s+(?P<nums>{_NUM}(?:\s*\([^()]*\))?(?:{_SEP}{_NUM}(?:\s*\([^()]*\))?)*)", re.I)
NUMBER = re.compile(rf"(?P<n>{_NUM})(?:\s*\((?P<topic>[^()]*)\))?")
STEM = re.compile(r"(?<![\w/.-])(?P<n>\d\d)_(?P<name>[a-z][a-z0-9_]*[a-z0-9])")


def _files():
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    paths += [ROOT / name for name in ("README.md", "QUICK_REFERENCE.md", "INSTRUCTORS.md", "DESIGN.md")]
    paths += sorted((ROOT / "minigpt").rglob("*.py"))
    return [p for p in paths if p.is_file()]


def _text(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells)
    return path.read_text(encoding="utf-8")


def _topic_owners(part: str) -> set[str]:
    part = re.sub(r"`[^`]*`", "", part).lower()  # code names the result, not the topic
    return {nb for nb, words in TOPICS.items() if any(w in part for w in words)}


def _named(nums_text: str) -> tuple[list[tuple[str, str | None]], set[str]]:
    """The numbers of one mention with the topic written right after each, and every notebook it names."""
    items = [(m["n"], m["topic"]) for m in NUMBER.finditer(nums_text)]
    named = {n for n, _ in items}
    bare = re.sub(r"\([^()]*\)", "", nums_text)
    for a, b in re.findall(rf"({_NUM})\s*(?:-|–|—|to)\s*({_NUM})", bare):  # a range names everything between
        named |= {f"{i:02d}" for i in range(int(a), int(b) + 1)}
    return items, named


def problems_in(text: str) -> list[str]:
    found = []

    def context(start, end):
        return " ".join(text[max(0, start - 60) : end + 40].split())

    for m in MENTION.finditer(text):
        items, named = _named(m["nums"])
        for n, _ in items:
            if n not in NOTEBOOKS:
                found.append(f"'notebook {n}' does not exist: ...{context(m.start(), m.end())}...")
        topics = [(named if len(items) > 1 and topic is not None and _range_topic(m["nums"]) else {n}, topic)
                  for n, topic in items if topic]
        # "(the 2017 paper, notebook 05)": the topic comes before the mention, inside the same parentheses
        before = text[max(0, m.start() - 100) : m.start()]
        if text[m.end() : m.end() + 1] == ")" and "(" in before and ")" not in before[before.rindex("(") :]:
            topics.append((named, before[before.rindex("(") + 1 :]))
        for targets, topic in topics:
            for part in re.split(r"[,;:]", topic):
                owners = _topic_owners(part)
                if owners and not owners & targets:
                    topic_text = " ".join(part.split())
                    found.append(
                        f"'{topic_text}' is the topic of notebook {'/'.join(sorted(owners))}, not of notebook "
                        f"{'/'.join(sorted(targets))}: ...{context(m.start(), m.end())}..."
                    )
    for m in STEM.finditer(text):
        n, name = m["n"], f"{m['n']}_{m['name']}"
        if name in NOTEBOOKS.values():
            continue
        elsewhere = [stem for stem in NOTEBOOKS.values() if stem[3:] == m["name"]]
        if elsewhere:  # a notebook's name under an old number
            found.append(f"'{name}' is {elsewhere[0]} under another number: ...{context(m.start(), m.end())}...")
        elif text.startswith(".ipynb", m.end()):
            found.append(f"'{name}.ipynb' does not exist: ...{context(m.start(), m.end())}...")
    return found


def _range_topic(nums_text: str) -> bool:
    """True when one parenthesis after a range or list describes all its notebooks ("01–05 (a, b, c)")."""
    return len(re.findall(r"\(", nums_text)) == 1 and nums_text.rstrip().endswith(")")


def test_the_test_finds_what_it_should():
    assert problems_in("Prerequisites: notebooks 03 (the GPT model) and 06 (training, perplexity).")
    assert problems_in("see notebook 19") and problems_in("see 06_char_gpt_shakespeare")
    assert problems_in("open 13_extra.ipynb") and not problems_in('OUT / "08_gpt2_finetuned"')
    assert problems_in("notebook 05 (sampling: temperature, top-k)")
    assert problems_in("**Prerequisites:** notebooks 01-05 (attention, positions, the GPT model).")
    assert not problems_in("notebooks 01–05 (attention, multi-head attention, positions, the transformer block, "
                           "the encoder–decoder)")
    assert not problems_in("the encoder–decoder of notebook 05 and (the 2017 paper, notebook 05)")
    assert not problems_in("notebook 06 (GPT from scratch), out/07_char_gpt_shakespeare_ckpt, notebook 03 (RoPE)")
    assert not problems_in("notebook 10 (byte-level BPE, bits per byte)") and problems_in("notebook 09 (BPE merges)")


def test_every_notebook_title_carries_its_own_number():
    wrong = []
    for n, stem in NOTEBOOKS.items():
        cells = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text(encoding="utf-8"))["cells"]
        first = "".join(cells[0]["source"]).lstrip()
        title = re.match(r"#\s*(\d\d)\b", first)
        if not title or title.group(1) != n:
            wrong.append(f"{stem}: title {first.splitlines()[0]!r}")
    assert not wrong, "notebook titles with another number than their file:\n" + "\n".join(wrong)


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_mentions_point_at_the_right_notebook(path):
    found = problems_in(_text(path))
    assert not found, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(found)
