"""``videochat-flash train RECIPE.yaml [--dry-run] [--resume DIR] [--check-data] [section.key=value ...]``.

Also ``videochat-flash train --merge-lora CHECKPOINT OUTPUT`` (fold a LoRA adapter into a full checkpoint).

The lead's top-level CLI mounts this with `add_arguments` + `run`; ``python -m videochat_flash.train`` (and
``torchrun ... -m videochat_flash.train``) runs it directly.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import VideoChatFlashError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe YAML (see recipes/)")
    # REMAINDER: flags and overrides may follow the recipe in any order, whichever parser the caller uses;
    # `run` sorts the tail out (see `_split_tail`).
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="KEY=VALUE",
        help="recipe overrides with dotted keys, values parsed as YAML (e.g. optim.lr=2e-5 train.max_steps=10)",
    )
    _add_flags(parser)


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build the model on the meta device and report parameters, optimizer groups, memory and data; "
        "needs no weights or network",
    )
    parser.add_argument(
        "--resume", metavar="DIR", help="continue from a checkpoint (or the latest in an output dir)"
    )
    parser.add_argument(
        "--check-data", action="store_true", help="only validate the recipe's annotations and exit"
    )
    parser.add_argument(
        "--merge-lora",
        nargs=2,
        metavar=("CHECKPOINT", "OUTPUT"),
        help="write a full checkpoint with the LoRA adapter of CHECKPOINT merged into its weights (no recipe needed)",
    )


def _split_tail(args: argparse.Namespace) -> argparse.Namespace:
    """Flags that came after the recipe are in ``args.overrides``: parse them out, keep the KEY=VALUE items."""
    tail = list(args.overrides or [])
    parser = argparse.ArgumentParser(prog="videochat-flash train", add_help=False)
    _add_flags(parser)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("overrides", nargs="*")
    extra = parser.parse_intermixed_args(tail)
    for name in ("dry_run", "check_data", "debug"):
        setattr(args, name, bool(getattr(args, name, False) or getattr(extra, name)))
    for name in ("resume", "merge_lora"):
        setattr(args, name, getattr(args, name, None) or getattr(extra, name))
    args.overrides = list(extra.overrides)
    return args


def run(args: argparse.Namespace) -> int:
    from .data import check_annotations, read_mixture
    from .recipes import load_recipe, resolve_path

    args = _split_tail(args)
    if args.merge_lora:
        from .checkpoint import merge_lora_checkpoint

        print(f"merged checkpoint written to {merge_lora_checkpoint(*args.merge_lora)}")
        return 0
    if not args.recipe:
        print("a recipe YAML is required (or --merge-lora CHECKPOINT OUTPUT)", file=sys.stderr)
        return 2
    recipe = load_recipe(args.recipe, list(args.overrides or []))
    if args.dry_run:
        from .trainer import dry_run

        print(dry_run(recipe))
        return 0
    if args.check_data:
        if not recipe.data.path:
            print("data.path is not set", file=sys.stderr)
            return 2
        entries = read_mixture(resolve_path(recipe.data.path))
        errors = check_annotations([e.json_path for e in entries], template=recipe.data.template)
        for line in errors:
            print(line)
        print(f"{len(errors)} problem(s) in {len(entries)} annotation file(s)")
        return 1 if errors else 0
    from .distributed import init_distributed, shutdown
    from .trainer import train

    env = init_distributed(recipe.parallel.backend)
    try:
        result = train(recipe, resume=args.resume, env=env)
    finally:
        shutdown()
    if env.is_main:
        print(f"done: {result.steps} steps, final model in {result.final_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="videochat-flash train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except VideoChatFlashError as exc:
        if args.debug or "--debug" in (argv if argv is not None else sys.argv):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
