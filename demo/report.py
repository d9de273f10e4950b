"""The digits demo's report: results.md (tables and what they show), results.json, results.png.

`results` is one dict per model as `hybrid_mllm.demo.cli.run_model` returns it: ``eval`` maps
each split's label to its summary (``overall`` / ``by_type`` exact match, ``kind``, ``size``,
``seconds_per_answer``, ``prefill_seconds_per_answer``, ``decode_seconds_per_step``,
``position_blind``).
"""

from __future__ import annotations

import json
from pathlib import Path

POSITION_QTYPES = {"image": ("digit_at", "read_row"), "video": ("frame_digit", "first_frame")}


def write_report(results: list[dict], out: Path, *, wall_s: float) -> str:
    """Write results.md, results.json and results.png into `out`; returns the markdown."""
    text = "\n".join([*accuracy_table(results), "", *speed_table(results), "", *summary(results), "",
                      *timings(results, wall_s)])
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / "results.png")
    return text


def accuracy_table(results: list[dict]) -> list[str]:
    lines = ["| split | question type | " + " | ".join(r["model"] for r in results) + " | position-blind reader |",
             "|---|---|" + "---|" * (len(results) + 1)]
    for split, first in results[0]["eval"].items():
        for qtype in ["all", *first["by_type"]]:
            cells = [_score(r["eval"][split], qtype) for r in results]
            blind = first["position_blind"].get(qtype)
            cells.append("" if blind is None else f"{blind:.1%}")
            lines.append(f"| {split} | {qtype} | " + " | ".join(cells) + " |")
    return lines


def _score(split: dict, qtype: str) -> str:
    s = split["overall"] if qtype == "all" else split["by_type"].get(qtype)
    return "" if s is None else f"{s['exact_match']:.1%} (n={s['n']})"


