"""Command-line arguments for the price of a GPU-hour, shared by `llmpack operator` and
`llmpack plan` (standard library only: either program may import it at module level)."""

from __future__ import annotations

import argparse


def add_price_arguments(parser: argparse.ArgumentParser) -> None:
    """--gpu-hour-price and --currency (shared by `llmpack operator` and `llmpack plan`)."""
    parser.add_argument(
        "--gpu-hour-price",
        type=gpu_hour_price,
        action="append",
        default=[],
        metavar="PRODUCT=PRICE",
        help="price of one GPU-hour of a product (its nvidia.com/gpu.product label), repeatable, e.g. "
        "NVIDIA-H100-80GB-HBM3=2.49: the status then shows what each deployment costs",
    )
    parser.add_argument("--currency", default="USD", help="currency of --gpu-hour-price (default USD)")


def gpu_hour_price(text: str) -> tuple[str, float]:
    """`PRODUCT=PRICE` as (product, price); the price a finite number >= 0."""
    product, sep, price = text.rpartition("=")
    try:
        value = float(price)
    except ValueError:
        value = -1.0
    if not sep or not product or not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected PRODUCT=PRICE, e.g. NVIDIA-H100-80GB-HBM3=2.49")
    return product, value
