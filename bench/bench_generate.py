"""Data generation throughput: success rate, successful demos per hour and failure reasons per
task with N workers (state observations), and the rendering cost per kept demo with --images.

    python bench/bench_generate.py --num-demos 40 --workers 2 [--tasks ...] [--image-demos 3]

Each task runs 01_generate.py in a fresh output folder (10 scripted source demos first, not timed
in the generation figures). Paper scale is --num-demos 1000.
"""
import argparse
import importlib.util
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402

spec = importlib.util.spec_from_file_location("generate", os.path.join(ROOT, "01_generate.py"))
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--num-demos", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks", nargs="*", default=sorted(common.TASKS))
    p.add_argument("--image-demos", type=int, default=3, help="demos generated with --images (0: skip)")
    p.add_argument("--planner", default="ompl", choices=["ompl", "linear"])
    args = p.parse_args()
    rows = []
    for task in args.tasks:
        out = tempfile.mkdtemp(prefix=f"bench_gen_{task}_")
        s = generate.main(["--task", task, "--num-demos", str(args.num_demos), "--workers", str(args.workers),
                           "--out", out, "--planner", args.planner])["generation"]
        render = None
        if args.image_demos:
            img_out = os.path.join(out, "images")
            os.makedirs(os.path.join(img_out, task))
            os.link(os.path.join(out, task, "source.hdf5"), os.path.join(img_out, task, "source.hdf5"))
            r = generate.main(["--task", task, "--num-demos", str(args.image_demos), "--workers", "1",
                               "--out", img_out, "--images", "--planner", args.planner])["generation"]
            render = r["render_seconds_per_demo"]
        rows.append((task, s, render))
    print(f"\n| task | kept / attempts | success | demos/hour ({args.workers} workers) | s per kept demo "
          f"(1 worker) | render s/demo | main failures |\n|---|---|---|---|---|---|---|")
    for task, s, render in rows:
        fails = ", ".join(f"{k} {v}" for k, v in list(s["failures"].items())[:3]) or "-"
        print(f"| {task} | {s['kept_this_run']}/{s['attempts_this_run']} | {100 * (s['success_rate'] or 0):.0f} % | "
              f"{s['demos_per_hour']:.0f} | {s['seconds_per_success'] or float('nan'):.1f} | "
              f"{render if render is None else round(render, 1)} | {fails} |")


if __name__ == "__main__":
    main()