def speed_table(results: list[dict]) -> list[str]:
    names = [r["model"] for r in results]
    columns = [("prefill ms / answer", "prefill_seconds_per_answer"), ("decode ms / step", "decode_seconds_per_step"),
               ("all ms / answer", "seconds_per_answer")]
    heads = [f"{n}: {title}" for title, _ in columns for n in names]
    lines = ["| split | visual tokens (mean) | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for split, first in results[0]["eval"].items():
        cells = [f"{1000 * r['eval'][split][key]:.2f}" for _, key in columns for r in results]
        lines.append(f"| {split} | {first['overall']['mean_visual_tokens']:.0f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("In batches of 16 on this machine. Prefill: the LM reading the prompt with its visual tokens, per "
                 "answer; decode: one batched step of greedy decoding; all: per answer, with loading, tiling and "
                 "encoding the images (the same encoder in both models) and decoding to the end.")
    return lines


def position_accuracy(result: dict, level: int) -> float:
    """Exact match over the position questions of the image and video splits at size `level`
    (0: the training sizes, 1: 4x the tiles / frames, 2: 16x), weighted by their counts."""
    hits = total = 0
    for kind, qtypes in POSITION_QTYPES.items():
        split = [s for s in result["eval"].values() if s["kind"] == kind][level]
        for qtype in qtypes:
            if qtype in split["by_type"]:
                n = split["by_type"][qtype]["n"]
                hits += split["by_type"][qtype]["exact_match"] * n
                total += n
    return hits / total if total else 0.0


def summary(results: list[dict]) -> list[str]:
    """Two sentences on what the figures show, written from the figures."""
    levels = [[position_accuracy(r, level) for level in range(3)] for r in results]
    accuracy = "; ".join(f"the {r['model']} model answers {a[0]:.0%} of them at the training sizes, {a[1]:.0%} at 4x "
                         f"and {a[2]:.0%} at 16x the tiles and frames" for r, a in zip(results, levels))
    sentences = [f"Of the position questions (digit_at, read_row, frame_digit, first_frame), {accuracy}."]
    if len(results) > 1:
        sentences.append(_speed_sentence(results))
    return [" ".join(sentences)]


def _speed_sentence(results: list[dict]) -> str:
    hybrid, twin = results[0], results[1]
    by_tokens = sorted(hybrid["eval"], key=lambda s: hybrid["eval"][s]["overall"]["mean_visual_tokens"])
    smallest, largest = by_tokens[0], by_tokens[-1]

    def ratio(split: str) -> float:
        return twin["eval"][split]["prefill_seconds_per_answer"] / hybrid["eval"][split]["prefill_seconds_per_answer"]

    tokens = hybrid["eval"][largest]["overall"]["mean_visual_tokens"]
    faster = "faster" if ratio(largest) > 1 else "slower"
    return (f"Reading the prompt (prefill), the {hybrid['model']} LM is {faster} than the {twin['model']} LM on the "
            f"split with the most visual tokens ({largest}, {tokens:.0f} tokens): a speed ratio ({twin['model']} / "
            f"{hybrid['model']} time) of {ratio(largest):.2f}, against {ratio(smallest):.2f} on the split with the "
            f"fewest ({smallest}).")


def timings(results: list[dict], wall_s: float) -> list[str]:
    lines = []
    for r in results:
        t, vision = r["times_s"], ", ".join(f"{k} {v:.0%}" for k, v in r["vision_accuracy"].items())
        eval_s = sum(s["seconds"] for s in r["eval"].values())
        lines.append(f"- {r['model']} ({r['config']}): vision pretraining {t['vision pretraining']:.0f} s (held-out "
                     f"token accuracy: {vision}), training {t['training']:.0f} s for {r['steps']} steps, "
                     f"evaluation {eval_s:.0f} s")
    lines.append(f"- whole run, data included: {wall_s:.0f} s")
    return lines


def plot(results: list[dict], path: Path) -> None:
    """Accuracy against tiles and frames (position-blind line drawn); prefill time against tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, kind, unit in ((axes[0], "image", "tiles"), (axes[1], "video", "frames")):
        _accuracy_panel(ax, results, kind, unit)
    _speed_panel(axes[2], results)
    fig.suptitle("digits demo: trained at <= 4 tiles and <= 8 frames, evaluated far beyond")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _accuracy_panel(ax, results: list[dict], kind: str, unit: str) -> None:
    styles = ("-", "--", ":")
    for r, style in zip(results, styles):
        splits = [s for s in r["eval"].values() if s["kind"] == kind]
        sizes = [s["size"] for s in splits]
        for qtype, color in zip(POSITION_QTYPES[kind], ("tab:blue", "tab:orange")):
            scores = [100 * s["by_type"][qtype]["exact_match"] if qtype in s["by_type"] else float("nan") for s in splits]
            ax.plot(sizes, scores, style, marker="o", color=color, label=f"{r['model']}: {qtype}")
    splits = [s for s in results[0]["eval"].values() if s["kind"] == kind]
    blind_type = POSITION_QTYPES[kind][0]
    ax.plot([s["size"] for s in splits], [100 * s["position_blind"].get(blind_type, float("nan")) for s in splits],
            color="gray", linestyle=(0, (1, 2)), label=f"position-blind reader ({blind_type})")
    ax.set_xscale("log", base=2)
    ax.set_xticks([s["size"] for s in splits], [str(s["size"]) for s in splits])
    ax.set(xlabel=f"{unit} per {kind}", ylabel="exact match (%)", ylim=(0, 102), title=f"{kind} questions")
    ax.legend(fontsize=7)


def _speed_panel(ax, results: list[dict]) -> None:
    from matplotlib.ticker import ScalarFormatter

    for r, color in zip(results, ("tab:green", "tab:red", "tab:purple")):
        for kind, marker in (("image", "o"), ("video", "s")):
            splits = [s for s in r["eval"].values() if s["kind"] == kind]
            ax.plot([s["overall"]["mean_visual_tokens"] for s in splits],
                    [1000 * s["prefill_seconds_per_answer"] for s in splits], marker=marker, color=color,
                    label=f"{r['model']}: {kind}s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set(xlabel="visual tokens per answer (mean)", ylabel="prefill ms per answer",
           title="the LM reading the prompt")
    ax.legend(fontsize=7)
