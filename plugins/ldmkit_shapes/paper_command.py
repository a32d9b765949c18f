"""``ldmkit paper``: the paper's central experiment (pixel space against latent spaces of f = 2..16) on Shapes.

Registered through the ``register_commands`` hook; torch and the experiment load only when an action runs.
"""

from __future__ import annotations

import argparse

from ldmkit.commands import Command

EPILOG = """examples:
  ldmkit paper run --out runs/paper --device cuda          the full experiment (about 8 minutes on one H100)
  ldmkit paper run --out runs/paper-tiny --tiny            the same with tiny models on the CPU (a smoke run)
  ldmkit paper plot runs/paper/results.json --out docs/    the two figures (needs: pip install 'ldmkit[paper]')
  ldmkit paper report runs/paper/results.json --page docs/paper.md   fill the page's tables
  ldmkit paper metric --page docs/paper.md                 the Frechet distance of real and degraded pictures
"""


class PaperCommand(Command):
    """``ldmkit paper run|plot|report|metric``."""

    name = "paper"
    help = "reproduce the paper's central experiment (pixel vs latent diffusion) on Shapes"
    description = (
        "Train KL autoencoders (f = 2, 4, 8, 16) and class-conditional diffusion models in their latents and in "
        "pixel space (f = 1), score each at fixed training steps (class accuracy, Shapes Fréchet distance), time "
        "training and sampling, and report the results."
    )
    epilog = EPILOG

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Actions ``run`` (the experiment), ``plot`` and ``report`` (from a results.json), ``metric`` (its sanity)."""
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        run = sub.add_parser("run", help="run the experiment, writing results.json and results.md to --out")
        run.add_argument("--out", required=True, help="folder for results.json and results.md")
        run.add_argument("--specs", default="examples/paper", help="the experiment's specs (default examples/paper)")
        run.add_argument("--tiny", action="store_true", help="tiny models and numbers (a CPU smoke run)")
        run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
        run.add_argument("--jobs", type=int, default=None, help="factors trained at once (default: all)")
        run.add_argument("--work", default=None, help="folder for checkpoints and models (default: a new temp folder)")
        run.add_argument("--classifier", default=None, help="Shapes classifier weights (default: the shipped ones)")
        plot = sub.add_parser("plot", help="draw paper-steps.png and paper-speed.png from a results.json")
        plot.add_argument("results", help="results.json of 'ldmkit paper run'")
        plot.add_argument("--out", required=True, help="folder for the two PNG files")
        metric = sub.add_parser("metric", help="the metric's sanity: real pictures against degraded ones")
        metric.add_argument("--specs", default="examples/paper", help="the experiment's specs (default examples/paper)")
        metric.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
        metric.add_argument("--classifier", default=None, help="Shapes classifier weights (default: the shipped ones)")
        metric.add_argument("--page", default=None, help="a markdown page with the metric markers (docs/paper.md)")
        report = sub.add_parser("report", help="print the tables of a results.json, or fill a page's tables")
        report.add_argument("results", help="results.json of 'ldmkit paper run'")
        report.add_argument("--page", default=None, help="a markdown page with the result markers (docs/paper.md)")

    def run(self, args: argparse.Namespace) -> int:
        """Run the chosen action."""
        if args.action == "run":
            from ldmkit_shapes.paper_run import run_experiment

            run_experiment(
                args.specs,
                args.out,
                tiny=args.tiny,
                device=args.device,
                jobs=args.jobs,
                work=args.work,
                classifier=args.classifier,
            )
            return 0
        if args.action == "metric":
            from ldmkit_shapes.paper_eval import metric_sanity
            from ldmkit_shapes.paper_plan import load_experiment
            from ldmkit_shapes.paper_report import classifier_note, fill_markers, sanity_table

            plan = load_experiment(args.specs).plan.evaluation
            rows = metric_sanity(plan, args.device, args.classifier)
            text = classifier_note(args.classifier) + sanity_table(rows, plan.samples, plan.reference)
            if args.page:
                fill_markers(args.page, "classifier", text)
                print(f"updated {args.page}")
            else:
                print(text, end="")
            return 0
        from ldmkit_shapes.paper_report import markdown_report, plot, read_results, update_page

        results = read_results(args.results)
        if args.action == "plot":
            for path in plot(results, args.out):
                print(path)
            return 0
        if args.page:
            update_page(args.page, results)
            print(f"updated {args.page}")
        else:
            print(markdown_report(results), end="")
        return 0


__all__ = ["PaperCommand"]
