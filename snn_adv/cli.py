"""Command line: ``snn-adv <command> --help``. A thin layer over the library; each command is one function.

A user's mistake (a bad argument, config key, file or data folder) ends in one line ``snn-adv: error: ...`` and exit
status 2 (``--debug`` shows the traceback instead); Ctrl-C ends with exit status 130 and says how to resume.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import List, Optional

from .version import __version__

#: what a user can cause and fix (bad value, config, file, data folder, diverging training): one line, exit 2
USER_ERRORS = (ValueError, OSError, FloatingPointError)
#: commands whose ``--out`` is a folder (the others write one checkpoint file)
FOLDER_OUTPUTS = ("quickstart", "study", "evaluate", "protocol")
EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130
RECOMPUTE_HELP = ("recompute the result cells that fail verification (damaged, edited, or written by an older snn-adv) "
                  "instead of refusing them; intact cells are still reused")


def _quickstart(args: argparse.Namespace) -> int:
    from .quickstart import quickstart

    quickstart(args.out, progress=not args.quiet, recompute=args.recompute)
    return 0


def _study(args: argparse.Namespace) -> int:
    from .config import load_config, parse_overrides
    from .configs import config_path
    from .studies import STUDIES, run_studies

    overrides = parse_overrides(args.set or [])
    if args.data_root is not None:
        overrides.setdefault("data", {})["root"] = args.data_root
    config = load_config(config_path(args.config), overrides)
    names = [name for name in STUDIES if name in config["studies"]] if args.names == ["all"] else args.names
    run_studies(names, config, args.out, progress=not args.quiet, recompute=args.recompute)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .cells import claim_output_folder, write_table
    from .config import load_attacks
    from .distributed import init_distributed
    from .io import atomic_write, atomic_write_json, provenance
    from .studies.common import COMPARISON_COLUMNS
    from .studies.robustness import ROW_COLUMNS, evaluate_models

    targets, sources = _checkpoints(args.targets, "targets"), _checkpoints(args.source or [], "--source")
    attacks = load_attacks(args.attacks, args.study)
    dataset, images, labels = _test_data([*targets.values(), *sources.values()], args)
    info = init_distributed()  # under torchrun every rank evaluates its batches; rank 0 reports
    rows, table, checks, comparisons = evaluate_models(
        targets, sources, images, labels, attacks, seed=args.seed, scoring_seeds=args.eval_seeds,
        batch_size=args.batch_size, progress=not args.quiet and info.is_main)
    if not info.is_main:
        return 0
    check_lines = [c.report_line() for c in checks]
    print(f"Accuracy (%) [95 % interval over images and Poisson seeds] on {len(labels)} {dataset} test images, "
          f"{len(args.eval_seeds)} scoring seed(s) (WB whitebox; BB blackbox from a source):\n\n{table}")
    print("Self-checks (verdicts from one-sided paired tests at p < 0.05):\n" + "\n".join(check_lines or ["- none"]))
    if comparisons:
        from .cells import markdown_table

        print("\nPaired comparisons on the same images (a - b, accuracy points):\n\n"
              + markdown_table(comparisons, COMPARISON_COLUMNS))
    if args.out is not None:
        with claim_output_folder(args.out) as out:
            write_table(rows, ROW_COLUMNS, out / "table", markdown=table)
            write_table(comparisons, COMPARISON_COLUMNS, out / "comparisons")
            atomic_write_json(out / "table.json", {"rows": rows, "attacks": attacks, "dataset": dataset,
                                                   "test_count": len(labels), "scoring_seeds": args.eval_seeds,
                                                   "provenance": provenance(seed=args.seed)})
            atomic_write_json(out / "checks.json", [c.to_dict() for c in checks])
            with atomic_write(out / "checks.md", "w") as handle:
                handle.write("\n".join(check_lines) + "\n")
        print(f"\nwritten to {args.out}: table.md/.csv/.json, checks.md/.json, comparisons.md/.csv/.json")
    return 0


def _checkpoints(paths: List[str], what: str) -> dict:
    """Checkpoints by file stem (their names in tables)."""
    from . import checkpoints

    named = {Path(p).stem: checkpoints.load(p) for p in paths}
    if len(named) != len(paths):
        raise ValueError(f"argument '{what}' = {paths}: two checkpoints share a file name; give them distinct names")
    return named


def _test_data(models: list, args: argparse.Namespace):
    """``(dataset, images, labels)``: the test subset of the one dataset all ``models`` were trained on."""
    from .data import load_tensors
    from .studies.common import check_evaluation_data

    datasets = {m.arch["dataset"] for m in models}
    if len(datasets) != 1:
        raise ValueError(f"arguments: checkpoints of different datasets {sorted(datasets)}")
    dataset = datasets.pop()
    images, labels = load_tensors(dataset, "test", count=args.test_count, root=args.data_root, seed=args.subset_seed)
    check_evaluation_data(images, labels, dataset)
    return dataset, images, labels


def _protocol(args: argparse.Namespace) -> int:
    from . import checkpoints
    from .protocol import robust_accuracy

    model, sources = checkpoints.load(args.checkpoint), _checkpoints(args.source or [], "--source")
    _, images, labels = _test_data([model, *sources.values()], args)
    report = robust_accuracy(model, (images, labels), eps=args.eps, version=args.version, sources=sources,
                             seed=args.seed, scoring_seeds=args.eval_seeds, fresh_draws=args.fresh_draws,
                             batch_size=args.batch_size, out=args.out, progress=not args.quiet)
    print(report.table_markdown())
    if args.out is not None:
        print(f"written to {args.out}: report.json, table.md, cost.png, stages/ (rerun the command to resume)")
    return 0


def _fraction(text: str) -> float:
    """A number or a fraction ``a/b`` (``8/255``)."""
    try:
        top, _, bottom = text.partition("/")
        return float(top) / float(bottom) if bottom else float(top)
    except (ValueError, ZeroDivisionError) as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction such as 8/255") from error


# ---------------------------------------------------------------- train-ann / convert / train-snn (models)
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return value


def _device(args: argparse.Namespace) -> str:
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _loaders(args: argparse.Namespace, dataset: str, train_batch: int, subset: Optional[int]):
    """(training loader, test loader or None) from the shared data options."""
    from .data import make_loader

    kw = dict(root=args.data_root, download=args.download, seed=args.seed)
    train = make_loader(dataset, "train", train_batch, subset=subset, **kw)
    test = make_loader(dataset, "test", args.eval_batch_size, subset=args.test_subset, **kw) if args.test_subset != 0 else None
    return train, test


def _report(model, test, args: argparse.Namespace, label: str) -> dict:
    from .training import evaluate_clean

    if test is None:
        return {}
    result = evaluate_clean(model, test, progress=not args.no_progress)
    print(f"{label}: test_accuracy={result['accuracy']:.4f} test_loss={result['loss']:.4f}")
    return {"test_accuracy": result["accuracy"], "test_loss": result["loss"]}


def _train_ann(args: argparse.Namespace) -> int:
    from . import checkpoints
    from .models import build_classifier
    from .training import seed_everything, train_ann

    seed_everything(args.seed)
    model = build_classifier(args.arch, args.dataset).to(_device(args))
    train, test = _loaders(args, args.dataset, args.batch_size, args.subset)
    config = {k: getattr(args, k) for k in ("epochs", "optimizer", "lr", "momentum", "weight_decay", "schedule", "seed")}
    history = train_ann(model, train, test, progress=not args.no_progress, **config)
    checkpoints.save(model, args.out, method="ann", training=dict(config, batch_size=args.batch_size, subset=args.subset),
                     history=history)
    print(f"saved ANN to {args.out}" + (f" (test_accuracy={history[-1]['test_accuracy']:.4f})" if test else ""))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from . import checkpoints
    from .conversion import convert

    ann = checkpoints.load(args.checkpoint, kind="ann", map_location=_device(args))
    dataset = ann.arch["dataset"]
    calibration, test = _loaders(args, dataset, args.batch_size, args.calibration_images)
    snn = convert(ann, calibration, args.timesteps, method=args.method, percentile=args.percentile, seed=args.seed,
                  time_chunk=args.time_chunk, progress=not args.no_progress)
    config = {k: getattr(args, k) for k in ("timesteps", "method", "percentile", "calibration_images", "seed")}
    result = _report(snn, test, args, f"SNN-conv T={args.timesteps}")
    checkpoints.save(snn, args.out, method="snn-conv", conversion=config, source=str(args.checkpoint), **result)
    print(f"saved SNN-conv to {args.out}")
    return 0


def _train_snn(args: argparse.Namespace) -> int:
    from . import checkpoints
    from .conversion import hybrid_init
    from .training import train_snn

    conv = checkpoints.load(args.checkpoint, kind="snn", map_location=_device(args))
    snn = hybrid_init(conv, args.timesteps, threshold_scale=args.threshold_scale, leak=args.leak)
    snn.encoder.manual_seed(None)  # fresh Poisson draws while training, from the seeded global generator
    train, test = _loaders(args, conv.arch["dataset"], args.batch_size, args.subset)
    config = {k: getattr(args, k) for k in ("epochs", "lr", "seed", "micro_batch")}
    history = train_snn(snn, train, test, progress=not args.no_progress, **config)
    snn.encoder.manual_seed(args.seed)
    checkpoints.save(snn, args.out, method="snn-bp", source=str(args.checkpoint), history=history,
                     training=dict(config, timesteps=args.timesteps, threshold_scale=args.threshold_scale,
                                   leak=args.leak, batch_size=args.batch_size, subset=args.subset))
    print(f"saved SNN-BP to {args.out}")
    return 0


def _add_model_commands(commands) -> None:
    from .data import DATASETS, parse_dataset_spec
    from .models import ARCHITECTURES
    from .conversion import METHODS

    def dataset_arg(text: str):
        try:
            return parse_dataset_spec(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    def data_options(p: argparse.ArgumentParser, dataset: bool, subset: bool = True) -> None:
        if dataset:
            p.add_argument("--dataset", default="fashion-mnist-bundled", type=dataset_arg, metavar="DATASET",
                           help=f"one of {', '.join(sorted(DATASETS))} (default %(default)s: the Fashion-MNIST subset "
                                "shipped with snn-adv, offline), or your image folder (--data-root DIR) as a JSON spec "
                                "or .json file: {\"name\": \"imagefolder\", \"classes\": [...], \"input_size\": 64, "
                                "\"mean\": [...], \"std\": [...]}")
        p.add_argument("--data-root", default=None, help="dataset folder; unset: $SNN_ADV_DATA or ~/.cache/snn-adv/datasets")
        p.add_argument("--download", action="store_true", help="download the dataset through torchvision if missing")
        if subset:
            p.add_argument("--subset", type=_positive_int, default=None,
                           help="train on a class-balanced subset of N training images; unset: all")
        p.add_argument("--test-subset", type=int, default=None,
                       help="evaluate on a class-balanced subset of N test images (0: skip evaluation); unset: all")
        p.add_argument("--eval-batch-size", type=_positive_int, default=256, help="batch size for evaluation")
        p.add_argument("--seed", type=int, default=0, help="seed of weights, data order, dropout and Poisson draws")
        p.add_argument("--device", default=None, help="cpu or cuda; unset: cuda when available")
        p.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true", help="no progress bars")
        p.add_argument("--out", required=True, help="output checkpoint file (written atomically)")

    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = commands.add_parser("train-ann", formatter_class=fmt, help="train an ANN (step 1 of ANN -> SNN-conv -> SNN-BP)",
                            description="Train a conventional network (ReLU, average pooling, no biases) and save a "
                                        "checkpoint that 'snn-adv convert' turns into a spiking network.")
    p.add_argument("--arch", default="vgg5", choices=sorted(ARCHITECTURES), help="architecture (vgg-tiny: seconds on a CPU)")
    p.add_argument("--epochs", type=_positive_int, default=20, help="training epochs")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="training batch size")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step", "constant"],
                   help="learning-rate schedule (step: x0.1 at 50%% and 75%% of the epochs)")
    data_options(p, dataset=True)
    p.set_defaults(func=_train_ann)

    p = commands.add_parser("convert", formatter_class=fmt, help="convert an ANN checkpoint to an SNN (SNN-conv)",
                            description="ANN -> SNN with IF neurons: each layer's threshold is set to the maximum (or a "
                                        "percentile) of its input current under Poisson input, layer by layer "
                                        "(Sengupta et al. 2019). The dataset is the one the ANN was trained on.")
    p.add_argument("checkpoint", help="ANN checkpoint from 'snn-adv train-ann'")
    p.add_argument("--timesteps", type=_positive_int, default=100, help="T of the SNN (the paper's SNN-conv used 2000)")
    p.add_argument("--method", default="threshold-balancing", choices=METHODS,
                   help="threshold-balancing (spike-based) or spikingjelly (ann2snn activation scales, VGG only)")
    p.add_argument("--percentile", type=float, default=99.9, help="percentile of the input current (100: maximum)")
    p.add_argument("--calibration-images", type=_positive_int, default=2048, help="training images used to set thresholds")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="calibration batch size")
    p.add_argument("--time-chunk", type=_positive_int, default=None, help="calibrate this many timesteps at a time (memory)")
    data_options(p, dataset=False, subset=False)
    p.set_defaults(func=_convert)

    p = commands.add_parser("train-snn", formatter_class=fmt, help="SNN-BP: fine-tune a converted SNN with BPTT",
                            description="Hybrid training (Rathi et al. 2020): start from an SNN-conv checkpoint, scale "
                                        "its thresholds, set the LIF leak and a smaller T, then train with surrogate-"
                                        "gradient backpropagation through time (Adam).")
    p.add_argument("checkpoint", help="SNN-conv checkpoint from 'snn-adv convert'")
    p.add_argument("--timesteps", type=_positive_int, default=100, help="T for training and the saved model")
    p.add_argument("--threshold-scale", type=float, default=0.7, help="multiply the converted thresholds by this")
    p.add_argument("--leak", type=float, default=0.99, help="LIF leak factor in (0, 1] (1: IF)")
    p.add_argument("--epochs", type=_positive_int, default=10, help="training epochs")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="training batch size (gradient step)")
    p.add_argument("--micro-batch", type=_positive_int, default=None,
                   help="split each batch into pieces of this size, accumulating gradients (BPTT memory ~ T x micro-batch)")
    data_options(p, dataset=False)
    p.set_defaults(func=_train_snn)


def _evaluation_options(p: argparse.ArgumentParser) -> None:
    """Test subset, scoring seeds, batch size, seed and --quiet of the commands that evaluate checkpoints."""
    p.add_argument("--test-count", type=_positive_int, default=1000, help="class-balanced subset of N test images")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the test subset")
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                   help="Poisson scoring seeds (distinct)")
    p.add_argument("--batch-size", type=_positive_int, default=100, help="evaluation batch size")
    p.add_argument("--seed", type=int, default=0, help="base seed of the crafting and scoring streams")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snn-adv",
        description="Adversarial robustness of spiking neural networks (SpikingJelly plugin).",
    )
    parser.add_argument("--version", action="version", version=f"snn-adv {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    quickstart = commands.add_parser("quickstart", help="offline end-to-end demo on bundled Fashion-MNIST")
    quickstart.add_argument("--out", default=None, help="output folder (default ./snn-adv-quickstart)")
    quickstart.add_argument("--quiet", action="store_true", help="no progress bars")
    quickstart.add_argument("--recompute", action="store_true", help=RECOMPUTE_HELP)
    quickstart.set_defaults(func=_quickstart)

    study = commands.add_parser("study", help="run studies of a config (resumable; torchrun shards it)",
                                description="Run the paper's studies: robustness, timesteps, leak, eps, layerwise, "
                                            "strong, or all. Finished cells are skipped on a rerun.")
    study.add_argument("names", nargs="+", metavar="STUDY", help="study names, or 'all' (every study the config has a section for)")
    study.add_argument("--config", required=True, help="a preset name (cpu, tiny, quickstart, paper_cifar10_vgg5...) or a JSON config file")
    study.add_argument("--out", required=True, help="output folder (tables, plots, cells, model cache)")
    study.add_argument("--data-root", default=None, help="dataset folder (overrides data.root)")
    study.add_argument("--set", action="append", metavar="KEY=JSON",
                       help="override a config value, e.g. --set data.test_count=200 (repeatable)")
    study.add_argument("--quiet", action="store_true", help="no progress bars")
    study.add_argument("--recompute", action="store_true", help=RECOMPUTE_HELP)
    study.set_defaults(func=_study)

    evaluate = commands.add_parser(
        "evaluate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="robustness table of any checkpoints, with intervals and self-check verdicts",
        description="Evaluate checkpoints (targets) under attack entries: clean, each attack whitebox on every target "
                    "and blackbox from every --source onto every target, crafted once and scored on every target "
                    "and Poisson seed. Prints accuracies with 95 % intervals, the self-checks (verdicts from paired "
                    "tests) and paired comparisons of each target against the first.")
    evaluate.add_argument("targets", nargs="+", metavar="CHECKPOINT", help="target checkpoints (snn-adv train-ann/convert/train-snn)")
    evaluate.add_argument("--source", action="append", metavar="CHECKPOINT",
                          help="blackbox source checkpoint (repeatable)")
    evaluate.add_argument("--attacks", required=True, metavar="JSON|PRESET",
                          help="a JSON file of attack entries (a list, or {\"attacks\": [...]}), or a preset/config "
                               "whose studies.<--study>.attacks to use, e.g. cpu")
    evaluate.add_argument("--study", default="robustness", help="which study's attack list a preset gives")
    evaluate.add_argument("--data-root", default=None, help="dataset folder (the checkpoints name the dataset)")
    _evaluation_options(evaluate)
    evaluate.add_argument("--out", default=None, help="also write the tables and checks to this folder")
    evaluate.set_defaults(func=_evaluate)

    from .protocol import DEFAULT_VERSION, VERSIONS

    protocol = commands.add_parser(
        "protocol", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="robust accuracy under the versioned battery (cascade, convergence certificate, self-checks)",
        description="Run the robustness protocol on a checkpoint: a fixed, versioned battery of attacks as a cascade "
                    "on the (image, Poisson draw) pairs still robust, a convergence certificate and self-checks. "
                    "Prints the headline and the per-stage table; --out keeps every stage (resumable), report.json "
                    "with every per-image outcome and cost.png.")
    protocol.add_argument("checkpoint", help="the model to evaluate (snn-adv train-ann/convert/train-snn)")
    protocol.add_argument("--source", action="append", metavar="CHECKPOINT",
                          help="transfer source (repeatable), e.g. the ANN the SNN was converted from")
    protocol.add_argument("--data", "--data-root", dest="data_root", default=None,
                          help="dataset folder (the checkpoint names the dataset)")
    protocol.add_argument("--eps", type=_fraction, default=8 / 255, help="L-inf radius, a number or a/b (8/255)")
    protocol.add_argument("--version", default=DEFAULT_VERSION, choices=sorted(VERSIONS), help="battery version")
    protocol.add_argument("--fresh-draws", type=_positive_int, default=8,
                          help="fresh Poisson draws on which the final survivors are re-scored")
    _evaluation_options(protocol)
    protocol.add_argument("--out", default=None, help="folder for the stages (resumable) and the report")
    protocol.set_defaults(func=_protocol)
    _add_model_commands(commands)
    for command in commands.choices.values():  # --debug also after the command name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of an error")
    return parser


def check_outputs(args: argparse.Namespace) -> None:
    """Prove the command's ``--out`` writable before any work: the folder itself, or a checkpoint file's folder."""
    from .config import check_output_dir

    out = getattr(args, "out", None)
    if out is None:
        return
    if args.command in FOLDER_OUTPUTS:
        check_output_dir(out)
    elif Path(out).is_dir():
        raise ValueError(f"argument '--out' = {out!r}: is a folder; give the checkpoint's file name, e.g. {out}/model.pt")
    else:
        check_output_dir(Path(out).parent, name="folder of --out")


def main(argv: Optional[List[str]] = None) -> int:
    """Run a command; return its exit status (0, 2 for a user's error, 130 when interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        check_outputs(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\nsnn-adv: interrupted; finished models and result cells are saved: rerun the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as error:
        if args.debug:
            traceback.print_exc()
        print(f"snn-adv: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
