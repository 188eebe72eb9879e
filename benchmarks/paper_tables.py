"""The paper's Tables 2, 3 and 5 at the scale of a 2-core CPU machine, through geta's own harness.

* ``--table 2``: ResNet20 on Fashion-MNIST, weights only (recipe ``resnet20-fmnist``): GETA against
  dense training and prune-then-PTQ (8 and 4 bits), all from one dense model. Target: rel. BOPs <= 4.5%
  within 0.3 points of the dense model's top-1.
* ``--table 3``: VGG7 on Fashion-MNIST, weights and activations (recipe ``vgg7-fmnist``), the same
  methods. Target: rel. BOPs <= 0.41% within 0.6 points of dense.
* ``--table 5``: pretrained MiniLM fine-tuned on BBC News (recipe ``minilm-bbc``), GETA against
  prune-then-PTQ at each of ``--sparsities``, every run from one fine-tuned dense model. Target: at every
  sparsity GETA is more accurate than prune-then-PTQ at equal or lower rel. BOPs.

Every method gets the same compression budget (``--epochs``) after the shared dense stage
(``--dense-epochs``); ``--limit-batches`` caps the batches per epoch. ``--target-rel-bops R`` (or
``--target-size BYTES``) makes GETA's target a cost budget instead of ``--sparsity`` (tables 2 and 3):
GETA then decides the groups and each layer's bits, and prune-then-PTQ removes, at each of its bit
widths, the fewest groups that meet the same budget; ``--sparsity`` given beside a budget adds a row
``geta-sparsity``, GETA with that sparsity as its target, for a comparison at (near) the same BOPs.
Rel. BOPs are the compact model's BOPs over the dense model's MACs x 32 x 32. The table is printed at
the end, with the wall time.

Run from the repository root, e.g.:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/paper_tables.py --table 2 --dense-epochs 4 --epochs 6
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import replace

from geta.optim.saliency import DEFAULT_WEIGHTS
from geta.recipes import get_recipe
from geta.run import Display, RunResult, Settings, run_baseline, run_recipe, train_dense

RECIPES = {2: "resnet20-fmnist", 3: "vgg7-fmnist", 5: "minilm-bbc"}


def _row(result: RunResult) -> str:
    delta = 100 * (result.accuracy - result.accuracy_dense)
    return (f"| {result.method} | {result.accuracy:.4f} | {delta:+.2f} | {100 * result.rel_bops:.3f}% | "
            f"{100 * result.macs / result.macs_dense:.1f}% | {100 * result.group_sparsity:.1f}% | {result.params:,} | "
            f"{result.wall_s - result.wall_s_dense:.0f} |")


def _target(settings: dict) -> str:
    for name in ("target_rel_bops", "target_size_bytes"):
        if settings.get(name) is not None:
            return f"{name}={settings[name]:g}"
    return f"sparsity={settings['sparsity']:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=int, choices=sorted(RECIPES), required=True)
    parser.add_argument("--dense-epochs", type=int, default=None, help="dense stage (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="compression budget of every method")
    parser.add_argument("--limit-batches", type=int, default=None, help="cap on batches per epoch")
    parser.add_argument("--sparsity", type=float, default=None, help="tables 2 and 3 (default: the recipe's)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7], help="table 5")
    parser.add_argument("--weight-bits", type=int, nargs=2, default=None, metavar=("LO", "HI"))
    parser.add_argument("--act-bits", type=int, nargs=2, default=None, metavar=("LO", "HI"))
    parser.add_argument("--target-rel-bops", type=float, default=None, metavar="R",
                        help="tables 2 and 3: GETA's target as the compact model's rel. BOPs (e.g. 0.03)")
    parser.add_argument("--target-size", type=float, default=None, metavar="BYTES",
                        help="tables 2 and 3: GETA's target as the packed weights' size in bytes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=None, metavar="LAYER",
                        help="layers kept at full precision: first, last, names or globs; none given quantizes "
                             "every layer (default: the recipe's, first and last)")
    parser.add_argument("--saliency-macs", type=float, default=0.0, metavar="W",
                        help="weight of geta's macs saliency criterion beside the paper's five at 0.2 each "
                             "(default 0: the paper's saliency)")
    parser.add_argument("--stages", type=float, nargs=3, default=None, metavar=("W", "P", "J"),
                        help="fractions of the compression budget for QASSO's warm-up, projection and joint stages; "
                             "the cool-down gets the rest (default 0.1 0.2 0.3)")
    args = parser.parse_args()
    budgeted = args.target_rel_bops is not None or args.target_size is not None
    if budgeted and args.table == 5:
        parser.error("--target-rel-bops / --target-size apply to tables 2 and 3")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    start = time.perf_counter()
    recipe = RECIPES[args.table]
    base = Settings(
        epochs=args.epochs, dense_epochs=args.dense_epochs, limit_batches=args.limit_batches, seed=args.seed,
        sparsity=None if budgeted else args.sparsity, target_rel_bops=args.target_rel_bops,
        target_size_bytes=args.target_size, weight_bits=tuple(args.weight_bits) if args.weight_bits else None,
        act_bits=tuple(args.act_bits) if args.act_bits else None, skip=None if args.skip is None else tuple(args.skip),
        qasso={**({"saliency_weights": {**DEFAULT_WEIGHTS, "macs": args.saliency_macs}} if args.saliency_macs else {}),
               **({"stage_shares": tuple(args.stages)} if args.stages else {})},
    )
    with Display(mode="plain") as display:  # a line per stage and per tenth of the run, on stderr
        # prune-then-ptq under a budget fine-tunes once per bit width
        at_sparsity = budgeted and args.sparsity is not None
        methods = 2 * len(args.sparsities) if args.table == 5 else 3 + budgeted + at_sparsity
        base.resolve(get_recipe(recipe))  # every setting checked before the dense stage
        dense = train_dense(recipe, base, methods=methods, display=display)
        rows: list[tuple[str, RunResult]] = []
        if args.table == 5:
            for sparsity in args.sparsities:
                settings = replace(base, sparsity=sparsity)
                rows.append((f"{sparsity:.0%}", run_recipe(recipe, settings, dense=dense, display=display)))
                for result in run_baseline(recipe, settings, "prune-then-ptq", dense=dense, display=display):
                    rows.append((f"{sparsity:.0%}", result))
        else:
            rows.append(("", run_recipe(recipe, base, dense=dense, display=display)))
            if at_sparsity:
                sparsity_target = replace(base, target_rel_bops=None, target_size_bytes=None, sparsity=args.sparsity)
                result = run_recipe(recipe, sparsity_target, dense=dense, display=display)
                rows.append(("", replace(result, method="geta-sparsity")))
            for baseline in ("dense", "prune-then-ptq"):
                rows += [("", result) for result in run_baseline(recipe, base, baseline, dense=dense, display=display)]
    settings = rows[0][1].settings
    print(f"\nTable {args.table} at this machine's scale: {recipe}, dense stage {settings['dense_epochs']} epochs, "
          f"then {settings['epochs']} epochs per method (limit_batches={settings['limit_batches']}), "
          f"weight bits {settings['weight_bits']}, act bits {settings['act_bits']}, full precision {settings['skip']}, "
          f"qasso {settings['qasso']}; target "
          f"{_target(settings)}; "
          f"dense top-1 {dense.accuracy:.4f}")
    header = "| method | top-1 | vs dense (pts) | rel. BOPs | rel. MACs | groups removed | params | method s |"
    print(f"| sparsity {header}" if args.table == 5 else header)
    print("|---" * (9 if args.table == 5 else 8) + "|")
    for label, result in rows:
        print(f"| {label} {_row(result)}" if args.table == 5 else _row(result))
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
