"""Learnability probes: each visual skill of the embedded task, trained alone on the real tiny model.

Skills (each a one-turn conversation with the real processor, chat template and prompts):
- `locate`: the first view and the turn-1 question -> the paper's JSON box of the named target,
  snapped to the 28-px token grid as the SFT data writes it. Metric: per-coordinate accuracy of
  the greedy box (teacher-forced argmax of every digit and the separator after it, which is
  exactly what greedy decoding writes when all are right), the all-four exact rate, and the
  share a constant answer would get (the most frequent value per coordinate): a collapsed model
  sits on that line.
- `read_crop`: the oracle crop (the snapped target box cut from the ORIGINAL image and resized
  into the crop budget, as the episode does) and the attribute question -> "The answer is
  <pair>." Metric: the pair named by the argmax over the five pairs' first words (chance 1/5).
- `read_first`: the same answer from the first view (the pixel-limit control: must stay near 1/5).

Every example is drawn by the project's own generator (components/data/synthetic.py); `locate`
may draw originals at a reduced size (`--orig-scale`): the first view is the same 252x196 frame,
only the (invisible) checker detail is coarser. Runs on one CPU thread; writes
`<out>.jsonl` (one line per evaluation) and `<out>.png` (metric against steps and minutes).

Run: `python experiments/learnability.py locate --steps 400 -S model.text.rope_theta=100 \
  -S prepare.synthetic.position_tint=1 --out results/learnability/locate_tint`
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from components import grounding as g
from components import prompts
from components.config import load_params
from components.data.synthetic import PAIR_NAMES, SplitSpec, make_sample
from components.models.tiny import build_model, build_processor, train_tokenizer
from components.sft.trainer import collate, encode_trajectory
from components.sft.trajectories import snap_box

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Example:
    image: bytes  # PNG of what the model sees (first view or crop)
    question: str
    answer: str  # assistant text
    pattern: str


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def draw_examples(
    params, skill: str, split: str, count: int, seed: int, orig_scale: float, start: int = 0
) -> list[Example]:
    syn = params.prepare.synthetic
    w, h = round(syn.width * orig_scale), round(syn.height * orig_scale)
    spec = SplitSpec(split, start + count, w, h, 1.0)
    t = prompts.load_templates(ROOT / params.episode.templates, params.episode.template)
    lo, hi = params.model.min_pixels, params.model.max_pixels
    out = []
    for i in range(start, start + count):
        rec = make_sample(syn, seed, spec, i, "probe")
        fv = g.first_view(rec.image_bytes, lo, hi)
        sw, sh = fv.size
        box = rec.target_boxes[0]
        seen = g.to_seen(tuple(box), (sw, sh), (rec.width, rec.height))
        snapped = snap_box(seen, (sw, sh), 28, params.episode.min_box_side)
        pattern = rec.meta["pattern"]
        if skill == "locate":
            image = fv
            question = prompts.render(
                t.turn1, question=rec.question, question_stop=prompts.question_stop(rec.question)
            )
            answer = prompts.render_box(t, snapped, rec.meta["targets"][0])
        else:
            if skill == "read_crop":
                orig = g.load_original(rec.image_bytes)
                image = g.crop(
                    orig,
                    g.to_original(snapped, (sw, sh), (rec.width, rec.height)),
                    params.episode.crop_min_pixels,
                    params.episode.crop_max_pixels,
                )
            else:
                image = fv
            question = f"Question: {rec.question}"
            answer = f"The answer is {pattern}."
        out.append(Example(png(image), question, answer, pattern))
    return out


def encode(ex: Example, processor, system: str) -> dict:
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": "<image>" + ex.question},
        {"role": "assistant", "content": ex.answer},
    ]
    return encode_trajectory(messages, [Image.open(io.BytesIO(ex.image)).convert("RGB")], processor)


def digit_groups(ids: list[int], mask: list[int], tok) -> list[list[int]]:
    """Label positions of each box coordinate: its digit tokens and the separator after it."""
    groups, cur = [], []
    for i, (t, m) in enumerate(zip(ids, mask, strict=True)):
        if not m:
            continue
        if tok.decode([t]).strip().isdigit():
            cur.append(i)
        elif cur:
            groups.append([*cur, i])
            cur = []
    return groups[-4:]  # the last four: "bbox_2d" has a digit too


def evaluate(model, processor, encoded: list[dict], skill: str, first_ids: list[int]) -> dict:
    model.eval()
    tok = processor.tokenizer
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    right = [0, 0, 0, 0]
    exact = 0
    read_right = 0
    predicted = []
    with torch.no_grad():
        for start in range(0, len(encoded), 16):
            chunk = encoded[start : start + 16]
            batch = collate(chunk, pad)
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            for r, e in enumerate(chunk):
                ids, mask = e["input_ids"].tolist(), e["loss_mask"].tolist()
                if skill == "locate":
                    groups = digit_groups(ids, mask, tok)
                    ok = [all(int(logits[r, p - 1].argmax()) == ids[p] for p in grp) for grp in groups]
                    for k, v in enumerate(ok):
                        right[k] += v
                    exact += all(ok) and len(ok) == 4
                    predicted.append(tuple(int(logits[r, grp[0] - 1].argmax()) for grp in groups))
                else:
                    # The first answer token after "The answer is".
                    pos = next(
                        i
                        for i, m in enumerate(mask)
                        if m and tok.decode([ids[i]]).strip() in {n.split()[0] for n in PAIR_NAMES}
                    )
                    scores = logits[r, pos - 1, first_ids]
                    read_right += int(scores.argmax()) == first_ids.index(ids[pos])
    model.train()
    n = len(encoded)
    if skill == "locate":
        return {
            "coord_acc": [round(x / n, 3) for x in right],
            "exact": round(exact / n, 3),
            "distinct_first_digits": len(set(predicted)),
        }
    return {"acc": round(read_right / n, 3)}


def constant_baseline(encoded: list[dict], tok) -> list[float]:
    from collections import Counter

    per = [Counter() for _ in range(4)]
    for e in encoded:
        ids, mask = e["input_ids"].tolist(), e["loss_mask"].tolist()
        for k, grp in enumerate(digit_groups(ids, mask, tok)):
            per[k][tuple(ids[p] for p in grp)] += 1
    return [round(c.most_common(1)[0][1] / len(encoded), 3) for c in per]


def plot(rows: list[dict], out: Path, skill: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in rows]
    minutes = [r["minutes"] for r in rows]
    for ax, x, label in ((axes[0], steps, "step"), (axes[1], minutes, "minutes (1 thread)")):
        if skill == "locate":
            for k, name in enumerate(("x1", "y1", "x2", "y2")):
                ax.plot(x, [r["coord_acc"][k] for r in rows], label=name)
            ax.plot(x, [r["exact"] for r in rows], "k--", label="all four")
            ax.plot(x, [r["constant"][0] for r in rows], ":", color="gray", label="constant x1")
        else:
            ax.plot(x, [r["acc"] for r in rows], label="accuracy")
            ax.axhline(0.2, color="gray", ls=":", label="chance")
        ax.set_xlabel(label)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(out.name)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    """Train one skill alone; return the evaluation rows (also written to `<out>.jsonl`)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("skill", choices=["locate", "read_crop", "read_first"])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--train", type=int, default=1000, help="distinct training images")
    ap.add_argument("--val", type=int, default=128)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--fresh", action="store_true", help="draw new training images every step (no repeats)")
    ap.add_argument("--orig-scale", type=float, default=1.0, help="draw originals at this share of the size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="params override key=value")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    params = load_params(ROOT / "params.yaml", args.overrides)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    n_train = args.batch if args.fresh else args.train
    train = draw_examples(params, args.skill, "probe_train", n_train, args.seed, args.orig_scale)
    val = draw_examples(params, args.skill, "probe_val", args.val, args.seed + 1, args.orig_scale)
    print(f"drew {len(train)}+{len(val)} examples in {time.time() - t0:.0f}s", flush=True)

    templates = (ROOT / params.episode.templates).read_text()
    tok = train_tokenizer(params.model, templates)
    processor = build_processor(params.model, tok)
    model = build_model(params.model, tok)
    model.train()
    system = prompts.load_templates(ROOT / params.episode.templates, params.episode.template).system
    train_enc = [encode(e, processor, system) for e in train]
    val_enc = [encode(e, processor, system) for e in val]
    first_ids = [tok.encode(" " + n.split()[0], add_special_tokens=False)[0] for n in PAIR_NAMES]
    const = constant_baseline(val_enc, tok) if args.skill == "locate" else None

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        p = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    rng = random.Random(args.seed)
    rows, losses = [], []
    t_train = time.time()
    log = out.with_suffix(".jsonl").open("w")
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            m = evaluate(model, processor, val_enc, args.skill, first_ids)
            tm = evaluate(model, processor, train_enc[: len(val_enc)], args.skill, first_ids)
            m["train"] = tm.get("coord_acc", tm.get("acc"))
            row = {
                "step": step,
                "minutes": round((time.time() - t_train) / 60, 2),
                "loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
                **m,
            }
            if const:
                row["constant"] = const
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps(row), flush=True)
            plot(rows, out, args.skill)
        if step == args.steps:
            break
        if args.fresh:
            fresh = draw_examples(
                params,
                args.skill,
                "probe_train",
                args.batch,
                args.seed,
                args.orig_scale,
                start=(step + 1) * args.batch,
            )
            batch = collate([encode(e, processor, system) for e in fresh], pad)
        else:
            batch = collate([train_enc[rng.randrange(len(train_enc))] for _ in range(args.batch)], pad)
        labels = batch.pop("labels")
        logits = model(**batch).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    log.close()
    return rows


if __name__ == "__main__":
    main()
