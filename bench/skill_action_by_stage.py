"""How each stage's GMM skill should act: robomimic's low-noise `component` draw or the deterministic
`mode`, chosen from the held-out demos' skill starts (the trials 02_train_hsp.py's selection runs).

For every stage of the checkpoint, bench/skill_in_loop.py runs the chosen skill once from each
held-out demo's skill start with each action (same starts, same seeds), and this script compares
them pairwise: a stage acts by `mode` only when mode succeeds more often and the exact McNemar test
on the starts where exactly one action succeeded gives p < --alpha; otherwise it keeps robomimic's
`component`. Prints the table and the resulting `06_evaluate.py --skill-action` values, and writes
them as JSON. Each (stage, action) run is saved and reused.

02_train_hsp.py's selection now tries every snapshot with both rules on its own trials
(--select-actions) and stores the winner in the checkpoint; this script remains the test of one
checkpoint's skills from the held-out demo starts (e.g. for checkpoints trained with
--select-actions component).

    python bench/skill_action_by_stage.py --task CoffeePreparation_D2 --ckpt runs_rnn/CoffeePreparation_D2/hsp.pt
"""
import argparse
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTIONS = ("component", "mode")


def exact_mcnemar(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2.0 * tail)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument("--ckpt", default=None, help="default: runs/<task>/hsp.pt")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level for switching a stage to mode")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="directory (default: results/<task>/skill_action)")
    args = p.parse_args()
    args.ckpt = args.ckpt or os.path.join("runs", args.task, "hsp.pt")
    if not os.path.exists(args.ckpt):
        raise SystemExit(f"error: --ckpt {args.ckpt} does not exist")
    out = args.out or os.path.join("results", args.task, "skill_action")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(os.path.dirname(args.ckpt), "hsp_config.json")) as f:
        n_stages = json.load(f)["n_stages"]

    outcomes = {}
    for i in range(n_stages):
        for action in ACTIONS:
            path = os.path.join(out, f"stage{i}_{action}.json")
            if not os.path.exists(path):
                subprocess.run([sys.executable, os.path.join(ROOT, "bench", "skill_in_loop.py"), "--task", args.task,
                                "--ckpt", args.ckpt, "--stage", str(i), "--checkpoint-only", "--skill-action", action,
                                "--rollouts", "0", "--demo-starts", "--workers", str(args.workers), "--out", path],
                               check=True, stdout=subprocess.DEVNULL)
            with open(path) as f:
                outcomes[i, action] = {o[0]: bool(o[1]) for o in json.load(f)["rows"][0]["demo"]["outcomes"]}

    rows, chosen = [], []
    print(f"\n{args.task}: one trial per held-out demo skill start and action\n")
    print("| stage | component | mode | only component | only mode | McNemar p | acts by |")
    print("|---|---|---|---|---|---|---|")
    for i in range(n_stages):
        c, m = outcomes[i, "component"], outcomes[i, "mode"]
        only_c = sum(c[k] and not m[k] for k in c)
        only_m = sum(m[k] and not c[k] for k in c)
        pval = exact_mcnemar(only_c, only_m)
        pick = "mode" if only_m > only_c and pval < args.alpha else "component"
        chosen.append(pick)
        rows.append(dict(stage=i, trials=len(c), component=sum(c.values()), mode=sum(m.values()),
                         only_component=only_c, only_mode=only_m, p=pval, acts_by=pick))
        print(f"| {i} | {sum(c.values())}/{len(c)} | {sum(m.values())}/{len(m)} | {only_c} | {only_m} | "
              f"{pval:.3g} | {pick} |")
    flag = " ".join(chosen) if len(set(chosen)) > 1 else chosen[0]
    print(f"\n06_evaluate.py --skill-action {flag}")
    with open(os.path.join(out, "skill_action.json"), "w") as f:
        json.dump({"task": args.task, "ckpt": args.ckpt, "alpha": args.alpha, "stages": rows,
                   "skill_action": chosen}, f, indent=1)


if __name__ == "__main__":
    main()
