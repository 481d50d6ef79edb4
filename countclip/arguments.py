"""The command line's pieces: config and model arguments, bounded integer types, and a parser whose
usage error is one line (``countclip.cli`` builds its commands from them)."""

from __future__ import annotations

import argparse

from countclip.config import one_line

MAX_MESSAGE = 600
"""Longest error line the command prints (characters)."""


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (defaults apply to fields it leaves out)")
    parser.add_argument("overrides", nargs="*", metavar="field.sub=value", help="override single config fields")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="checkpoint (local or s3://), local-dir:DIR or hf-hub:NAME folder, or models:/name@alias")
    parser.add_argument("--arch", default="countclip-tiny", help="open_clip architecture of a checkpoint")


def bounded_int(low: int, high: int, what: str):
    """An argparse type: an integer in [low, high], else a one-line error naming ``what``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {one_line(repr(text), 60)}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be in [{low}, {high:,}], got {value}")
        return value

    parse.__name__ = what  # argparse names the type in its message
    return parse


positive_int = bounded_int(1, 2**31 - 1, "a positive integer")
seed_int = bounded_int(0, 2**32 - 1, "a seed")
image_side = bounded_int(16, 4096, "an image side in pixels")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"countclip: {self.prog.removeprefix('countclip ')}: {one_line(message, MAX_MESSAGE)} "
                     f"(see {self.prog} --help)\n")
